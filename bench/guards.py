"""Benchmark: what the run's safety checks cost (docs/PERFORMANCE.md, "Guards").

    python -m bench.guards                                   # params.yaml's model, 256 MiB of shard data
    python -m bench.guards --out bench/results/guards.json

* Finiteness of the weights after every optimiser step (:func:`dagan.finite.all_finite` over
  :func:`dagan.finite.module_tensors` of G and D, one fused 2-norm), for the model params.yaml
  trains, against one training step of that model at its batch size, precision and size (the
  synthetic preset's by default; VGG off as there), both timed in this process.
* Shard verification (:func:`dagan.data.shards.verify_shards`: size, then SHA-256), in MB/s over a
  file of random bytes written to a temporary folder (read back from the page cache, as a
  Dataset right after ``prepare`` or ``dvc pull`` reads it).

Writes the JSON only with ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import common


def finiteness(params: str, overrides: list[str], repeats: int) -> dict[str, Any]:
    """Seconds of the weights' finiteness check and of one training step of the params file's model."""
    from components.settings import load_step_config
    from dagan.config import resolved_value
    from dagan.distributed import setup
    from dagan.finite import all_finite, module_tensors
    from dagan.labels import semantic_input
    from dagan.presets import get_preset
    from dagan.train.state import build_state
    from dagan.train.steps import d_step, g_step

    config = load_step_config(params, overrides)
    preset = get_preset(config.dataset.name)
    state = build_state(config, preset.semantic_nc, setup("cpu"))
    tensors = module_tensors(state.generator, state.discriminator)
    check = common.timed(lambda: all_finite(tensors), warmup=2, repeats=repeats)
    train = config.train
    batch = resolved_value(train.batch_size)
    width = resolved_value(config.dataset.crop_size)
    height = round(width / resolved_value(config.dataset.aspect_ratio))
    generator = torch.Generator().manual_seed(0)
    channels = preset.num_classes + int(preset.contain_dontcare_label)
    label = torch.randint(0, channels, (batch, height, width), generator=generator)
    semantic = semantic_input(label, channels, label if preset.has_instance else None)
    real = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    if train.channels_last:
        semantic, real = (t.contiguous(memory_format=torch.channels_last) for t in (semantic, real))

    def step() -> None:
        g_step(state, semantic, real)
        d_step(state, semantic, real)

    step_seconds = common.timed(step, warmup=2, repeats=repeats)
    check_s, step_s = common.stats(check), common.stats(step_seconds)
    return {"params": params, "overrides": overrides, "dataset": config.dataset.name,
            "ngf": config.model.ngf, "variant": config.model.variant, "amp": train.amp,
            "channels_last": train.channels_last, "batch": batch,
            "size": f"{width}x{height}",
            "weights": sum(t.numel() for t in tensors), "tensors": len(tensors),
            "check_s": check_s, "check_ms": check_s["median"] * 1e3, "step_s": step_s,
            "check_over_step": check_s["median"] / step_s["median"]}


def hashing(megabytes: int, repeats: int) -> dict[str, Any]:
    """MB/s of verify_shards on one shard of ``megabytes`` MiB."""
    from dagan.data.manifest import Shard
    from dagan.data.shards import sha256_of, verify_shards

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shard.parquet"
        with path.open("wb") as handle:
            for _ in range(megabytes):
                handle.write(os.urandom(2**20))
        shard = Shard(path=path.name, split="train", rows=0, sha256=sha256_of(path), size=path.stat().st_size)
        seconds = common.timed(lambda: verify_shards(folder, [shard]), warmup=1, repeats=repeats)
    summary = common.stats(seconds)
    return {"megabytes": megabytes * 2**20 / 1e6, "verify_s": summary,
            "mb_per_second": megabytes * 2**20 / 1e6 / summary["median"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=256, help="MiB of shard data hashed")
    common.add_out_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    common.apply_allocator("reuse")  # as training does (train.heap_reuse)
    load_before = common.load_average()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    result = {"benchmark": "guards", "command": common.command_line("bench.guards", argv), "started": started,
              "machine": common.machine(), "finiteness": finiteness(args.params, args.overrides, args.repeats),
              "hashing": hashing(args.megabytes, max(3, args.repeats // 4)), "threads": args.threads}
    result.update(load_before=load_before, load_after=common.load_average())
    check, hashed = result["finiteness"], result["hashing"]
    print(f"finiteness check of {check['weights']:,} weights: {check['check_s']['median'] * 1e3:.1f} ms, "
          f"{check['check_over_step']:.1%} of a training step ({check['step_s']['median']:.3f} s)")
    print(f"shard verification: {hashed['mb_per_second']:.0f} MB/s")
    common.write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
