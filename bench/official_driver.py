"""The worker of :mod:`bench.official` that runs the official DAGAN or SPADE code, as its train.py / test.py do.

It runs in a process of its own, in the official checkout's code folder, with that folder first on
``sys.path`` (the official code imports its packages ``options``, ``models``, ``trainers``,
``util``, ``data`` by those names). Nothing is copied from the checkout and no file of it is
changed; three process-local shims let it run on a CPU, without downloads or extra packages:

* ``torchvision.models.vgg19`` builds the network with random weights (their VGG19 asks for the
  ImageNet weights with ``pretrained=True``; timing needs none, and ours is random too);
* ``torch.nn.Module.cuda`` returns the module unchanged (their VGGLoss moves the VGG19 to a GPU
  whatever ``--gpu_ids`` says; everything else follows ``--gpu_ids -1``);
* ``dill``, when it is not installed, is the standard ``pickle`` (their util.py imports it as
  ``pickle`` for helpers that training and test.py's model path do not call).

Options are the ones of the official scripts for Cityscapes (``--dataset_mode cityscapes``) with
the benchmark's size, ngf and batch, on the CPU (``--gpu_ids -1``) and with checkpoints in a
temporary folder. Training times ``Pix2PixTrainer.run_generator_one_step`` then
``run_discriminator_one_step`` on one batch (their loop's body, without its logging);
inference times ``Pix2PixModel(opt).eval()`` called as ``model(data, mode='inference')`` as
test.py does, after the generator was saved where test.py loads it from.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench import common

CODES = {"DAGAN": "B6", "SPADE": "B1"}  # official code -> our variant that computes the same


@contextlib.contextmanager
def official_code(code_dir: str) -> Iterator[None]:
    """The official packages importable, their prints on stderr (stdout carries the worker's JSON), shims on."""
    import pickle

    import torchvision

    sys.path.insert(0, code_dir)
    if importlib.util.find_spec("dill") is None:
        sys.modules["dill"] = pickle
    build_vgg19 = torchvision.models.vgg19
    torchvision.models.vgg19 = lambda *args, **kwargs: build_vgg19(weights=None)
    torch.nn.Module.cuda = lambda self, device=None: self  # type: ignore[method-assign]
    with contextlib.redirect_stdout(sys.stderr):
        yield


def official_options(script: str, spec: dict[str, Any], checkpoints: str):
    """The official option parser's result for ``script`` ("train" or "test") at the spec's size."""
    arguments = ["--name", "bench", "--dataset_mode", spec["dataset"], "--gpu_ids", "-1",
                 "--checkpoints_dir", checkpoints, "--batchSize", str(spec["batch"]),
                 "--load_size", str(spec["width"]), "--crop_size", str(spec["width"]),
                 "--aspect_ratio", str(spec["width"] / spec["height"]), "--ngf", str(spec["ngf"])]
    sys.argv = [f"{script}.py", *arguments]
    options = official(f"options.{script}_options", f"{script.title()}Options")
    return options().parse()


def official(module: str, name: str) -> Any:
    """``name`` from the official code's ``module`` (importable inside :func:`official_code`)."""
    return getattr(importlib.import_module(module), name)


def official_batch(spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """A fresh data dict as their dataset yields it: float label and instance maps (B, 1, H, W), the image."""
    from bench.train_step import synthetic_labels

    label, instance, real = synthetic_labels(spec["dataset"], spec["batch"], spec["height"], spec["width"])
    if instance is None:
        raise ValueError(f"dataset {spec['dataset']}: bench.official runs the official Cityscapes layout")

    def batch() -> dict[str, Any]:
        return {"label": label[:, None].float(), "instance": instance[:, None].float(), "image": real.clone(),
                "path": [f"bench_{index}.png" for index in range(spec["batch"])]}

    return batch


def measure_training(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds of the official trainer's G step and D step over ``repeats`` iterations after ``warmup``."""
    torch.set_num_threads(spec["threads"])
    with official_code(spec["code_dir"]), tempfile.TemporaryDirectory() as checkpoints:
        opt = official_options("train", spec, checkpoints)
        trainer = official("trainers.pix2pix_trainer", "Pix2PixTrainer")(opt)
        batch = official_batch(spec)

        def iteration() -> tuple[float, float]:
            data = batch()
            start = time.perf_counter()
            trainer.run_generator_one_step(data)
            middle = time.perf_counter()
            trainer.run_discriminator_one_step(data)
            return middle - start, time.perf_counter() - middle

        load_before = common.load_average()
        first = iteration()
        for _ in range(spec["warmup"] - 1):
            iteration()
        g_seconds, d_seconds = zip(*(iteration() for _ in range(spec["repeats"])), strict=True)
        losses = {name: float(value) for name, value in trainer.get_latest_losses().items()}
    return {**spec, "iteration_s": common.stats([g + d for g, d in zip(g_seconds, d_seconds, strict=True)]),
            "g_step_s": common.stats(g_seconds), "d_step_s": common.stats(d_seconds), "first_iteration_s": sum(first),
            "losses": losses, "generator_parameters": sum(p.numel() for p in trainer.pix2pix_model.netG.parameters()),
            **_process_facts(load_before)}


def measure_inference(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per batch of test.py's ``model(data, mode='inference')`` (eval mode, no_grad)."""
    torch.set_num_threads(spec["threads"])
    with official_code(spec["code_dir"]), tempfile.TemporaryDirectory() as checkpoints:
        opt = official_options("test", spec, checkpoints)
        folder = Path(checkpoints) / opt.name
        folder.mkdir(parents=True)
        generator = official("models.networks", "define_G")(opt)
        torch.save(generator.state_dict(), folder / f"{opt.which_epoch}_net_G.pth")
        model = official("models.pix2pix_model", "Pix2PixModel")(opt)
        model.eval()
        batch = official_batch(spec)

        def generate() -> None:
            model(batch(), mode="inference")

        load_before = common.load_average()
        start = time.perf_counter()
        generate()
        first = time.perf_counter() - start
        seconds = common.timed(generate, spec["warmup"], spec["repeats"])
    summary = common.stats(seconds)
    return {**spec, "batch_s": summary, "images_per_second": spec["batch"] / summary["median"],
            "first_call_s": first, **_process_facts(load_before)}


def _process_facts(load_before: float) -> dict[str, Any]:
    from dagan.heap import large_blocks_mmapped

    return {"peak_memory_mib": common.peak_rss_mib(), "peak_memory_kind": "process ru_maxrss",
            "large_blocks_mmapped": large_blocks_mmapped(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "load_before": load_before, "load_after": common.load_average()}
