"""Run the official DAGAN / SPADE code on a reference's inputs: the subprocess of :mod:`dagan.official.maker`.

``python -m dagan.official.driver JOB.json`` imports the official code from the checkout that the job names
(nothing of it lives in this repository), builds its networks with its own option parser, loads the rule
weights of :mod:`dagan.official.reference` strictly, and computes what docs/OFFICIAL.md lists: the generator
in train then eval mode, the discriminator in train then eval mode on [fake, real], and two iterations of the
official trainer (``Pix2PixTrainer``: G step then D step, TTUR Adam). It writes ``<out>.npz`` (the arrays) and
``<out>.json`` (the losses and the official state-dict layouts).

The official code runs unchanged; the driver only supplies what it would fetch or needs a GPU for:

* its VGG19 (``torchvision.models.vgg19(pretrained=True)``) is built without a download and filled with rule
  weights (seed + 2), and its ``.cuda()`` call in ``VGGLoss`` is a no-op (the driver runs with ``--gpu_ids -1``);
* ``util/util.py`` imports ``dill`` only to pickle file lists; where ``dill`` is not installed the standard
  ``pickle`` stands in (never used on this path).

To measure how much the reference's own rounding moves its numbers, the driver also runs the official code in
other ways of rounding: with another thread count, with PyTorch's native convolutions instead of oneDNN's, or in
float64 (every module converted with ``.double()`` and the official model's tensor types ``FloatTensor`` set to
``DoubleTensor`` on the instances, so that its one-hot maps and loss constants are float64 too).

The job JSON: ``checkout`` (the folder holding ``models/``, ``options/``, ``trainers/``), ``flags`` (the official
command line), ``seed``, ``threads``, ``mkldnn``, ``float64``, ``inputs`` (an npz with ``label``, ``instance``,
``real``) and ``out``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagan.official.reference import (
    ITERATIONS,
    LOSS_NAMES,
    WEIGHT_SEED_OFFSET,
    generator_outputs,
    rule_state_dict,
    save_arrays,
)


def state_layout(module: torch.nn.Module) -> list[list]:
    """``[name, shape]`` of every entry of ``module``'s state dict, in order."""
    return [[name, list(value.shape)] for name, value in module.state_dict().items()]


def load_rule_weights(module: torch.nn.Module, seed: int) -> list[list]:
    """Fill ``module`` with the rule weights of ``seed`` (strictly); return its layout."""
    layout = state_layout(module)
    module.load_state_dict(rule_state_dict(layout, seed), strict=True)
    return layout


def _install_shims(vgg_seed: int, layouts: dict[str, list]) -> None:
    """A VGG19 with rule weights instead of a download (its layout into ``layouts``); ``VGG19.cuda`` a no-op;
    ``dill`` if missing."""
    try:
        importlib.import_module("dill")
    except ModuleNotFoundError:
        sys.modules["dill"] = pickle
    import torchvision.models

    original = torchvision.models.vgg19

    def vgg19_with_rule_weights(*args: Any, **kwargs: Any) -> torch.nn.Module:
        network = original(weights=None)
        layouts["vgg19_features_keys"] = load_rule_weights(network.features, vgg_seed)
        return network

    torchvision.models.vgg19 = vgg19_with_rule_weights
    architecture = importlib.import_module("models.networks.architecture")
    architecture.VGG19.cuda = lambda self, *args, **kwargs: self


def _parse_options(flags: list[str]) -> Any:
    train_options = importlib.import_module("options.train_options")
    saved_argv = sys.argv
    sys.argv = ["train.py", *flags]
    try:
        return train_options.TrainOptions().parse()
    finally:
        sys.argv = saved_argv


def _discriminator_outputs(discriminator: torch.nn.Module, batch: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
    with torch.no_grad():
        scales = discriminator(batch)
    outputs = {}
    for index, results in enumerate(scales):
        *features, final = results
        outputs[f"{prefix}_scale{index}_final"] = final.numpy().copy()
        outputs[f"{prefix}_scale{index}_feature_abs_means"] = np.array([f.abs().mean().item() for f in features])
    return outputs


def _data(inputs: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, Any]:
    """The batch the official data loader would give (batch 1)."""
    return {"label": torch.from_numpy(inputs["label"].astype(np.float32))[None, None],
            "instance": torch.from_numpy(inputs["instance"].astype(np.float32))[None, None],
            "image": torch.from_numpy(inputs["real"])[None].to(dtype), "path": ["reference"]}


def _in_dtype(model: Any, dtype: torch.dtype) -> Any:
    """The official Pix2PixModel computing in ``dtype`` (float32: as it is)."""
    if dtype == torch.float64:
        model.double()
        model.FloatTensor = torch.DoubleTensor  # its one-hot maps and feature-matching sum
        if hasattr(model, "criterionGAN"):
            model.criterionGAN.Tensor = torch.DoubleTensor  # the hinge loss's zero tensor
    return model


def _before_training(opt: Any, inputs: dict[str, np.ndarray], seed: int,
                     dtype: torch.dtype) -> tuple[dict[str, np.ndarray], dict]:
    """G in train then eval mode, D in train then eval mode on [fake, real]; and the layouts."""
    model = _in_dtype(importlib.import_module("models.pix2pix_model").Pix2PixModel(opt), dtype)
    layouts: dict[str, Any] = {
        "generator_keys": load_rule_weights(model.netG, seed + WEIGHT_SEED_OFFSET["generator"]),
        "discriminator_keys": load_rule_weights(model.netD, seed + WEIGHT_SEED_OFFSET["discriminator"])}
    semantic, real = model.preprocess_input(_data(inputs, dtype))
    outputs = generator_outputs(model.netG.train(), semantic, "g_train")
    outputs.update(generator_outputs(model.netG.eval(), semantic, "g_eval"))
    fake = torch.from_numpy(outputs["g_eval"])
    batch = torch.cat([torch.cat([semantic, fake], 1), torch.cat([semantic, real], 1)])
    outputs.update(_discriminator_outputs(model.netD.train(), batch, "d_train"))
    outputs.update(_discriminator_outputs(model.netD.eval(), batch, "d_eval"))
    layouts["semantic_nc"] = int(semantic.shape[1])
    return outputs, layouts


def _training(opt: Any, inputs: dict[str, np.ndarray], seed: int,
              dtype: torch.dtype) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Two iterations of the official trainer from the rule weights; G after them in eval then train mode."""
    trainer = importlib.import_module("trainers.pix2pix_trainer").Pix2PixTrainer(opt)
    model = _in_dtype(trainer.pix2pix_model_on_one_gpu, dtype)  # in place: the optimisers keep their parameters
    load_rule_weights(model.netG, seed + WEIGHT_SEED_OFFSET["generator"])
    load_rule_weights(model.netD, seed + WEIGHT_SEED_OFFSET["discriminator"])
    losses = []
    for _ in range(ITERATIONS):
        trainer.run_generator_one_step(_data(inputs, dtype))
        trainer.run_discriminator_one_step(_data(inputs, dtype))
        latest = trainer.get_latest_losses()
        losses.append({name: float(latest[name].item()) for name in LOSS_NAMES})
    semantic, _ = model.preprocess_input(_data(inputs, dtype))
    prefix = f"g_{{}}_after_{ITERATIONS}_iterations"
    outputs = generator_outputs(model.netG.eval(), semantic, prefix.format("eval"))
    outputs.update(generator_outputs(model.netG.train(), semantic, prefix.format("train")))
    return outputs, losses


def run(job: dict, log: Callable[[str], None]) -> None:
    torch.set_num_threads(job["threads"])
    torch.backends.mkldnn.enabled = job["mkldnn"]
    sys.path.insert(0, str(Path(job["checkout"]).resolve()))
    os.chdir(Path(job["out"]).parent)  # the official option parser writes checkpoints/<name>/opt.txt here
    with contextlib.redirect_stdout(sys.stderr):  # the official code prints its options and networks
        vgg_layout: dict[str, list] = {}
        _install_shims(job["seed"] + WEIGHT_SEED_OFFSET["vgg19_features"], vgg_layout)
        opt = _parse_options(job["flags"])
        with np.load(job["inputs"], allow_pickle=False) as archive:
            inputs = {name: archive[name] for name in archive.files}
        log("official networks before training")
        dtype = torch.float64 if job["float64"] else torch.float32
        outputs, meta = _before_training(opt, inputs, job["seed"], dtype)
        meta.update(vgg_layout)
        log(f"{ITERATIONS} official training iterations")
        trained, losses = _training(opt, inputs, job["seed"], dtype)
    outputs.update(trained)
    save_arrays(Path(f"{job['out']}.npz"), outputs)
    Path(f"{job['out']}.json").write_text(json.dumps({**meta, "losses_per_iteration": losses,
                                                      "threads": torch.get_num_threads(),
                                                      "torch": torch.__version__}))


def main(argv: list[str] | None = None) -> int:
    (job_path,) = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(job_path).read_text())
    run(job, lambda stage: print(f"[{job['threads']} threads, oneDNN {job['mkldnn']}, float64 {job['float64']}] "
                                 f"{stage}", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
