"""Benchmark on a GPU: training iteration and inference at the paper's resolutions.

    python -m bench.gpu                       # every preset, modes fp32 bf16 bf16-cl bf16-compile
    python -m bench.gpu --presets cityscapes --modes bf16-cl --batches 4 16 32 --require-gpu

Rows per preset (its label layout, upsampling and training resolution) and batch (``--batches``,
per GPU; the paper trains with 4 per GPU): seconds per full training iteration (G step + D
step, VGG19 randomly initialised), images per second of training and of the generator alone,
``torch.cuda.max_memory_allocated``, and the FLOPs of one iteration (``torch.utils.flop_counter``,
not for compiled rows) as achieved TFLOP/s and as a fraction of the GPU's bf16 matrix-multiply
rate measured at the start (an 8192^3 product). A configuration that does not fit is a row
saying so. Modes as in :mod:`bench.train_step`: fp32 (cuDNN convolutions use TF32), bf16
autocast, channels_last, torch.compile. Without a CUDA device every row is skipped and the JSON
says why (``--require-gpu`` makes that an error instead). Writes the JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from bench import common, train_step
from bench.common import (
    MODELS_HELP,
    machine,
    model_settings,
    no_gpu_reason,
    print_table,
    run_isolated,
    timed,
)

# (height, width) the paper trains at (docs/MODEL.md, "Per-dataset settings"; Cityscapes 512x256, "more").
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
    parser.add_argument("--variants", nargs="+", default=["B1", "B6"], help=MODELS_HELP)
    parser.add_argument("--batches", nargs="+", type=int, default=[4], help="batch sizes per GPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--require-gpu", action="store_true", help="exit 2 when no CUDA device is present")
    common.add_out_argument(parser)
    args = parser.parse_args(argv)
    for mode in args.modes:
        train_step.parse_mode(mode)
    for name in args.variants:
        model_settings(name)
    if not torch.cuda.is_available():
        reason = no_gpu_reason()
        print(f"GPU rows skipped: {reason}", file=sys.stderr if args.require_gpu else sys.stdout)
        if args.require_gpu:
            return 2
        common.write_results(args.out, {"benchmark": "gpu", "command": common.command_line("bench.gpu", argv),
                                        "machine": machine(), "skipped": reason, "rows": []})
        return 0
    print(f"machine: {json.dumps(machine())}", flush=True)
    peak = matmul_peak_tflops()
    print(f"bf16 8192^3 matrix multiply: {peak:.0f} TFLOP/s", flush=True)
    rows = []
    for preset in args.presets:
        height, width = PAPER_RESOLUTIONS[preset]
        for batch in args.batches:
            for mode in args.modes:
                for variant in args.variants:
                    spec = {"variant": variant, "mode": mode, **train_step.parse_mode(mode), "allocator": "system",
                            "dataset": preset, "height": height, "width": width, "batch": batch, "ngf": 64,
                            "threads": 0, "warmup": args.warmup, "repeats": args.repeats, "device": "cuda",
                            "count_flops": True}
                    rows.append(measure_row(spec, peak))
                    print(f"  {preset} b{batch} {variant} {mode}: {rows[-1]['summary']}", flush=True)
    print_table([("preset", "preset"), ("size", "W x H"), ("batch", "batch"), ("variant", "variant"),
                 ("mode", "mode"), ("iteration_s", "iteration s"), ("train_images_per_second", "train images/s"),
                 ("tflops", "TFLOP/s"), ("fraction_of_peak", "of bf16 peak"),
                 ("first_iteration_s", "first iteration s"), ("train_peak_mib", "train peak MiB"),
                 ("images_per_second", "inference images/s"), ("inference_peak_mib", "inference peak MiB")],
                [row for row in rows if "iteration_s" in row])
    common.write_results(args.out, {"benchmark": "gpu", "command": common.command_line("bench.gpu", argv),
                                    "machine": machine(), "bf16_matmul_tflops": peak, "rows": rows})
    return 0


def matmul_peak_tflops(size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix-multiply rate of this GPU (the ceiling the rows are compared with)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, warmup=3, repeats=repeats, synchronize=True)
    return 2 * size**3 / statistics.median(seconds) / 1e12


def measure_row(spec: dict, peak_tflops: float) -> dict:
    """Train and inference measurements of one configuration (each in its own process)."""
    row = {"preset": spec["dataset"], "size": f"{spec['width']}x{spec['height']}", "batch": spec["batch"],
           "variant": spec["variant"], "mode": spec["mode"]}
    try:
        train = run_isolated("bench.train_step", spec)
        infer = run_isolated("bench.inference", spec)
    except RuntimeError as err:  # out of memory or another failure: a row that says so
        return {**row, "error": str(err)[-500:], "summary": f"failed: {str(err)[-200:]}"}
    seconds = train["iteration_s"]["median"]
    flops = train.get("flops_per_iteration")
    tflops = flops / seconds / 1e12 if flops else None
    return {**row, "iteration_s": seconds, "first_iteration_s": train["first_iteration_s"],
            "train_images_per_second": spec["batch"] / seconds, "tflops": tflops,
            "fraction_of_peak": tflops / peak_tflops if tflops else None, "train_peak_mib": train["peak_memory_mib"],
            "images_per_second": infer["images_per_second"], "inference_peak_mib": infer["peak_memory_mib"],
            "train": train, "inference": infer,
            "summary": f"{seconds:.3f} s/iteration, {spec['batch'] / seconds:.1f} train images/s, "
                       f"{infer['images_per_second']:.1f} inference images/s"
                       + (f", {tflops:.0f} TFLOP/s ({tflops / peak_tflops:.0%} of bf16 peak)" if tflops else "")}


if __name__ == "__main__":
    sys.exit(main())
