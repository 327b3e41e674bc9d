"""Benchmark: preemption, the time from SIGTERM to the checkpoint on disk (docs/KUBEFLOW.md, "Preemption").

    python -m bench.preemption                                   # Cityscapes B6, ngf 64, 512x256, batch 1
    python -m bench.preemption --vgg --out bench/results/preemption.json

Kubernetes stops a pod with SIGTERM and kills it with SIGKILL after its grace period
(``terminationGracePeriodSeconds``, 30 s unless set). ``components.train`` turns SIGTERM into a
stop after the current step: it finishes the step, recalibrates the EMA generator's batch norm
(``train.ema_bn_batches``), writes the checkpoint atomically and exits. Whether that fits in the
grace period is what this measures, with the real command on the paper's Cityscapes setting:
``python -m components.train`` with ``dataset.name=cityscapes`` (35 classes + instance maps,
512x256), ``model.variant=B6``, ngf 64, batch 1, the params file's defaults otherwise (``--vgg``
adds the paper's VGG19 loss, ``loss.lambda_vgg=10``, with a randomly initialised VGG19: the
same computation as the ImageNet weights). The data are a few random scenes in the Cityscapes
layout, prepared by ``components.prepare``.

Each repeat is a fresh training process: after its ``--steps-before``-th step is logged it gets
SIGTERM 0.3 s later, early in the next step, so the measured time is nearly a whole step plus the
checkpoint (the worst case a preemption meets). Reported: SIGTERM to the checkpoint file (its
atomic rename), SIGTERM to the process's exit (wall time, and the CPU time the process spent in
it: a busy machine stretches the one, hardly the other), the step times, the process's peak
memory and the checkpoint's size, plus the machine and its load average (other work on a shared
machine slows every number down).
``recommended_grace_s`` turns the worst repeat into the grace period the TrainJob's nodes get by
default (``pipeline.trainjob.DEFAULT_GRACE_S``; tests/test_bench_preemption.py keeps the two in
step). Prints JSON; writes it to ``--out`` only when asked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import load_average, machine, no_gpu_reason, stats
from components.outputs import write_json

ROOT = Path(__file__).resolve().parent.parent
# The grace period is at least twice the worst measured CPU time from SIGTERM to exit, rounded up to half minutes.
# CPU time, not wall time: on a machine shared with other work the wall time stretches with the load, while a
# node of its own runs the process's threads (2 here) without waiting, so its wall time is at most the CPU time
# plus the checkpoint's write.
GRACE_MARGIN = 2.0
GRACE_ROUND_S = 30
SIGNAL_DELAY_S = 0.3  # after a step's log line: the signal lands early in the next step
STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) dagan\.train INFO step (\d+)/")
NUM_SCENES = 8  # as many as train.ema_bn_batches recalibrates on, at batch 1


def write_cityscapes_like(raw: Path, scenes: int, width: int, height: int, seed: int = 0) -> None:
    """Random scenes in the Cityscapes folder layout: gtFine label ids 0..33 in blocks, instance ids, photos."""
    rng = np.random.default_rng(seed)
    for index in range(scenes):
        stem = f"bench_{index:06d}_000019"
        label_dir, image_dir = raw / "gtFine" / "train" / "bench", raw / "leftImg8bit" / "train" / "bench"
        label_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 34, (height // 32, width // 32)).astype(np.uint8)
        label = np.kron(blocks, np.ones((32, 32), np.uint8))
        instance = label.astype(np.uint16) * 1000 + (np.arange(width)[None, :] > width // 2)
        photo = np.clip(label[..., None] * 7 + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(label).save(label_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(instance.astype(np.uint16)).save(label_dir / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(photo).save(image_dir / f"{stem}_leftImg8bit.png")


def prepare_data(work: Path, width: int, height: int) -> Path:
    raw, prepared = work / "raw", work / "prepared"
    write_cityscapes_like(raw, NUM_SCENES, width, height)
    subprocess.run([sys.executable, "-m", "components.prepare", "--dataset", "cityscapes", "--source", str(raw),
                    "--out", str(prepared), "--workers", "1", "-q"], cwd=ROOT, check=True)
    return prepared


def random_vgg19_weights(path: Path) -> Path:
    """A randomly initialised torchvision VGG19 state dict: the VGG loss's computation without ImageNet weights."""
    import torch
    from torchvision.models import vgg19

    torch.save(vgg19(weights=None).state_dict(), path)
    return path


def train_command(args: argparse.Namespace, prepared: Path, out_dir: Path, vgg_weights: Path | None) -> list[str]:
    overrides = ["dataset.name=cityscapes", f"dataset.prepared_dir={prepared}", "dataset.num_workers=0",
                 f"model.variant={args.variant}", f"model.ngf={args.ngf}", f"train.out_dir={out_dir}",
                 "train.batch_size=1", "train.max_steps=1000", "train.checkpoint_every=1000", "train.sample_every=0",
                 "train.log_every=1", f"train.device={args.device}"]
    if vgg_weights is not None:
        overrides += ["loss.lambda_vgg=10", f"loss.vgg_weights={vgg_weights}"]
    return [sys.executable, "-m", "components.train", "--params", str(ROOT / "params.yaml"),
            *[item for override in overrides for item in ("-S", override)]]


def _stamp(text: str) -> float:
    return time.mktime(time.strptime(text[:19], "%Y-%m-%d %H:%M:%S")) + int(text[20:]) / 1000


def measure_once(command: list[str], out_dir: Path, steps_before: int, env: dict[str, str]) -> dict[str, Any]:
    """One training process: SIGTERM after its ``steps_before``-th step; the times to the checkpoint and exit."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               text=True)
    assert process.stderr is not None
    steps: dict[int, float] = {}
    tail: list[str] = []
    reached = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            tail[:] = (tail + [line])[-30:]
            match = STEP_LINE.match(line)
            if match:
                steps[int(match.group(2))] = _stamp(match.group(1))
                if int(match.group(2)) >= steps_before:
                    reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not reached.wait(1.0):
        if process.poll() is not None:
            raise RuntimeError(f"components.train ended before step {steps_before}:\n{''.join(tail)}")
    time.sleep(SIGNAL_DELAY_S)
    cpu_at_signal = _cpu_seconds(process.pid)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    checkpoint, cpu = None, cpu_at_signal
    peak_rss_kib = 0
    while process.poll() is None:
        cpu = _cpu_seconds(process.pid) or cpu
        peak_rss_kib = max(peak_rss_kib, _peak_rss_kib(process.pid))
        if checkpoint is None:
            checkpoint = next(iter(sorted((out_dir / "checkpoints").glob("step-*.pt"))), None)
            written = time.monotonic()
        time.sleep(0.05)
    ended = time.monotonic()
    if checkpoint is None:
        written = ended
    reader.join(timeout=5)
    checkpoint = checkpoint or next(iter(sorted((out_dir / "checkpoints").glob("step-*.pt"))), None)
    if process.returncode != 0 or checkpoint is None:
        raise RuntimeError(f"components.train exited {process.returncode} without a checkpoint:\n{''.join(tail)}")
    times = [steps[step] for step in sorted(steps)]
    return {"sigterm_to_checkpoint_s": round(written - signalled, 2), "sigterm_to_exit_s": round(ended - signalled, 2),
            "sigterm_to_exit_cpu_s": round(cpu - cpu_at_signal, 2),
            "step_s": [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)],
            "peak_rss_mib": round(peak_rss_kib / 1024), "stopped_at_step": int(checkpoint.stem.split("-")[1]),
            "checkpoint_mib": round(
                checkpoint.stat().st_size / 2**20, 1), "load_average": load_average()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 once it is gone): less sensitive to a busy
    machine than wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (Linux /proc VmHWM; 0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def recommended_grace_s(result: dict[str, Any]) -> int:
    """The grace period for the measured worst case: GRACE_MARGIN x the CPU seconds from SIGTERM to exit, up to
    whole half minutes (see GRACE_MARGIN)."""
    worst = max(run["sigterm_to_exit_cpu_s"] for run in result["runs"])
    return int(math.ceil(GRACE_MARGIN * worst / GRACE_ROUND_S) * GRACE_ROUND_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preemption", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="B6", help="model.variant (default B6)")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--width", type=int, default=512, help="Cityscapes at the paper's 512x256 by default")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--vgg", action="store_true", help="the paper's VGG19 loss (lambda_vgg 10, random weights)")
    parser.add_argument("--steps-before", type=int, default=2, help="steps before SIGTERM (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the training on CPU")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", help="write the JSON result to this file (e.g. bench/results/preemption.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch_cuda_available():
        print(f"--device cuda: {no_gpu_reason()}; run on a GPU machine or use --device cpu", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="dagan-preemption-") as scratch:
        work = Path(scratch)
        prepared = prepare_data(work, args.width, args.height)
        vgg = random_vgg19_weights(work / "vgg19-random.pth") if args.vgg else None
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        for repeat in range(args.repeats):
            out_dir = work / f"run-{repeat}"
            runs.append(measure_once(train_command(args, prepared, out_dir, vgg), out_dir, args.steps_before, env))
            print(json.dumps(runs[-1]), flush=True)
    result: dict[str, Any] = {"benchmark": "preemption", "machine": machine(),
              "setting": {"dataset": "cityscapes", "variant": args.variant, "ngf": args.ngf, "width": args.width,
                          "height": args.height, "batch_per_process": 1, "vgg_loss": args.vgg,
                          "device": args.device, "threads": args.threads, "signal_delay_s": SIGNAL_DELAY_S,
                          "command": "python -m bench.preemption " + " ".join(argv if argv is not None else
                                                                              sys.argv[1:])},
              "runs": runs,
              "sigterm_to_checkpoint_s": stats([run["sigterm_to_checkpoint_s"] for run in runs]),
              "sigterm_to_exit_s": stats([run["sigterm_to_exit_s"] for run in runs])}
    result["recommended_grace_s"] = recommended_grace_s(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_json(Path(args.out), result)
    return 0


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
