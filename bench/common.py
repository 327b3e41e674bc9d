"""Shared pieces of the benchmarks (docs/PERFORMANCE.md): the machine, timing, isolated runs, tables.

Every configuration runs in a fresh Python process (:func:`run_isolated`), so its peak
resident memory (``ru_maxrss``) is its own and one configuration's warm caches or
allocator state never flatter the next. Timings are medians over repeats after warm-up;
the load average before and after each run is recorded because other work on the same
machine slows every number down.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# system: glibc's defaults; reuse: freed memory stays in the heap (dagan.heap, what training
# does with train.heap_reuse=true, the default).
ALLOCATORS = ("system", "reuse")
CPU_FLAGS_OF_INTEREST = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SPAP_PLACEMENTS = ("generator", "discriminator", "both")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in present]
    except OSError:
        pass
    return []


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def no_gpu_reason() -> str:
    return "no CUDA device on this machine (torch.cuda.is_available() is False)"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def load_average() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(fn: Callable[[], object], warmup: int, repeats: int, synchronize: bool = False) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if synchronize:
        torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if synchronize:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def stats(seconds: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "n": len(seconds),
            "values": [round(value, 4) for value in seconds]}


MODELS_HELP = ("models: DAGAN variants B1..B6 (multiscale D), optionally with SPAP (B6+spap-both, +spap-generator, "
               "+spap-discriminator), ccfpse (CC-FPSE generator + FPSE D, as its paper trains it), ca2sis, or "
               "GENERATOR/DISCRIMINATOR to mix them (B6/fpse, ccfpse/multiscale)")


def model_settings(name: str) -> dict[str, str]:
    """The ``model`` config section of a benchmark model name (:data:`MODELS_HELP`), or a ValueError."""
    from dagan.config import VARIANTS

    generator, _, discriminator = name.partition("/")
    generator, _, spap = generator.partition("+spap-")
    if generator in ("ccfpse", "ca2sis"):
        settings = {"generator": generator, "discriminator": discriminator or
                    ("fpse" if generator == "ccfpse" else "multiscale")}
    elif generator in VARIANTS and generator != "custom":
        settings = {"variant": generator, "discriminator": discriminator or "multiscale"}
    else:
        raise ValueError(f"model {name!r}: {MODELS_HELP}")
    if settings["discriminator"] not in ("multiscale", "fpse"):
        raise ValueError(f"model {name!r}: the discriminator is multiscale or fpse")
    if spap and spap not in SPAP_PLACEMENTS or "+" in name and not spap:
        raise ValueError(f"model {name!r}: SPAP goes into {'|'.join(SPAP_PLACEMENTS)}: {MODELS_HELP}")
    return {**settings, **({"spap": spap} if spap else {})}


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """``--out``: where the JSON goes. Without it nothing is written, so a benchmark run never replaces the
    committed results behind docs/PERFORMANCE.md (bench/results/) unless asked to."""
    parser.add_argument("--out", help="write the JSON results to this file (the committed ones: bench/results/*.json, "
                                      "then python -m bench.report regenerates the docs' tables); default: print only")


def git_commit(folder: Path, *paths: str) -> dict[str, Any]:
    """The git commit of ``folder`` and whether its tracked files (under ``paths``, default all) differ from it."""
    def git(*arguments: str) -> str | None:
        result = subprocess.run(["git", "-C", str(folder), *arguments], capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return {"folder": str(folder), "commit": head, "modified": bool(changes) if changes is not None else None}


def write_results(out: str | None, data: dict[str, Any]) -> Path | None:
    """Write ``data`` with the commit of the code that measured it (``ours``: whether dagan/ or bench/ differed
    from it) to ``out`` (atomically) and say so; with no ``out`` say how to keep them."""
    from components.outputs import write_json

    if out is None:
        print("results not written (--out PATH writes them)", flush=True)
        return None
    root = Path(__file__).resolve().parent.parent
    path = write_json(out, {**data, "ours": git_commit(root, "dagan", "bench", ":!bench/results")})
    print(f"wrote {path}", flush=True)
    return path


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that produced a results file: ``python -m MODULE ARGS``."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def model_parser(description: str, modes: Sequence[str], repeats: int) -> argparse.ArgumentParser:
    """The arguments bench.train_step and bench.inference share (configuration grid and timing)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=["B1", "B6"], help=MODELS_HELP)
    parser.add_argument("--modes", nargs="+", default=["fp32"], help=f"any of {', '.join(modes)}")
    parser.add_argument("--allocators", nargs="+", default=["reuse"], choices=ALLOCATORS,
                        help="reuse: keep freed memory in the heap, as training does (train.heap_reuse, default); "
                             "system: glibc defaults")
    parser.add_argument("--dataset", default="cityscapes", help="preset giving the label layout and upsampling")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (at least 1)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls; the median is reported")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a configuration may take; then its row "
                                                                     "records that it failed")
    add_out_argument(parser)
    return parser


def start(args: argparse.Namespace, measure: Callable[[dict[str, Any]], dict[str, Any]],
          parse_mode: Callable[[str], dict[str, Any]]) -> int | None:
    """The common start of a benchmark's main: a ``--worker`` call measures its spec and prints the
    JSON (exit code 0); a missing GPU for ``--device cuda`` is exit code 2; else the modes are
    checked, the machine printed, and None returned (go on with the grid)."""
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda: {no_gpu_reason()}; run on a GPU machine or use --device cpu", file=sys.stderr)
        return 2
    for mode in args.modes:
        parse_mode(mode)
    for name in args.variants:
        model_settings(name)
    print(f"machine: {json.dumps(machine())}", flush=True)
    return None


def grid_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields every configuration of one run shares (from :func:`model_parser`'s arguments)."""
    return {"dataset": args.dataset, "height": args.height, "width": args.width, "ngf": args.ngf,
            "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats, "device": args.device}


def apply_allocator(allocator: str) -> None:
    """In a worker process: "reuse" applies train.heap_reuse's setting, as training does."""
    from dagan.heap import reuse_freed_memory

    if allocator == "reuse" and (reason := reuse_freed_memory()) is not None:
        raise RuntimeError(f"allocator reuse: {reason}; measure with --allocators system")


def run_isolated(module: str, spec: dict[str, Any], timeout: float = 3600, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module --worker SPEC_JSON`` and return the JSON it prints last.

    ``spec["allocator"]`` ("system" or "reuse") is applied in the worker by :func:`apply_allocator`;
    GLIBC_TUNABLES is removed from its environment so "system" means glibc's defaults, unless ``env``
    sets it. The worker runs in ``cwd`` (default: the repository root), with the repository importable."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec)]
    root = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    environment.pop("GLIBC_TUNABLES", None)
    environment.update(env or {})
    allocator = spec.get("allocator", "system")
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator {allocator!r}: choose from {', '.join(ALLOCATORS)}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd or root,
                            env=environment, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{module} worker for {spec} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} worker for {spec} printed no JSON result:\n{result.stdout[-2000:]}")
    return json.loads(lines[-1])


def run_or_record_failure(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`run_isolated`, or the spec with ``"failed"``: why the worker gave no result (its exit and the end
    of its stderr, or the time limit), so a configuration that cannot run (e.g. torch.compile on a machine
    too slow to compile it) is a row of the results, not a lost run."""
    try:
        return run_isolated(module, spec, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "failed": f"no result within the time limit of {timeout:.0f} s (--timeout)"}
    except RuntimeError as error:
        return {**spec, "failed": str(error).splitlines()[-1][-500:]}


def print_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, Any]]) -> None:
    """Print ``rows`` as a Markdown table; ``columns`` are (key, heading) pairs."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return "" if value is None else str(value)

    print("| " + " | ".join(heading for _, heading in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |")
    sys.stdout.flush()
