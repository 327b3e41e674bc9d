"""Benchmark on a GPU: training iteration and inference at the paper's resolutions.

    python -m bench.gpu                       # every preset, modes fp32 bf16 bf16-cl bf16-compile
    python -m bench.gpu --presets cityscapes --modes bf16-cl --require-gpu

Rows per preset (its label layout, upsampling and training resolution; batch 1 unless
``--batch``): seconds per full training iteration (G step + D step, VGG19 randomly
initialised) and generator images per second, with ``torch.cuda.max_memory_allocated``.
Modes as in :mod:`bench.train_step`: fp32, bf16 autocast, channels_last, torch.compile.
Without a CUDA device every row is skipped and the JSON says why (``--require-gpu`` makes
that an error instead). Writes ``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench import train_step
from bench.common import RESULTS_DIR, machine, no_gpu_reason, print_table, run_isolated, write_json

# (height, width) the paper trains at (DESIGN.md section 1; Cityscapes 512x256, "more").
PAPER_RESOLUTIONS = {
    "cityscapes": (256, 512),
    "ade20k": (256, 256),
    "celebamask_hq": (512, 512),
    "facades": (1024, 1024),
    "coco_stuff": (256, 256),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PAPER_RESOLUTIONS), choices=list(PAPER_RESOLUTIONS))
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-cl", "bf16-compile"])
    parser.add_argument("--variants", nargs="+", default=["B1", "B6"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA device is present")
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu.json"))
    args = parser.parse_args(argv)
    for mode in args.modes:
        train_step.parse_mode(mode)
    if not torch.cuda.is_available():
        reason = no_gpu_reason()
        print(f"GPU rows skipped: {reason}", file=sys.stderr if args.require_gpu else sys.stdout)
        if args.require_gpu:
            return 2
        path = write_json(args.out, {"benchmark": "gpu", "machine": machine(), "skipped": reason, "rows": []})
        print(f"wrote {path}")
        return 0
    print(f"machine: {json.dumps(machine())}", flush=True)
    rows = []
    for preset in args.presets:
        height, width = PAPER_RESOLUTIONS[preset]
        for mode in args.modes:
            for variant in args.variants:
                spec = {"variant": variant, "mode": mode, **train_step.parse_mode(mode), "allocator": "system",
                        "dataset": preset, "height": height, "width": width, "batch": args.batch, "ngf": 64,
                        "threads": 0, "warmup": args.warmup, "repeats": args.repeats, "device": "cuda"}
                train = run_isolated("bench.train_step", spec)
                infer = run_isolated("bench.inference", spec)
                rows.append({"preset": preset, "size": f"{width}x{height}", "variant": variant, "mode": mode,
                             "iteration_s": train["iteration_s"]["median"],
                             "first_iteration_s": train["first_iteration_s"],
                             "train_peak_mib": train["peak_memory_mib"],
                             "images_per_second": infer["images_per_second"],
                             "inference_peak_mib": infer["peak_memory_mib"], "train": train, "inference": infer})
                print(f"  {preset} {variant} {mode}: {rows[-1]['iteration_s']:.3f} s/iteration, "
                      f"{rows[-1]['images_per_second']:.1f} images/s", flush=True)
    print_table([("preset", "preset"), ("size", "W x H"), ("variant", "variant"), ("mode", "mode"),
                 ("iteration_s", "iteration s"), ("first_iteration_s", "first iteration s"),
                 ("train_peak_mib", "train peak MiB"), ("images_per_second", "inference images/s"),
                 ("inference_peak_mib", "inference peak MiB")], rows)
    path = write_json(args.out, {"benchmark": "gpu", "machine": machine(), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
