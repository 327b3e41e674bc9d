"""Raw dataset -> prepared Parquet shards + manifest + class statistics (the ``prepare`` stage).

Runs the dataset's importer, then reads, checks, resizes and encodes every pair (in worker
processes when ``workers > 1``), writes the shards, ``manifest.json`` and the statistics into a
staging directory and swaps it in at the end: a failure anywhere leaves ``out_dir`` as it was.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from dagan.console import bars_enabled, progress
from dagan.data.imaging import LabelSpec, prepare_pair
from dagan.data.importers import import_dataset
from dagan.data.manifest import MANIFEST_NAME, Manifest, write_manifest
from dagan.data.shards import ShardWriter, staging_directory
from dagan.data.stats import label_channel_names, write_stats

log = logging.getLogger(__name__)
MIN_PAIRS_PER_WORKER = 32  # below this, process start-up costs more than it saves


def _map(fn: Callable, items: list, workers: int) -> Iterator:
    if workers <= 1 or len(items) < 2 * MIN_PAIRS_PER_WORKER:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items, chunksize=8)


def _progress(items: Iterable, total: int, desc: str) -> Iterable:
    if bars_enabled():
        return progress(items, total=total, desc=desc, unit="pair")
    return _logged(items, total, desc)


def _logged(items: Iterable, total: int, desc: str) -> Iterator:
    step = max(1, total // 10)
    for done, item in enumerate(items, 1):
        if done % step == 0 or done == total:
            log.info("%s: %d/%d pairs", desc, done, total)
        yield item


def prepare_dataset(
    name: str, source: str | Path, out_dir: str | Path, load_size: int, aspect_ratio: float,
    rows_per_shard: int = 512, workers: int = 1, max_classes: int = 256,
) -> Manifest:
    """Prepare raw dataset ``name`` from ``source`` into ``out_dir``; return the manifest written."""
    spec, pairs = import_dataset(name, source, max_classes)
    log.info("%s: %d pairs in %s (splits: %s)", name, len(pairs), source, ", ".join(sorted({p.split for p in pairs})))
    out_dir = Path(out_dir)
    with staging_directory(out_dir, MANIFEST_NAME) as staging:
        writer = ShardWriter(staging, rows_per_shard)
        counts: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        label_only = {p.split for p in pairs if p.image is None}
        job = functools.partial(prepare_pair, spec=spec, load_size=load_size, aspect_ratio=aspect_ratio)
        for sample, sample_counts in _progress(_map(job, pairs, workers), len(pairs), f"prepare {name}"):
            writer.add(sample)
            counts[sample.split] = counts.get(sample.split, 0) + sample_counts
            rows[sample.split] = rows.get(sample.split, 0) + 1
        shards = writer.close()
        write_stats(staging, counts, rows, label_channel_names(spec.class_names, spec.contain_dontcare_label))
        manifest = _manifest(spec, load_size, rows, sorted(label_only), shards)
        write_manifest(manifest, staging)
    log.info("prepared %s into %s: %s", name, out_dir, ", ".join(f"{s} {n} rows" for s, n in rows.items()))
    return manifest


def _manifest(spec: LabelSpec, load_size: int, rows: dict[str, int], label_only: list[str], shards: list) -> Manifest:
    return Manifest(
        dataset=spec.dataset, class_names=spec.class_names, class_colors=spec.class_colors,
        num_classes=spec.num_classes, contain_dontcare_label=spec.contain_dontcare_label,
        has_instance=spec.has_instance, load_size=load_size, splits=dict(sorted(rows.items())),
        label_only_splits=label_only, shards=shards,
    )

