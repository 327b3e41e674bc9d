"""Benchmark: the official DAGAN and SPADE code and ours, timed in one run (docs/PERFORMANCE.md).

    python -m bench.official --dagan ~/src/DAGAN --spade ~/src/SPADE                 # prints the ratios
    python -m bench.official --dagan ~/src/DAGAN --spade ~/src/SPADE --out bench/results/official.json

``--dagan``: a checkout of https://github.com/Ha0Tang/DAGAN (its DAGAN_v1 code runs);
``--spade``: one of https://github.com/NVlabs/SPADE. Fetch them yourself (their licence is CC
BY-NC-SA; nothing of them is in this repository) and install their ``sync_batchnorm`` as their
READMEs say; :mod:`bench.official_driver` runs them in place.

Training: one full iteration (label preprocessing, G step with hinge + feature matching + VGG19
perceptual, D step, TTUR Adam) of the official trainer against ours (:mod:`bench.train_step`):
official DAGAN against our B6, official SPADE against our B1. Both sides get the same torch, threads,
input (Cityscapes layout, 256x128, ngf 64, batch 1: random 16x16 blocks of classes with instances)
and a randomly initialised VGG19. The official code runs in float32, as it ships; ours in exact
float32, with contiguous (``fp32``) and channels_last tensors (``fp32-cl``: the same float32 sums in
another order, as the official code's own 1- and 2-thread runs differ), and in bf16 autocast +
channels_last (``bf16-cl``). Allocators: each as it ships
(theirs glibc's defaults, ours heap reuse, ``train.heap_reuse``), and the same for both (heap reuse;
theirs through ``GLIBC_TUNABLES``, :data:`dagan.heap.GLIBC_TUNABLES`; every row records whether its
process mmaps large blocks, so the setting is checked, not assumed).

Inference: images/s of the generator at 512x256 (Cityscapes' test size), batch 1 and 8: official
test.py's ``model(data, mode='inference')`` (label preprocessing + G in eval mode under no_grad)
against ours (:mod:`bench.inference`: semantic input + G in eval mode under inference_mode). Both
with glibc's default allocator, as ``test.py`` and ``dagan generate`` run.

Every configuration is a fresh process. Official and our processes alternate, and every other round
runs in reverse order, so a change of load hits both sides. A ratio is ours / official of the medians
over every timed repeat of every round (the per-round ratios give its spread). The JSON holds every
repeat, the machine, the load average before and after, both official commits and ours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import common, official_driver
from bench.official_driver import CODES
from bench.train_step import parse_mode
from dagan.heap import GLIBC_TUNABLES

OURS_MODES = ("fp32", "fp32-cl", "bf16-cl")  # exact float32 (contiguous, channels_last), bf16 autocast
INFERENCE_MODES = ("fp32", "bf16-cl")  # fp32: what dagan generate runs
# Targets (same allocator for both): ours / official per precision, and B6 over B1.
TARGET_OF_OFFICIAL = {"fp32": 0.70, "fp32-cl": 0.70, "bf16-cl": 0.22}
TARGET_B6_OVER_B1 = 1.03
SYNC_BATCHNORM = "https://github.com/vacancy/Synchronized-BatchNorm-PyTorch"  # their README's install step
REPOSITORY = {"DAGAN": "https://github.com/Ha0Tang/DAGAN", "SPADE": "https://github.com/NVlabs/SPADE"}


def code_dir(code: str, checkout: str) -> Path:
    """The folder of ``checkout`` that holds the official train.py (DAGAN: DAGAN_v1), or a ValueError."""
    root = Path(checkout).expanduser().resolve()
    folder = root / "DAGAN_v1" if code == "DAGAN" and (root / "DAGAN_v1").is_dir() else root
    generator = folder / "models" / "networks" / "generator.py"
    if not (folder / "train.py").is_file() or not generator.is_file():
        raise ValueError(f"--{code.lower()} {checkout}: no train.py and models/networks/generator.py in {folder}; "
                         f"pass a checkout of {REPOSITORY[code]}")
    if ("class SpatialAttention" in generator.read_text()) != (code == "DAGAN"):
        raise ValueError(f"--{code.lower()} {checkout}: {generator} is not the official {code} generator; "
                         f"pass a checkout of {REPOSITORY[code]}")
    if not (folder / "models" / "networks" / "sync_batchnorm" / "__init__.py").is_file():
        raise ValueError(f"--{code.lower()} {checkout}: no models/networks/sync_batchnorm in {folder}; install it as "
                         f"the official README says: cd {folder / 'models' / 'networks'} && git clone "
                         f"{SYNC_BATCHNORM} && cp -rf Synchronized-BatchNorm-PyTorch/sync_batchnorm .")
    return folder


def training_plan(args: argparse.Namespace, folders: dict[str, Path]) -> list[dict[str, Any]]:
    """One round's training configurations, official and ours alternating."""
    shared = {"dataset": "cityscapes", "height": args.height, "width": args.width, "ngf": args.ngf, "batch": 1,
              "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats, "device": "cpu"}
    plan = []
    for code, variant in CODES.items():
        theirs = [{"side": "official", "code": code, "code_dir": str(folders[code]), "mode": "fp32",
                   "allocator": allocator, **shared} for allocator in ("system", "reuse")]
        ours = [{"side": "ours", "variant": variant, "mode": mode, **parse_mode(mode), "allocator": "reuse",
                 "generator_forward_backward": False, **shared} for mode in args.modes]
        plan += [spec for pair in itertools.zip_longest(theirs, ours) for spec in pair if spec is not None]
    return plan


def inference_plan(args: argparse.Namespace, folders: dict[str, Path]) -> list[dict[str, Any]]:
    """One round's inference configurations (official DAGAN and our B6), alternating."""
    shared = {"dataset": "cityscapes", "height": args.inference_height, "width": args.inference_width,
              "ngf": args.ngf, "threads": args.threads, "warmup": 0, "repeats": args.inference_repeats,
              "device": "cpu", "allocator": "system"}
    plan = []
    for batch in args.batches:
        for mode in INFERENCE_MODES:
            plan.append({"side": "official", "code": "DAGAN", "code_dir": str(folders["DAGAN"]), "mode": "fp32",
                         "batch": batch, **shared})
            plan.append({"side": "ours", "variant": "B6", "mode": mode, **parse_mode(mode), "batch": batch, **shared})
    return plan


def run(part: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh process: ours through bench.train_step / bench.inference, theirs here."""
    if spec["side"] == "ours":
        return common.run_isolated("bench.train_step" if part == "training" else "bench.inference", spec)
    env = {"GLIBC_TUNABLES": GLIBC_TUNABLES} if spec["allocator"] == "reuse" else {}
    return common.run_isolated("bench.official", {**spec, "part": part}, cwd=Path(spec["code_dir"]), env=env)


def label(row: dict[str, Any]) -> str:
    who = f"official {row['code']}" if row["side"] == "official" else f"ours {row['variant']} {row['mode']}"
    return f"{who} ({row['allocator']}, batch {row['batch']})"


def seconds(row: dict[str, Any]) -> list[float]:
    return row["iteration_s" if "iteration_s" in row else "batch_s"]["values"]


def pooled(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [row for row in rows if all(row.get(key) == value for key, value in match.items())]


def median(rows: list[dict[str, Any]]) -> float:
    """The median over every timed repeat of ``rows``."""
    return statistics.median([value for row in rows for value in seconds(row)])


def ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of ours over median of theirs (every repeat of every round), and the per-round ratios."""
    per_round = [statistics.median(seconds(a)) / statistics.median(seconds(b)) for a in ours for b in theirs
                 if a["round"] == b["round"]]
    return {"ratio": median(ours) / median(theirs), "per_round": [round(value, 4) for value in per_round]}


def with_target(entry: dict[str, Any], target: float) -> dict[str, Any]:
    return {**entry, "target": target, "target_met": entry["ratio"] <= target}


def summarise(training: list[dict[str, Any]], inference: list[dict[str, Any]]) -> dict[str, Any]:
    """Ours over official per variant, mode and allocator (with the targets), B6 over B1, inference speed.

    ``training[variant]``: the official code it is compared with, the official medians per allocator, per
    mode our median with the ratios "as_shipped" (theirs with glibc's defaults) and "same_allocator" (both
    reusing the heap), and "fp32_over": how many times faster each mode is than our fp32;
    ``b6_over_b1[mode]``; ``inference["batchN"][mode]``: images/s of both and the ratio of seconds
    (ours / official)."""
    summary: dict[str, Any] = {"training": {}, "b6_over_b1": {}, "inference": {}}
    for code, variant in CODES.items():
        official = {allocator: pooled(training, side="official", code=code, allocator=allocator)
                    for allocator in ("system", "reuse")}
        modes: dict[str, dict[str, Any]] = {}
        for mode in OURS_MODES:
            ours = pooled(training, side="ours", variant=variant, mode=mode)
            if ours and all(official.values()):
                modes[mode] = {"ours_s": median(ours), "as_shipped": ratio(ours, official["system"]),
                               "same_allocator": with_target(ratio(ours, official["reuse"]), TARGET_OF_OFFICIAL[mode])}
        if modes:
            summary["training"][variant] = {
                "code": code, "modes": modes, "official_s": {name: median(rows) for name, rows in official.items()},
                "fp32_over": {mode: modes["fp32"]["ours_s"] / entry["ours_s"] for mode, entry in modes.items()
                              if "fp32" in modes}}
    for mode in OURS_MODES:
        b6, b1 = (pooled(training, side="ours", variant=variant, mode=mode) for variant in ("B6", "B1"))
        if b6 and b1:
            summary["b6_over_b1"][mode] = with_target(ratio(b6, b1), TARGET_B6_OVER_B1)
    for batch in sorted({row["batch"] for row in inference}):
        theirs = pooled(inference, side="official", batch=batch)
        entries = {}
        for mode in INFERENCE_MODES:
            if ours := pooled(inference, side="ours", mode=mode, batch=batch):
                entries[mode] = {**ratio(ours, theirs), "official_images_per_second": batch / median(theirs),
                                 "ours_images_per_second": batch / median(ours)}
        summary["inference"][f"batch{batch}"] = entries
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    def line(name: str, entry: dict[str, Any]) -> None:
        target = f" (target <= {entry['target']}: {'met' if entry['target_met'] else 'NOT met'})" \
            if "target" in entry else ""
        print(f"{name}: {entry['ratio']:.3f}x, per round {entry['per_round']}{target}")

    for variant, entries in summary["training"].items():
        for mode, entry in entries["modes"].items():
            for allocator in ("as_shipped", "same_allocator"):
                line(f"training ours {variant} {mode} / official {entries['code']}, {allocator}", entry[allocator])
    for mode, entry in summary["b6_over_b1"].items():
        line(f"training ours B6 / B1 {mode}", entry)
    for batch, entries in summary["inference"].items():
        for mode, entry in entries.items():
            line(f"inference {batch} seconds ours {mode} / official", entry)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.official", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dagan", help="a checkout of https://github.com/Ha0Tang/DAGAN")
    parser.add_argument("--spade", help="a checkout of https://github.com/NVlabs/SPADE")
    parser.add_argument("--parts", nargs="+", default=["training", "inference"], choices=["training", "inference"])
    parser.add_argument("--modes", nargs="+", default=list(OURS_MODES), choices=OURS_MODES,
                        help="our training modes (fp32 is what the other modes' speed-ups are given against)")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (every configuration once per round)")
    parser.add_argument("--repeats", type=int, default=5, help="timed training iterations per process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (at least 1)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of every process")
    parser.add_argument("--inference-rounds", type=int, default=2)
    parser.add_argument("--inference-repeats", type=int, default=3,
                        help="timed generator calls per process, after the first (reported apart)")
    parser.add_argument("--inference-height", type=int, default=256)
    parser.add_argument("--inference-width", type=int, default=512)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="inference batch sizes")
    common.add_out_argument(parser)
    return parser


def worker(spec: dict[str, Any]) -> int:
    measure = official_driver.measure_training if spec["part"] == "training" else official_driver.measure_inference
    print(json.dumps(measure(spec)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    try:
        if not args.dagan or not args.spade:
            raise ValueError("--dagan DIR and --spade DIR are both needed: checkouts of "
                             f"{REPOSITORY['DAGAN']} and {REPOSITORY['SPADE']}")
        if args.warmup < 1 or min(args.rounds, args.repeats, args.inference_rounds, args.inference_repeats) < 1:
            raise ValueError("--warmup, --rounds, --repeats, --inference-rounds and --inference-repeats must be >= 1")
        folders = {"DAGAN": code_dir("DAGAN", args.dagan), "SPADE": code_dir("SPADE", args.spade)}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg()
    print(f"machine: {json.dumps(common.machine())}", flush=True)
    rows: dict[str, list[dict[str, Any]]] = {"training": [], "inference": []}
    for part, rounds, plan in (("training", args.rounds, training_plan(args, folders)),
                               ("inference", args.inference_rounds, inference_plan(args, folders))):
        if part not in args.parts:
            continue
        for index in range(rounds):
            for spec in plan if index % 2 == 0 else plan[::-1]:
                row = {**run(part, spec), "round": index}
                print(f"  {part} round {index}: {label(row)}: {statistics.median(seconds(row)):.3f} s "
                      f"(load {row['load_before']} -> {row['load_after']})", flush=True)
                rows[part].append(row)
    summary = summarise(rows["training"], rows["inference"])
    print_summary(summary)
    common.write_results(args.out, {
        "benchmark": "official", "command": common.command_line("bench.official", argv), "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": common.machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
        "official": {code: common.git_commit(folder) for code, folder in folders.items()},
        "settings": {key: value for key, value in vars(args).items() if key not in ("worker", "out")},
        "summary": summary, "training": rows["training"], "inference": rows["inference"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
