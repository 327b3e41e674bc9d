"""Prepare a raw dataset into Parquet shards + manifest.json + class statistics (DVC stage ``prepare``).

    python -m components.prepare --dataset NAME --source DIR --out DIR [--workers N]

Each option defaults to params.yaml: ``dataset.name``, ``dataset.raw_dir``, ``dataset.prepared_dir``.
The load size and aspect ratio come from the config, resolved with the preset of ``--dataset``.
Writes ``stats.json`` and ``class_frequency/<split>.csv`` next to the shards (``dvc plots``).
A failure leaves ``--out`` untouched.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from components.cli import entry, load, make_parser, run_main
from dagan.config import resolved_value
from dagan.data.prepare import prepare_dataset

DESCRIPTION = """Prepare a raw dataset (its own folder layout) into Parquet shards, manifest.json and class
statistics (docs/DATA.md). A failure leaves the output folder untouched."""

log = logging.getLogger("components.prepare")


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.prepare", DESCRIPTION)
    parser.add_argument("--dataset", help="dataset preset / importer (default: dataset.name)")
    parser.add_argument("--source", help="raw dataset folder (default: dataset.raw_dir)")
    parser.add_argument("--out", help="prepared output folder (default: dataset.prepared_dir)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.dataset:
            args.overrides.append(f"dataset.name={args.dataset}")
        config = load(args)
        data = config.dataset
        out = Path(args.out or data.prepared_dir)
        start = time.perf_counter()
        manifest = prepare_dataset(
            data.name, args.source or data.raw_dir, out, load_size=resolved_value(data.load_size),
            aspect_ratio=resolved_value(data.aspect_ratio), rows_per_shard=data.rows_per_shard,
            workers=args.workers, max_classes=data.max_classes,
        )
        seconds = time.perf_counter() - start
        metrics = {"rows": manifest.splits, "semantic_nc": manifest.semantic_nc, "seconds": round(seconds, 2)}
        log.info("prepare metrics: %s", json.dumps(metrics))
        return 0

    return run_main(args, body)


if __name__ == "__main__":
    entry(main)
