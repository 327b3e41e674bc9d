"""Class-frequency statistics of a prepared dataset, per split, for ``dvc plots`` and inspection.

``stats.json``: {split: {"rows", "pixels", "class_frequency": {class name: fraction of pixels}}}.
``class_frequency/<split>.csv``: one row per label id (``class``, ``id``, ``frequency``), the
table the ``dvc plots`` bar chart reads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

STATS_NAME = "stats.json"
PLOTS_DIR = "class_frequency"


def label_channel_names(class_names: list[str], contain_dontcare_label: bool) -> list[str]:
    return list(class_names) + (["dont_care"] if contain_dontcare_label else [])


def write_stats(
    directory: Path, counts: dict[str, np.ndarray], rows: dict[str, int], names: list[str]
) -> dict[str, dict]:
    """Write ``stats.json`` and one CSV per split from per-id pixel counts; return the stats."""
    stats = {}
    (directory / PLOTS_DIR).mkdir(exist_ok=True)
    for split, split_counts in counts.items():
        total = int(split_counts.sum())
        frequency = split_counts / max(total, 1)
        stats[split] = {
            "rows": rows[split],
            "pixels": total,
            "class_frequency": {name: round(float(f), 6) for name, f in zip(names, frequency, strict=True)},
        }
        with (directory / PLOTS_DIR / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["class", "id", "frequency"])
            for class_id, (name, f) in enumerate(zip(names, frequency, strict=True)):
                writer.writerow([name, class_id, f"{f:.6f}"])
    (directory / STATS_NAME).write_text(json.dumps(stats, indent=2) + "\n")
    return stats
