"""Benchmark: where one training iteration's time goes, op by op (torch.profiler), against the CPU's peaks.

    python -m bench.profile --mode fp32                # B6, Cityscapes layout, 256x128, ngf 64, batch 1
    python -m bench.profile --mode bf16-cl --out bench/results/profile_bf16-cl.json

One process: the iteration of :mod:`bench.train_step` (semantic input, G step, D step; heap reuse,
2 threads), ``--warmup`` untimed iterations, then ``--iterations`` profiled ones. The ops are
grouped as a reader needs them:

* a convolution, forward (``aten::convolution``) or backward (``aten::convolution_backward``), with
  everything it runs inside (oneDNN's kernel and its layout reorders), one row per layer shape:
  its FLOPs (2 x MACs; the backward's input and weight gradients as asked) and the bytes it must
  move at least (input, weight and output once each);
* a matrix multiply outside a convolution (``mm``, ``addmm``, ``bmm``: the GEMM path of
  :mod:`dagan.nn.conv`, spectral norm): FLOPs and bytes from its shapes;
* every other op by name (elementwise, norms, copies, Adam): the bytes of its tensor arguments and
  of an output as large as its largest one.

Each row gets its time per iteration, its share of the iteration, its compute rate against a large
matrix multiply of the same precision measured in the same process (the AMX / AVX-512 peak that
oneDNN and MKL reach here) and its memory traffic against a large copy. Bytes are a lower bound
(no re-reads), so the bandwidth fractions are too. Writes the JSON only with ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from typing import Any

import torch

from bench import common, train_step

CONVOLUTIONS = ("aten::convolution", "aten::convolution_backward")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")
ELEMENT_BYTES = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "long int": 8, "int": 4,
                 "bool": 1, "unsigned char": 1}


def peaks(precision: str, size: int = 2048, copy_mib: int = 256) -> dict[str, Any]:
    """A ``size``^3 matrix multiply in ``precision`` (GFLOP/s) and a ``copy_mib`` MiB copy (GB/s, read + write)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    matmul = min(common.timed(lambda: a @ b, warmup=2, repeats=7))
    source = torch.randn(copy_mib * 2**20 // 4)
    target = torch.empty_like(source)
    copy = min(common.timed(lambda: target.copy_(source), warmup=2, repeats=7))
    return {"matmul_size": size, "matmul_gflops": 2 * size**3 / matmul / 1e9, "copy_mib": copy_mib,
            "copy_gb_per_s": 2 * source.numel() * 4 / copy / 1e9}


def tensor_bytes(event: Any) -> list[int]:
    return [math.prod(shape) * ELEMENT_BYTES[dtype] for shape, dtype in zip(event.input_shapes, event.input_dtypes,
                                                                             strict=False)
            if dtype in ELEMENT_BYTES and shape]


def convolution_row(event: Any) -> tuple[str, float, float]:
    """(label, FLOPs, bytes) of an aten::convolution or aten::convolution_backward event."""
    shapes, concrete = event.input_shapes, event.concrete_inputs
    if event.name == "aten::convolution":
        x, weight = shapes[0], shapes[1]
        stride, padding, dilation, groups = concrete[3], concrete[4], concrete[5], concrete[8]
        out_hw = [(x[2 + i] + 2 * padding[i] - dilation[i] * (weight[2 + i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
        out = [x[0], weight[0], *out_hw]
        passes, direction = 1, "forward"
    else:
        out, x, weight = shapes[0], shapes[1], shapes[2]
        groups, mask = concrete[9], concrete[10]
        passes, direction = int(mask[0]) + int(mask[1]), "backward"
    flops = 2 * math.prod(out) * math.prod(weight[1:]) * passes
    element = ELEMENT_BYTES.get(event.input_dtypes[0], 4)
    moved = (math.prod(x) + math.prod(weight) + math.prod(out)) * element * (1 if direction == "forward" else 2)
    kernel = "x".join(map(str, weight[2:]))
    label = (f"conv {kernel} {x[1]}->{weight[0] * (groups or 1) if direction == 'forward' else out[1]} at "
             f"{out[2]}x{out[3]} (batch {out[0]}) {direction}")
    return label, flops, moved


def matmul_row(event: Any) -> tuple[str, float, float]:
    shapes = [shape for shape in event.input_shapes if len(shape) >= 2]
    a, b = shapes[-2], shapes[-1]
    batch = a[0] if len(a) == 3 else 1
    m, k, n = a[-2], a[-1], b[-1]
    element = ELEMENT_BYTES.get(event.input_dtypes[-2] if len(event.input_dtypes) > 1 else "float", 4)
    return f"{event.name.removeprefix('aten::')} {m}x{k} @ {k}x{n}" + (f" (x{batch})" if batch > 1 else ""), \
        2.0 * batch * m * n * k, float(batch * (m * k + k * n + m * n) * element)


def inside(event: Any, names: tuple[str, ...]) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names:
            return True
        parent = parent.cpu_parent
    return False


def op_rows(events: Any, iterations: int, iteration_s: float, peak: dict[str, Any]) -> list[dict[str, Any]]:
    """The grouped rows, largest time first (see the module docstring)."""
    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds": 0.0, "calls": 0, "flops": 0.0, "bytes": 0.0})
    for event in events:
        if inside(event, CONVOLUTIONS):
            continue
        if event.name in CONVOLUTIONS:
            label, flops, moved = convolution_row(event)
            seconds = event.cpu_time_total / 1e6
        elif event.name in MATMULS:
            label, flops, moved = matmul_row(event)
            seconds = event.self_cpu_time_total / 1e6
        elif event.self_cpu_time_total > 0 and not inside(event, MATMULS):
            sizes = tensor_bytes(event)
            label, flops, moved = event.name.removeprefix("aten::"), 0.0, float(sum(sizes) + max(sizes, default=0))
            seconds = event.self_cpu_time_total / 1e6
        else:
            continue
        group = groups[label]
        group["seconds"] += seconds
        group["calls"] += 1
        group["flops"] += flops
        group["bytes"] += moved
    rows = []
    for label, group in groups.items():
        seconds = group["seconds"] / iterations
        row: dict[str, Any] = {"name": label, "calls": round(group["calls"] / iterations), "self_s": seconds,
               "share": seconds / iteration_s, "gflops": group["flops"] / iterations / 1e9,
               "gb": group["bytes"] / iterations / 1e9}
        if seconds > 0 and group["flops"]:
            row["gflops_per_s"] = row["gflops"] / seconds
            row["fraction_of_peak_flops"] = row["gflops_per_s"] / peak["matmul_gflops"]
        if seconds > 0 and group["bytes"]:
            row["gb_per_s"] = row["gb"] / seconds
            row["fraction_of_peak_bandwidth"] = row["gb_per_s"] / peak["copy_gb_per_s"]
        rows.append(row)
    return sorted(rows, key=lambda row: -row["self_s"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from dagan.train.state import LossWeights
    from dagan.train.steps import d_step, g_step

    spec = {"variant": args.variant, "mode": args.mode, **train_step.parse_mode(args.mode), "allocator": "reuse",
            "batch": 1, "dataset": "cityscapes", "height": args.height, "width": args.width, "ngf": args.ngf,
            "threads": args.threads, "device": "cpu"}
    common.apply_allocator("reuse")
    torch.set_num_threads(args.threads)
    peak = peaks(spec["precision"])
    config, state, inputs, _ = train_step.build(spec)
    state.weights = LossWeights(gan=config.loss.lambda_gan, feat=config.loss.lambda_feat,
                                vgg=train_step.PERCEPTUAL_WEIGHT, att=config.loss.lambda_att)

    def iteration() -> float:
        start = time.perf_counter()
        semantic, real = inputs()
        g_step(state, semantic, real)
        d_step(state, semantic, real)
        return time.perf_counter() - start

    load_before = common.load_average()
    for _ in range(args.warmup):
        iteration()
    unprofiled = [iteration() for _ in range(args.iterations)]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        profiled = [iteration() for _ in range(args.iterations)]
    iteration_s = sum(profiled) / args.iterations
    rows = op_rows(profiler.events(), args.iterations, iteration_s, peak)
    return {"benchmark": "profile", "spec": spec, "peaks": peak, "iteration_s": iteration_s,
            "unprofiled_iteration_s": common.stats(unprofiled), "ops": rows,
            "ops_share_total": sum(row["share"] for row in rows),
            "load_before": load_before, "load_after": common.load_average()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="B6", help=common.MODELS_HELP)
    parser.add_argument("--mode", default="fp32", help=f"one of {', '.join(train_step.MODES)} (not -compile)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2, help="profiled iterations (the table is per iteration)")
    parser.add_argument("--rows", type=int, default=25, help="rows printed")
    common.add_out_argument(parser)
    args = parser.parse_args(argv)
    if train_step.parse_mode(args.mode)["compile"]:
        parser.error("--mode: a compiled iteration runs generated kernels that the op table cannot attribute")
    print(f"machine: {common.machine()}", flush=True)
    result = {**measure(args), "command": common.command_line("bench.profile", argv), "machine": common.machine()}
    print(f"iteration {result['iteration_s']:.3f} s profiled, {result['unprofiled_iteration_s']['median']:.3f} s "
          f"without the profiler; the rows cover {result['ops_share_total']:.0%} of it")
    common.print_table([("name", "op"), ("calls", "calls"), ("self_s", "s"), ("share", "share"),
                        ("gflops_per_s", "GFLOP/s"), ("fraction_of_peak_flops", "of peak"), ("gb_per_s", "GB/s"),
                        ("fraction_of_peak_bandwidth", "of peak")], result["ops"][:args.rows])
    common.write_results(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
