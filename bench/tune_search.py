"""Random search against Optuna's TPE on the synthetic sweep: the best judge FD each finds in one budget.

    python -m bench.tune_search                          # seeds 0 1 2, writes bench/results/tune_search.json
    python -m bench.tune_search --seeds 0 --num-samples 4 --max-steps 20 --out /tmp/tune_search.json
    python -m bench.tune_search --table bench/results/tune_search.json   # the table of docs/TUNE.md

For every seed and both search algorithms (``tune.search_alg``), one sweep, ``python -m
components.tune`` in its own process, with the same budget: ``--num-samples`` trials of up to
``--max-steps`` steps over params.yaml's search space, evaluated every ``--eval-every`` steps, ASHA
with a grace period of two evaluations, 2 trials at a time on a local Ray of 2 CPUs, ``tune.seed`` =
the seed (the sampled values; TPE's own randomness too). The
data is a small synthetic set made for the bench (``components.synthesize`` / ``prepare`` /
``train_judge`` at ``--size``), scored by its judge; the trials are tracked by an ``mlflow server`` the
bench starts on 127.0.0.1. Everything goes under ``--work`` (removed at the end unless ``--keep``).

A row: seed, algorithm, the best ``fd_judge`` (lower is better: best.json's value, each trial at its
best report), the winning trial's values, the number of trials, the sweep's wall time and the load
average before and after (other work on the machine slows the sweeps, not their scores). The summary
gives each algorithm's mean and the seeds on which TPE found the lower FD.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, load_average, machine

ALGORITHMS = ("random", "optuna")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _component(module: str, params: str, sets: Sequence[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", f"components.{module}", "--params", params, "-q"]
    for item in sets:
        command += ["-S", item]
    subprocess.run(command, check=True, env=env)


def _start_mlflow(work: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = (work / "mlflow.log").open("w")
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                               f"sqlite:///{work / 'mlflow.db'}", "--artifacts-destination", str(work / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no GenAI job workers
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # minutes on a loaded machine
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(1)
    server.kill()
    raise RuntimeError(f"mlflow server did not start: {(work / 'mlflow.log').read_text()[-2000:]}")


def data_overrides(work: Path, size: int) -> list[str]:
    return [f"synthetic.size={size}", "synthetic.num_train=64", "synthetic.num_val=64", f"dataset.load_size={size}",
            f"dataset.crop_size={size}",
            f"dataset.raw_dir={work / 'raw'}", f"dataset.prepared_dir={work / 'prepared'}",
            f"judge.out_dir={work / 'judge'}", "judge.epochs=5", "judge.device=cpu", "evaluate.device=cpu",
            "train.device=cpu", "mlflow.experiment=bench-tune-search"]


def sweep_overrides(work: Path, args: argparse.Namespace, algorithm: str, seed: int) -> list[str]:
    return [f"tune.search_alg={algorithm}", f"tune.seed={seed}", f"tune.num_samples={args.num_samples}",
            f"tune.max_steps={args.max_steps}", f"tune.eval_every={args.eval_every}",
            f"tune.grace_period={args.eval_every * 2}", "tune.cpus_per_trial=1", "tune.num_cpus=2",
            "tune.max_concurrent_trials=2", "tune.eval_batches=8", f"tune.name={algorithm}-{seed}",
            f"tune.storage_path={work / 'ray'}", f"tune.out_dir={work / f'{algorithm}-{seed}'}"]


def run_sweep(args: argparse.Namespace, work: Path, env: dict[str, str], algorithm: str, seed: int) -> dict[str, Any]:
    """One sweep; once more under a new name when it fails (Ray gives its raylet 30 s to start, which a loaded
    machine can miss)."""
    load_before, start = load_average(), time.monotonic()
    sets = data_overrides(work, args.size) + sweep_overrides(work, args, algorithm, seed)
    try:
        _component("tune", args.params, sets, env)
        attempts = 1
    except subprocess.CalledProcessError:
        _component("tune", args.params, [*sets, f"tune.name={algorithm}-{seed}-again"], env)
        attempts = 2
    best = json.loads((work / f"{algorithm}-{seed}" / "best.json").read_text())
    return {"seed": seed, "algorithm": algorithm, "best_fd_judge": best["value"], "best_step": best["step"],
            "best_values": best["overrides"], "num_trials": args.num_samples,
            "failed_trials": len(best["failed_trials"]), "wall_s": round(time.monotonic() - start, 1),
            "attempts": attempts, "load_before": load_before, "load_after": load_average()}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by = {algorithm: {row["seed"]: row["best_fd_judge"] for row in rows if row["algorithm"] == algorithm}
          for algorithm in ALGORITHMS}
    seeds = sorted(set(by["random"]) & set(by["optuna"]))
    return {**{f"{algorithm}_mean_fd": statistics.fmean(by[algorithm].values()) for algorithm in ALGORITHMS
               if by[algorithm]},
            "seeds": seeds, "optuna_lower_on": [seed for seed in seeds if by["optuna"][seed] < by["random"][seed]],
            "optuna_minus_random": [by["optuna"][seed] - by["random"][seed] for seed in seeds]}


def markdown_table(result: dict[str, Any]) -> str:
    """The best judge FD each algorithm found, per seed and on average (docs/TUNE.md shows this table)."""
    by = {(row["algorithm"], row["seed"]): row["best_fd_judge"] for row in result["rows"]}
    seeds = result["summary"]["seeds"]
    lines = ["| seed | random: best `fd_judge` | optuna (TPE): best `fd_judge` | optuna - random |",
             "|---|---|---|---|"]
    lines += [f"| {seed} | {by['random', seed]:.4f} | {by['optuna', seed]:.4f} | "
              f"{by['optuna', seed] - by['random', seed]:+.4f} |" for seed in seeds]
    means = [statistics.fmean(by[algorithm, seed] for seed in seeds) for algorithm in ALGORITHMS]
    lines.append(f"| mean | {means[0]:.4f} | {means[1]:.4f} | {means[1] - means[0]:+.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_search", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image side of the bench's synthetic scenes")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dagan-bench-tune-search"))
    parser.add_argument("--keep", action="store_true", help="keep --work (data, runs, Ray storage)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tune_search.json")
    parser.add_argument("--table", type=Path, help="print the Markdown table of this results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())), end="")
        return 0
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    server, url = _start_mlflow(args.work)
    # Ray's memory monitor would kill trials for memory other work on the machine uses
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "HOME": str(args.work / "home"), "OMP_NUM_THREADS": "1",
           "RAY_memory_monitor_refresh_ms": "0"}
    try:
        for module in ("synthesize", "prepare", "train_judge"):
            _component(module, args.params, data_overrides(args.work, args.size), env)
        rows: list[dict[str, Any]] = []
        for seed in args.seeds:
            for algorithm in ALGORITHMS:
                rows.append(run_sweep(args, args.work, env, algorithm, seed))
                result = write_result(args, argv, rows)  # after every sweep: an interrupted bench keeps its rows
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(result["summary"], indent=2))
    return 0


def write_result(args: argparse.Namespace, argv: Sequence[str] | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    result = {"command": "python -m " + " ".join(["bench.tune_search", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine(), "settings": {key: str(value) for key, value in vars(args).items()},
              "rows": rows, "summary": summarise(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
