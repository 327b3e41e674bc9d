"""Benchmark: generator inference (images per second) and peak memory.

    python -m bench.inference                          # B1 and B6, fp32, batch 1, 256x128, 2 threads
    python -m bench.inference --modes fp32 bf16-cl --batches 1 4 --allocators system reuse
    python -m bench.inference --dataset synthetic --ngf 16 --variants B6 --sizes 256x256 512x512 1024x1024

The generator is built for the preset (Cityscapes layout by default) with random weights, in
eval mode (BatchNorm running statistics) under ``torch.inference_mode`` — what ``dagan
generate`` and the served model run; a timed call makes the one-hot semantic input of the label
map, then the image. Modes as in :mod:`bench.train_step` (``bf16`` = autocast, ``-cl`` =
channels_last, ``-compile`` = torch.compile). Each configuration runs in its own process.
Writes the JSON only with ``--out``.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any, cast

import torch

from bench import common
from bench.common import machine, print_table, stats, timed
from bench.train_step import MODES, model_inputs, parse_mode


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from dagan.config import config_from_dict
    from dagan.generator import build_generator, run_generator
    from dagan.heap import large_blocks_mmapped
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
    inputs = model_inputs(spec, device)
    if spec["compile"]:
        generator = cast(torch.nn.Module, torch.compile(generator))  # torch's stubs type it a plain callable
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    def generate() -> None:
        with torch.inference_mode(), autocast:
            semantic, photo = inputs()
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
        "large_blocks_mmapped": large_blocks_mmapped(),
        "load_before": load_before, "load_after": common.load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.model_parser(__doc__, MODES, repeats=7)
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--sizes", nargs="+", metavar="WxH", help="image sizes (instead of --width, --height)")
    args = parser.parse_args(argv)
    try:
        sizes = [tuple(int(n) for n in size.split("x")) for size in args.sizes or [f"{args.width}x{args.height}"]]
    except ValueError:
        parser.error(f"--sizes {' '.join(args.sizes)}: each size is WIDTHxHEIGHT, e.g. 512x256")
    if (code := common.start(args, measure, parse_mode)) is not None:
        return code
    rows = []
    for allocator, mode, (width, height), batch, variant in itertools.product(
            args.allocators, args.modes, sizes, args.batches, args.variants):
        spec = {"variant": variant, "mode": mode, **parse_mode(mode), "allocator": allocator,
                "batch": batch, **common.grid_spec(args), "width": width, "height": height}
        row = common.run_or_record_failure("bench.inference", spec, args.timeout)
        outcome = f"failed: {row['failed']}" if "failed" in row else f"{row['images_per_second']:.2f} images/s"
        print(f"  {variant} {mode} {width}x{height} batch {batch} {allocator}: {outcome}", flush=True)
        rows.append(row)
    table = [{**row, "seconds": row["batch_s"]["median"], "load": f"{row['load_before']}-{row['load_after']}"}
             for row in rows if "failed" not in row]
    print_table([("variant", "variant"), ("mode", "mode"), ("allocator", "allocator"), ("width", "W"),
                 ("height", "H"), ("batch", "batch"),
                 ("seconds", "s per batch (median)"), ("images_per_second", "images/s"),
                 ("first_call_s", "first call s"), ("peak_memory_mib", "peak MiB"), ("load", "load 1 min")], table)
    common.write_results(args.out, {"benchmark": "inference", "command": common.command_line("bench.inference", argv),
                                    "machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
