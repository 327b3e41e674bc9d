"""The README's two commands timed from a fresh clone, and what `make run` produced (README, "Two commands" and
"Results").

    python -m bench.make_targets run --out bench/results/make_run.json
    python -m bench.make_targets test --out bench/results/make_test.json

Clones this checkout's HEAD into a temporary folder (what a new user or CI starts from) and runs there, first
`make venv` (the environment install, timed apart), then `make run` or `make test`, streaming their output.
`make run` records the seconds of each `dvc repro` stage (from its "Running stage" lines) and the numbers the
README quotes: the training's and the evaluation's metrics and the registration's decision. `make test`
records pytest's counts. Both record the machine, the load and the commit. ``--in-place`` runs in this
checkout instead (its environment and outputs as they are).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_out_argument, command_line, git_commit, load_average, machine, write_results

ROOT = Path(__file__).resolve().parent.parent
STAGE_LINE = re.compile(r"Running stage '(?P<stage>[\w-]+)'")
PYTEST_COUNT = re.compile(r"(?P<count>\d+) (?P<outcome>passed|failed|skipped|errors?|xfailed|xpassed)")
PYTEST_SUMMARY = re.compile(r"=+ .*\d+ (passed|failed).* in [\d.]+s")
# what make run leaves that the README quotes: file -> keys
RUN_OUTPUTS = {
    "outputs/train/metrics.json": ("steps", "seconds_per_step", "images_per_second"),
    "outputs/eval/metrics.json": ("num_images", "judge_miou_generated", "judge_miou_real", "judge_miou_baseline",
                                  "judge_accuracy_generated", "judge_accuracy_real", "judge_accuracy_baseline",
                                  "judge_miou_ratio", "fd_judge_generated", "fd_judge_baseline"),
    "outputs/register/registration.json": ("model_name", "version", "aliases", "gate_passed", "promote"),
}


def stream(command: list[str], cwd: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run ``command``, echo its output, and return its seconds and its lines with the second each appeared."""
    start = time.monotonic()
    lines = []
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            lines.append((time.monotonic() - start, line.rstrip("\n")))
    if process.returncode != 0:
        raise SystemExit(f"error: `{' '.join(command)}` in {cwd} exited {process.returncode}")
    return time.monotonic() - start, lines


def stage_seconds(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Each dvc stage's seconds: from its "Running stage" line to the next one (the last: to the end)."""
    starts = [(second, match["stage"]) for second, line in lines if (match := STAGE_LINE.search(line))]
    ends = [second for second, _ in starts[1:]] + [total]
    return {stage: round(end - begin, 1) for (begin, stage), end in zip(starts, ends, strict=True)}


def pytest_counts(lines: list[tuple[float, str]]) -> dict[str, int]:
    summaries = [line for _, line in lines if PYTEST_SUMMARY.search(line)]
    if not summaries:
        raise SystemExit("error: make test printed no pytest summary line")
    return {match["outcome"]: int(match["count"]) for match in PYTEST_COUNT.finditer(summaries[-1])}


def run_outputs(folder: Path) -> dict[str, Any]:
    found = {}
    for name, keys in RUN_OUTPUTS.items():
        data = json.loads((folder / name).read_text())
        found[Path(name).parent.name] = {key: data[key] for key in keys}
    return found


def measure(target: str, folder: Path) -> dict[str, Any]:
    load_before = load_average()
    environment_s, _ = stream(["make", "venv"], folder)
    target_s, lines = stream(["make", target], folder)
    total = environment_s + target_s
    result: dict[str, Any] = {"target": f"make {target}", "environment_s": round(environment_s, 1),
                              "target_s": round(target_s, 1), "target_minutes": round(target_s / 60, 1),
                              "total_s": round(total, 1),
                              "total_minutes": round(total / 60, 1), "load_1min_before": load_before,
                              "load_1min_after": load_average(), "clone": git_commit(folder)}
    if target == "run":
        return {**result, "stages_s": stage_seconds(lines, target_s), "outputs": run_outputs(folder)}
    return {**result, **pytest_counts(lines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.make_targets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=["run", "test"], help="the make target")
    parser.add_argument("--in-place", action="store_true", help="run in this checkout, not in a fresh clone")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    info = {"command": command_line("bench.make_targets", argv), "machine": machine()}
    if args.in_place:
        result = measure(args.target, ROOT)
    else:
        with tempfile.TemporaryDirectory(prefix="dagan-fresh-clone-") as scratch:
            clone = Path(scratch) / "clone"
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
            result = measure(args.target, clone)
    write_results(args.out, {**info, **result, "fresh_clone": not args.in_place})
    return 0


if __name__ == "__main__":
    sys.exit(main())
