"""Benchmark: data-loader throughput against what training consumes (images per second).

    python -m bench.dataloader                   # prepares synthetic shards under bench/.data once
    python -m bench.dataloader --workers 0 1 2 --items 128

Reads prepared Parquet shards with :class:`dagan.data.PairedDataset` (random 256x128 crops
and flips, as training does) through a torch DataLoader, and builds the one-hot semantic
input in the main process as the training loop does. The shards are the built-in synthetic
scenes at 256x256, made once with the project's own commands::

    python -m components.synthesize --out bench/.data/raw -S synthetic.size=256 ...
    python -m components.prepare --dataset synthetic --source bench/.data/raw --out bench/.data/prepared ...

Training consumption comes from ``bench/results/train_step.json`` (batch / seconds per
iteration of each measured row) when it exists. Writes the JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import common
from bench.common import RESULTS_DIR, load_average, machine, print_table, stats

DEFAULT_DATA = Path(__file__).resolve().parent / ".data"
SCENE_SIZE = 256


def ensure_shards(data_dir: Path, num_train: int) -> Path:
    """Synthesize and prepare the scenes with the project's CLIs unless already there."""
    prepared = data_dir / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    root = Path(__file__).resolve().parent.parent
    commands = [
        [sys.executable, "-m", "components.synthesize", "--out", str(data_dir / "raw"),
         "-S", f"synthetic.size={SCENE_SIZE}", "-S", f"synthetic.num_train={num_train}", "-S", "synthetic.num_val=0"],
        [sys.executable, "-m", "components.prepare", "--dataset", "synthetic", "--source", str(data_dir / "raw"),
         "--out", str(prepared), "-S", f"dataset.load_size={SCENE_SIZE}"],
    ]
    for command in commands:
        print("running: " + " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=root, check=True)
    return prepared


def measure(prepared: Path, workers: int, items: int, crop: int, aspect_ratio: float) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from dagan.data import PairedDataset
    from dagan.labels import semantic_input

    dataset = PairedDataset(prepared, "train", crop_size=crop, aspect_ratio=aspect_ratio, train=True, flip=True,
                            seed=0)
    manifest = dataset.manifest
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0)
    seconds: list[float] = []
    load_before = load_average()
    shape = None
    while len(seconds) < items + 2:
        start = time.perf_counter()
        for batch in loader:
            instance = batch.get("instance")
            semantic = semantic_input(batch["label"], manifest.num_label_channels, instance)
            shape = tuple(semantic.shape)
            seconds.append(time.perf_counter() - start)
            if len(seconds) >= items + 2:
                break
            start = time.perf_counter()
    timed_items = seconds[2:]  # the first items include starting the workers and opening the shards
    return {"workers": workers, "items": len(timed_items), "item_s": stats(timed_items),
            "images_per_second": len(timed_items) / sum(timed_items), "semantic_shape": shape,
            "load_before": load_before, "load_after": load_average()}


def training_consumption(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())["rows"]
    return [{"variant": r["variant"], "mode": r["mode"], "allocator": r.get("allocator", "system"),
             "images_per_second": r["batch"] / r["iteration_s"]["median"]} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder for the synthetic raw + prepared shards")
    parser.add_argument("--num-train", type=int, default=64, help="scenes to synthesize (once)")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--items", type=int, default=64, help="timed items per setting")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--aspect-ratio", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-results", default=str(RESULTS_DIR / "train_step.json"))
    common.add_out_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prepared = ensure_shards(Path(args.data), args.num_train)
    print(f"machine: {json.dumps(machine())}", flush=True)
    rows = [measure(prepared, workers, args.items, args.crop, args.aspect_ratio) for workers in args.workers]
    consumption = training_consumption(Path(args.train_results))
    fastest = max((c["images_per_second"] for c in consumption), default=None)
    for row in rows:
        row["median_item_ms"] = row["item_s"]["median"] * 1000
        row["load"] = f"{row['load_before']}-{row['load_after']}"
        row["times_fastest_training"] = row["images_per_second"] / fastest if fastest else None
    print_table([("workers", "DataLoader workers"), ("images_per_second", "images/s"),
                 ("median_item_ms", "median ms/item"), ("times_fastest_training", "x fastest training"),
                 ("load", "load 1 min")], rows)
    if consumption:
        print_table([("variant", "variant"), ("mode", "mode"), ("allocator", "allocator"),
                     ("images_per_second", "training consumes images/s")], consumption)
    else:
        print(f"no {args.train_results}: run python -m bench.train_step first to compare with training")
    common.write_results(args.out, {"benchmark": "dataloader", "command": common.command_line("bench.dataloader", argv),
                                    "machine": machine(), "rows": rows, "training_consumption": consumption,
                                    "crop": [args.crop, args.aspect_ratio]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
