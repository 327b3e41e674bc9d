"""Repeat the default run's training and evaluation over training seeds: does it learn every time?

    python -m bench.seeds                                   # train.seed 0 1 2 with params.yaml
    python -m bench.seeds --name b1 -S model.variant=B1     # the same for B1 (SPADE)
    python -m bench.seeds --report b6 b1                    # the tables of earlier repeats, side by side

Needs the prepared data and the judge of the pipeline (``dvc repro train_judge``): every seed
trains on the same data and is scored by the same judge; only ``train.seed`` changes (weight
initialisation, data order, augmentation). Each seed runs the pipeline's own commands in fresh
processes::

    python -m components.train    -S train.seed=S -S train.out_dir=outputs/seeds/NAME/seed-S/train ...
    python -m components.evaluate -S train.seed=S -S train.out_dir=... -S evaluate.out_dir=.../eval ...

and is scored with the register stage's gate (``components.register.decide``) without registering
anything. A row holds the steps, the training's wall time and seconds per step, the 1-minute load
average before and after (other work on the machine slows training down; numerics do not change),
judge mIoU and Fréchet distance of generated, real and mean-colour-baseline images, their ratios,
the gate, and whether the demo targets hold (FD at most 0.7 x the baseline's, mIoU at least 0.9 x
real). Rows go to ``outputs/seeds/NAME/seeds.json`` (a seed already there with the same settings is
not run again) and a Markdown table is printed. Trainings log to MLflow as ``components.train`` does,
in the experiment ``dagan-seeds`` unless ``-S mlflow.experiment=...`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.outputs import judge_path, write_json
from components.register import decide
from components.settings import load_step_config

ROOT = Path("outputs/seeds")
FD_RATIO_TARGET = 0.7  # the demo's promise: judge FD at least 30% below the mean-colour painter's
MIOU_RATIO_TARGET = 0.9  # and judge mIoU of generated images at least 0.9 x that of real ones
EXPERIMENT = "dagan-seeds"


def seed_overrides(name: str, seed: int, overrides: Sequence[str]) -> list[str]:
    """The -S arguments of one seed: the MLflow experiment, the user's, then seed and output folders."""
    folder = ROOT / name / f"seed-{seed}"
    return [f"mlflow.experiment={EXPERIMENT}", *overrides, f"train.seed={seed}",
            f"train.out_dir={folder / 'train'}", f"evaluate.out_dir={folder / 'eval'}"]


def _component(module: str, params: str, sets: Sequence[str]) -> None:
    command = [sys.executable, "-m", f"components.{module}", "--params", params]
    for item in sets:
        command += ["-S", item]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}")


def run_seed(name: str, seed: int, params: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Train and evaluate one seed from scratch; return its row."""
    sets = seed_overrides(name, seed, overrides)
    config = load_step_config(params, sets)
    for stale in (Path(config.train.out_dir), Path(config.evaluate.out_dir)):
        if stale.exists():  # an interrupted earlier attempt: start the seed again from scratch
            shutil.rmtree(stale)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    _component("train", params, sets)
    train_seconds, load_after_train = time.perf_counter() - started, os.getloadavg()[0]
    _component("evaluate", params, sets)
    trained = json.loads((Path(config.train.out_dir) / "metrics.json").read_text())
    metrics = json.loads((Path(config.evaluate.out_dir) / "metrics.json").read_text())
    decision = decide(metrics, config.register, None, str(Path(config.evaluate.out_dir) / "metrics.json"))
    fd_ratio = metrics["fd_judge_generated"] / metrics["fd_judge_baseline"]
    return {
        "seed": seed, "overrides": list(overrides), "variant": config.model.variant, "steps": trained["steps"],
        "train_seconds": round(train_seconds, 1), "seconds_per_step": trained.get("seconds_per_step"),
        "load_before": round(load_before, 2), "load_after_train": round(load_after_train, 2),
        **{key: metrics[key] for key in ("judge_miou_generated", "judge_miou_real", "judge_miou_baseline",
                                         "fd_judge_generated", "fd_judge_baseline", "judge_miou_ratio")},
        "fd_ratio": round(fd_ratio, 4), "gate_passed": decision.gate_passed,
        "targets_met": decision.gate_passed and fd_ratio <= FD_RATIO_TARGET
        and metrics["judge_miou_ratio"] >= MIOU_RATIO_TARGET,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    """One table row per seed plus the mean of the ratios."""
    lines = [f"### {name}", "",
             "| seed | steps | train min | s/step | load | mIoU gen / real / base | FD gen / base | FD ratio "
             "| mIoU ratio | gate | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['steps']} | {row['train_seconds'] / 60:.1f} | {row['seconds_per_step']:.2f} "
            f"| {row['load_before']:.1f}-{row['load_after_train']:.1f} | {row['judge_miou_generated']:.3f} / "
            f"{row['judge_miou_real']:.3f} / {row['judge_miou_baseline']:.3f} | {row['fd_judge_generated']:.4f} / "
            f"{row['fd_judge_baseline']:.4f} | {row['fd_ratio']:.2f} | {row['judge_miou_ratio']:.2f} "
            f"| {'pass' if row['gate_passed'] else 'refused'} | {'met' if row['targets_met'] else 'missed'} |")
    if len(rows) > 1:
        fd = [row["fd_ratio"] for row in rows]
        miou = [row["judge_miou_ratio"] for row in rows]
        lines.append(f"| mean | | | | | | | {statistics.mean(fd):.2f} (max {max(fd):.2f}) "
                     f"| {statistics.mean(miou):.2f} (min {min(miou):.2f}) "
                     f"| {sum(r['gate_passed'] for r in rows)}/{len(rows)} "
                     f"| {sum(r['targets_met'] for r in rows)}/{len(rows)} |")
    return "\n".join(lines)


def _rows_file(name: str) -> Path:
    return ROOT / name / "seeds.json"


def _load_rows(name: str) -> list[dict[str, Any]]:
    path = _rows_file(name)
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def repeat(name: str, seeds: Sequence[int], params: str, overrides: Sequence[str]) -> list[dict[str, Any]]:
    config = load_step_config(params, list(overrides))
    if not judge_path(config).is_file() or not (Path(config.dataset.prepared_dir) / "manifest.json").is_file():
        raise FileNotFoundError(f"{judge_path(config)} or {config.dataset.prepared_dir}/manifest.json is missing: "
                                "run `dvc repro train_judge` first (every seed is scored by that judge)")
    rows = {row["seed"]: row for row in _load_rows(name)}
    for seed in seeds:
        if seed in rows and rows[seed]["overrides"] == list(overrides):
            print(f"seed {seed}: kept from {_rows_file(name)}", file=sys.stderr)
            continue
        if seed in rows:
            raise ValueError(f"{_rows_file(name)} has seed {seed} with other settings ({rows[seed]['overrides']}); "
                             "choose another --name")
        rows[seed] = run_seed(name, seed, params, overrides)
        write_json(_rows_file(name), {"name": name, "rows": [rows[s] for s in sorted(rows)]})
    return [rows[s] for s in sorted(rows) if s in seeds]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train.seed values (default 0 1 2)")
    parser.add_argument("--name", default="default", help="folder under outputs/seeds (default: default)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every seed, as for the components (repeatable)")
    parser.add_argument("--report", nargs="+", metavar="NAME", help="print the tables of earlier repeats only")
    args = parser.parse_args(argv)
    try:
        if args.report:
            print("\n\n".join(markdown(name, _load_rows(name)) for name in args.report))
            return 0
        print(markdown(args.name, repeat(args.name, args.seeds, args.params, args.overrides)))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
