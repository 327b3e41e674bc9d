"""Benchmark: generator inference (images per second) and peak memory.

    python -m bench.inference                          # B1 and B6, fp32, batch 1, 256x128, 2 threads
    python -m bench.inference --modes fp32 bf16-cl --batches 1 4 --allocators system reuse

The generator is built for the preset (Cityscapes layout by default) with random weights, in
eval mode (BatchNorm running statistics) under ``torch.inference_mode`` — what ``dagan
generate`` and the served model run. Modes as in :mod:`bench.train_step` (``bf16`` =
autocast, ``-cl`` = channels_last, ``-compile`` = torch.compile). Each configuration runs
in its own process. Writes ``bench/results/inference.json`` (``--out``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, cast

import torch

from bench import common
from bench.common import RESULTS_DIR, machine, print_table, run_isolated, stats, timed
from bench.train_step import MODES, parse_mode, synthetic_batch
from components.outputs import write_json


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from dagan.config import config_from_dict
    from dagan.generator import build_generator, run_generator
    from dagan.presets import get_preset

    common.apply_allocator(spec["allocator"])
    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    config = config_from_dict({"dataset": {"name": spec["dataset"], "crop_size": spec["width"],
                                           "aspect_ratio": spec["width"] / spec["height"]},
                               "model": {**common.model_settings(spec["variant"]), "ngf": spec["ngf"]}},
                              "bench").resolved()
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    generator = build_generator(config, get_preset(spec["dataset"]).semantic_nc).eval()
    generator = generator.to(device).to(memory_format=memory_format)
    semantic, photo = synthetic_batch(spec["dataset"], spec["batch"], spec["height"], spec["width"], device)
    semantic = semantic.contiguous(memory_format=memory_format)
    if spec["compile"]:
        generator = cast(torch.nn.Module, torch.compile(generator))  # torch's stubs type it a plain callable
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    def generate() -> None:
        with torch.inference_mode(), autocast:
            run_generator(generator, semantic, photo)

    load_before = common.load_average()
    start = time.perf_counter()
    generate()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter() - start
    seconds = timed(generate, spec["warmup"], spec["repeats"], synchronize=cuda)
    summary = stats(seconds)
    return {
        **spec, "batch_s": summary, "images_per_second": spec["batch"] / summary["median"], "first_call_s": first,
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else common.peak_rss_mib(),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process ru_maxrss",
        "load_before": load_before, "load_after": common.load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.model_parser(__doc__, MODES, repeats=7, out=RESULTS_DIR / "inference.json")
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    args = parser.parse_args(argv)
    if (code := common.start(args, measure, parse_mode)) is not None:
        return code
    rows = []
    for allocator in args.allocators:
        for mode in args.modes:
            for batch in args.batches:
                for variant in args.variants:
                    spec = {"variant": variant, "mode": mode, **parse_mode(mode), "allocator": allocator,
                            "batch": batch, **common.grid_spec(args)}
                    row = run_isolated("bench.inference", spec)
                    print(f"  {variant} {mode} batch {batch} {allocator}: {row['images_per_second']:.2f} images/s",
                          flush=True)
                    rows.append(row)
    table = [{**row, "seconds": row["batch_s"]["median"], "load": f"{row['load_before']}-{row['load_after']}"}
             for row in rows]
    print_table([("variant", "variant"), ("mode", "mode"), ("allocator", "allocator"), ("batch", "batch"),
                 ("seconds", "s per batch (median)"), ("images_per_second", "images/s"),
                 ("first_call_s", "first call s"), ("peak_memory_mib", "peak MiB"), ("load", "load 1 min")], table)
    path = write_json(args.out, {"benchmark": "inference", "machine": machine(), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
