"""Benchmark: one full training iteration (G step + D step with every loss), as the loop runs it.

    python -m bench.train_step                      # B1 and B6, fp32, Cityscapes layout, 256x128, 2 threads
    python -m bench.train_step --modes fp32 fp32-cl bf16 bf16-cl --repeats 7
    python -m bench.train_step --modes fp32-compile # torch.compile (slow to compile on 2 cores)
    python -m bench.train_step --allocators system reuse  # glibc defaults vs heap reuse (train.heap_reuse)
    python -m bench.train_step --variants B6 ccfpse --out bench/results/train_step_ccfpse.json  # CC-FPSE beside DAGAN

An iteration is what the training loop does with one batch: the one-hot semantic input of the
label map (:func:`dagan.labels.semantic_input`), :func:`dagan.train.g_step` (hinge + feature
matching + VGG19 perceptual) then :func:`dagan.train.d_step`, with the state
:func:`dagan.train.state.build_state` builds for the config (TTUR Adam, autocast, channels_last).
The VGG19 is randomly initialised and injected (timing needs no ImageNet weights). Modes:
``fp32`` is exact float32 (``train.amp=off``); ``-cl`` adds train.channels_last; ``bf16`` is
train.amp=bf16; ``-compile`` wraps G, D and VGG in torch.compile (the first iteration, which
compiles, is reported apart). Every configuration runs in its own process (peak memory is its
own). Prints a Markdown table; writes the JSON only with ``--out`` (bench/results/ holds the
committed results behind docs/PERFORMANCE.md). The comparison with the official code is
:mod:`bench.official`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, cast

import torch

from bench import common
from bench.common import load_average, machine, print_table, stats

TARGET_ATTENTION_OVERHEAD = 0.03  # B6 at most 3% over B1
MODES = ("fp32", "fp32-cl", "bf16", "bf16-cl", "fp32-compile", "bf16-compile", "bf16-cl-compile")
PERCEPTUAL_WEIGHT = 10.0  # lambda_p of the paper


def parse_mode(mode: str) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    parts = mode.split("-")
    return {"precision": parts[0], "channels_last": "cl" in parts, "compile": "compile" in parts}


def synthetic_labels(preset_name: str, batch: int, height: int, width: int, seed: int = 0):
    """(label ids (B, H, W), instance ids or None, real image in [-1, 1]) in the preset's label layout:
    16x16-pixel blocks of random classes, instances numbered within them."""
    from dagan.presets import get_preset

    preset = get_preset(preset_name)
    generator = torch.Generator().manual_seed(seed)
    num_label_channels = preset.num_classes + int(preset.contain_dontcare_label)
    blocks = torch.randint(0, num_label_channels, (batch, height // 16, width // 16), generator=generator)
    label = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    instance = label * 1000 + torch.randint(0, 3, label.shape, generator=generator) if preset.has_instance else None
    real = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    return label, instance, real


def num_label_channels(preset_name: str) -> int:
    from dagan.presets import get_preset

    preset = get_preset(preset_name)
    return preset.num_classes + int(preset.contain_dontcare_label)


def synthetic_batch(preset_name: str, batch: int, height: int, width: int, device: torch.device, seed: int = 0):
    """(semantic input, real image) of :func:`synthetic_labels`."""
    from dagan.labels import semantic_input

    label, instance, real = synthetic_labels(preset_name, batch, height, width, seed)
    semantic = semantic_input(label, num_label_channels(preset_name), instance)
    return semantic.to(device), real.to(device)


def build(spec: dict[str, Any]):
    """The training state, injected random VGG19 and inputs for one benchmark configuration."""
    from torchvision.models import vgg19

    from dagan.config import config_from_dict
    from dagan.distributed import setup
    from dagan.perceptual import VGG19Features
    from dagan.presets import get_preset
    from dagan.train.state import build_state

    config = config_from_dict({
        "dataset": {"name": spec["dataset"], "crop_size": spec["width"],
                    "aspect_ratio": spec["width"] / spec["height"]},  # the benchmark's size (CA2SIS is built for one)
        "model": {**common.model_settings(spec["variant"]), "ngf": spec["ngf"]},
        "loss": {"lambda_vgg": 0.0},  # build_state would look for ImageNet weights; a random VGG19 is injected
        "train": {"device": spec["device"], "amp": "bf16" if spec["precision"] == "bf16" else "off",
                  "channels_last": spec["channels_last"], "batch_size": spec["batch"]},
    }, "bench").resolved()
    context = setup(config.train.device)
    state = build_state(config, get_preset(spec["dataset"]).semantic_nc, context)
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    vgg = VGG19Features(vgg19(weights=None).features).for_autocast(state.precision.dtype)  # as build_state does
    state.vgg = vgg.to(context.device).to(memory_format=memory_format)
    inputs = model_inputs(spec, context.device)
    if spec["compile"]:
        # torch.compile returns an OptimizedModule (a Module); its stubs type it a plain callable
        state.generator = cast(torch.nn.Module, torch.compile(state.generator))
        state.discriminator = cast(torch.nn.Module, torch.compile(state.discriminator))
        state.vgg = cast(torch.nn.Module, torch.compile(state.vgg))
    return config, state, inputs, context.device


def model_inputs(spec: dict[str, Any], device: torch.device) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """What the loop does with each batch (:meth:`dagan.train.batches.Batches.model_inputs`): labels to the
    device, the one-hot semantic input with instance edges, both in the run's memory format."""
    from dagan.labels import semantic_input

    label, instance, real = synthetic_labels(spec["dataset"], spec["batch"], spec["height"], spec["width"])
    channels = num_label_channels(spec["dataset"])
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format

    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        semantic = semantic_input(label.to(device), channels, None if instance is None else instance.to(device))
        return semantic.contiguous(memory_format=memory_format), real.to(device).contiguous(memory_format=memory_format)

    return inputs


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time ``spec["repeats"]`` iterations after ``spec["warmup"]``; also G forward+backward alone."""
    from dagan.generator import run_generator
    from dagan.heap import large_blocks_mmapped
    from dagan.train.state import LossWeights
    from dagan.train.steps import d_step, g_step

    common.apply_allocator(spec["allocator"])
    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
    config, state, inputs, device = build(spec)
    state.weights = LossWeights(gan=config.loss.lambda_gan, feat=config.loss.lambda_feat, vgg=PERCEPTUAL_WEIGHT,
                                att=config.loss.lambda_att)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def iteration() -> tuple[float, float]:
        start = time.perf_counter()
        semantic, real = inputs()
        g_step(state, semantic, real)
        sync()
        middle = time.perf_counter()
        d_step(state, semantic, real)
        sync()
        return middle - start, time.perf_counter() - middle

    load_before = load_average()
    first = iteration()  # includes one-time costs (oneDNN primitive creation, compilation)
    for _ in range(spec["warmup"] - 1):
        iteration()
    flops = None
    if spec.get("count_flops") and not spec["compile"]:  # one more (untimed) iteration, counted
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            iteration()
        flops = counter.get_total_flops()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    g_seconds, d_seconds = zip(*(iteration() for _ in range(spec["repeats"])), strict=True)
    total = [g + d for g, d in zip(g_seconds, d_seconds, strict=True)]

    semantic, real = inputs()

    def generator_forward_backward() -> float:
        start = time.perf_counter()
        state.generator.zero_grad(set_to_none=True)
        with state.precision.autocast():
            image = run_generator(state.generator, semantic, real)
        image.float().sum().backward()
        sync()
        return time.perf_counter() - start

    generator_seconds = None
    if spec.get("generator_forward_backward", True):
        generator_forward_backward()
        generator_seconds = stats([generator_forward_backward() for _ in range(spec["repeats"])])
    return {
        **spec,
        "iteration_s": stats(total), "g_step_s": stats(g_seconds), "d_step_s": stats(d_seconds),
        "generator_forward_backward_s": generator_seconds, "first_iteration_s": sum(first),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else common.peak_rss_mib(),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "process ru_maxrss",
        "large_blocks_mmapped": large_blocks_mmapped(),
        "generator_parameters": sum(p.numel() for p in state.generator.parameters()),
        "flops_per_iteration": flops,
        "load_before": load_before, "load_after": load_average(),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode/allocator: B6 over B1 (the attention's cost, target at most 3%) and other models over B6."""
    summary = {}
    for mode in dict.fromkeys(f"{row['mode']}/{row['allocator']}" for row in rows):
        times = {row["variant"]: row["iteration_s"]["median"] for row in rows
                 if f"{row['mode']}/{row['allocator']}" == mode}
        entry: dict[str, Any] = {}
        if "B1" in times and "B6" in times:
            entry["b6_over_b1"] = times["B6"] / times["B1"]
            entry["attention_overhead_ok"] = entry["b6_over_b1"] <= 1 + TARGET_ATTENTION_OVERHEAD
        for variant, seconds in times.items():
            if variant != "B6" and "B6" in times and not (variant == "B1" and "b6_over_b1" in entry):
                entry[f"{variant}_over_B6"] = seconds / times["B6"]  # CC-FPSE, SPAP, mixed pairs beside DAGAN
        summary[mode] = entry
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = common.model_parser(__doc__, MODES, repeats=5)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.worker and args.warmup < 1:
        parser.error("--warmup must be at least 1")
    if (code := common.start(args, measure, parse_mode)) is not None:
        return code
    rows = []
    for allocator in args.allocators:
        for mode in args.modes:
            for variant in args.variants:
                spec = {"variant": variant, "mode": mode, **parse_mode(mode), "allocator": allocator,
                        "batch": args.batch, **common.grid_spec(args)}
                row = common.run_or_record_failure("bench.train_step", spec, args.timeout)
                outcome = f"failed: {row['failed']}" if "failed" in row else \
                    f"{row['iteration_s']['median']:.3f} s/iteration (load {row['load_before']} -> {row['load_after']})"
                print(f"  {variant} {mode} {allocator}: {outcome}", flush=True)
                rows.append(row)
    measured = [row for row in rows if "failed" not in row]
    table = [{**row, "iteration": row["iteration_s"]["median"], "min": row["iteration_s"]["min"],
              "g": row["g_step_s"]["median"], "d": row["d_step_s"]["median"],
              "gfb": (row["generator_forward_backward_s"] or {}).get("median"),
              "load": f"{row['load_before']}-{row['load_after']}"} for row in measured]
    print_table([("variant", "variant"), ("mode", "mode"), ("allocator", "allocator"),
                 ("iteration", "iteration s (median)"), ("min", "min s"),
                 ("g", "G step s"), ("d", "D step s"), ("gfb", "G fwd+bwd s"),
                 ("first_iteration_s", "first iteration s"),
                 ("peak_memory_mib", "peak MiB"), ("load", "load 1 min")], table)
    summary = summarise(measured)
    for mode, entry in summary.items():
        print(f"{mode}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    common.write_results(args.out, {"benchmark": "train_step", "command": common.command_line("bench.train_step", argv),
                                    "machine": machine(), "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
