"""Everything a training step works with, built from the config, saved to and restored from a checkpoint.

:func:`build_state` seeds the RNGs and creates G and D (initialised identically on every
rank), the optional EMA copy of G, the DDP wrappers, both TTUR Adam optimisers, the
GradScaler (active only for fp16), the autocast :class:`Precision`, the :class:`LossWeights`
of paper Eq. 10 and, when ``loss.lambda_vgg > 0``, the VGG19 extractor (a missing-weights
error stops the run with its message). The G and D steps (:mod:`dagan.train.steps`) take the
:class:`TrainingState` as their one argument besides the batch. A new run (not a resumed one) may
start from the weights of another checkpoint (``train.init_from``: a trained or an imported
official model; :meth:`TrainingState.initialise_from`).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dagan.checkpoint import FORMAT_VERSION, CheckpointError, rng_state
from dagan.config import Config, LossConfig, TrainConfig
from dagan.discriminator import build_discriminator
from dagan.distributed import DistributedContext, unwrap, wrap_ddp
from dagan.ema import ExponentialMovingAverage
from dagan.finite import describe_non_finite, non_finite_tensors
from dagan.generator import build_generator
from dagan.perceptual import build_vgg19
from dagan.train.resume import resume_changes

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LossWeights:
    """The lambdas of the generator's objective (paper Eq. 10; docs/MODEL.md, "Losses")."""

    gan: float = 1.0
    feat: float = 10.0
    vgg: float = 0.0
    att: float = 0.0  # CA2SIS attention loss; only generators that return cross-attention logits use it
    kld: float = 0.05  # used by model.style=vae only

    @classmethod
    def from_config(cls, loss: LossConfig) -> LossWeights:
        return cls(gan=loss.lambda_gan, feat=loss.lambda_feat, vgg=loss.lambda_vgg, att=loss.lambda_att,
                   kld=loss.lambda_kld)


@dataclass(frozen=True)
class Precision:
    """Autocast settings of a step: ``dtype`` None means full float32."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


@dataclass
class TrainingState:
    generator: nn.Module  # DDP-wrapped under torchrun
    discriminator: nn.Module
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # active for train.amp=fp16 only
    ema: ExponentialMovingAverage | None = None
    vgg: nn.Module | None = None  # the VGG19 extractor of the perceptual loss (weights.vgg > 0)
    precision: Precision = Precision()
    weights: LossWeights = LossWeights()
    context: DistributedContext | None = None  # under torchrun: the steps average their checked losses over ranks
    num_label_channels: int | None = None  # one-hot class channels of the input (saved for loading the generator)

    @property
    def eval_generator(self) -> nn.Module:
        """The generator to evaluate or sample from: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else unwrap(self.generator)

    def to_checkpoint(self, config: Config, semantic_nc: int, step: int, epoch: int) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "semantic_nc": semantic_nc,
            "num_label_channels": self.num_label_channels,
            "generator": unwrap(self.generator).state_dict(),
            "discriminator": unwrap(self.discriminator).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": step,
            "epoch": epoch,
            "rng": rng_state(),
        }

    def restore(self, checkpoint: dict[str, Any], source: Path, config: Config, semantic_nc: int) -> tuple[str, ...]:
        """Load a checkpoint of this run; return the config changes since it (:mod:`dagan.train.resume`), or
        raise a CheckpointError (weights only, another config, another dataset, NaN/Inf weights)."""
        if checkpoint.get("optimizer_g") is None:
            raise CheckpointError(
                f"{source} holds model weights only (an imported or exported model), not a training state to resume; "
                f"start a new run from it with -S train.init_from={source} and a train.out_dir without checkpoints"
            )
        changes = resume_changes(checkpoint["config"], config, source)
        if checkpoint["semantic_nc"] != semantic_nc:
            raise CheckpointError(
                f"{source} was written for {checkpoint['semantic_nc']} label channels, the prepared data has "
                f"{semantic_nc}: it belongs to another dataset; use another train.out_dir for this one"
            )
        bad = {**non_finite_tensors(checkpoint["generator"], "generator."),
               **non_finite_tensors(checkpoint["discriminator"], "discriminator.")}
        if bad:
            raise CheckpointError(f"{source} holds {describe_non_finite(bad)}: it comes from a diverged run; resume "
                                  "from an earlier checkpoint (--resume PATH) or start a new run")
        if (self.ema is None) != (checkpoint["ema"] is None):
            raise CheckpointError(f"{source}: EMA present there: {checkpoint['ema'] is not None}, here: "
                                  f"{self.ema is not None}; resume with the same train.ema_decay")
        unwrap(self.generator).load_state_dict(checkpoint["generator"])
        unwrap(self.discriminator).load_state_dict(checkpoint["discriminator"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer_g.load_state_dict(checkpoint["optimizer_g"])
        self.optimizer_d.load_state_dict(checkpoint["optimizer_d"])
        if self.scaler.is_enabled() and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        return changes

    def initialise_from(self, checkpoint: dict[str, Any], source: str | Path, semantic_nc: int) -> None:
        """Start from the generator (and, when present, discriminator) weights of ``checkpoint``; the
        optimisers start afresh. The models must have the same architecture (else a CheckpointError
        naming the first key that differs and both shapes)."""
        _load_matching(unwrap(self.generator), checkpoint["generator"], source, "generator", checkpoint, semantic_nc)
        if checkpoint.get("discriminator") is not None:
            _load_matching(unwrap(self.discriminator), checkpoint["discriminator"], source, "discriminator",
                           checkpoint, semantic_nc)
        if self.ema is not None:
            self.ema.load_state_dict(unwrap(self.generator).state_dict())


def _load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path, role: str,
                   checkpoint: dict[str, Any], semantic_nc: int) -> None:
    ours = module.state_dict()
    for key, value in ours.items():
        theirs = state.get(key)
        if theirs is None or theirs.shape != value.shape:
            there = "missing" if theirs is None else f"shape {list(theirs.shape)}"
            raise CheckpointError(
                f"train.init_from={source}: {role} key {key} is {there} there but has shape {list(value.shape)} in "
                f"this model (checkpoint: semantic_nc {checkpoint['semantic_nc']}, "
                f"{_architecture(checkpoint['config']['model'])}; this run: semantic_nc {semantic_nc}); start from a "
                "checkpoint of the same dataset layout and model settings"
            )
    extra = sorted(set(state) - set(ours))
    if extra:
        raise CheckpointError(f"train.init_from={source}: {role} key {extra[0]} does not exist in this model; start "
                              "from a checkpoint of the same model.variant")
    module.load_state_dict(state)


def _architecture(model: dict[str, Any]) -> str:
    keys = ("generator", "variant", "spap", "ngf", "num_upsampling_layers")
    return ", ".join(f"{key} {model.get(key)}" for key in keys)


def build_optimizers(generator: nn.Module, discriminator: nn.Module, train: TrainConfig,
                     device: torch.device) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The two TTUR Adam optimisers (G: ``train.lr_g``, D: ``train.lr_d``, betas ``(beta1, beta2)``).

    One fused kernel per optimiser step (CPU and CUDA): the same update as the per-parameter loop
    up to float rounding (tests/test_fast_paths.py), in a fraction of its time on G's 93M parameters
    (docs/PERFORMANCE.md, "What changed").
    """
    betas = (train.beta1, train.beta2)
    fused = device.type in ("cpu", "cuda")
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=train.lr_g, betas=betas, fused=fused)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=train.lr_d, betas=betas, fused=fused)
    return optimizer_g, optimizer_d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_state(config: Config, semantic_nc: int, context: DistributedContext,
                num_label_channels: int | None = None) -> TrainingState:
    """``num_label_channels``: the dataset's one-hot class channels (None: the preset's; see build_generator)."""
    train = config.train
    device = context.device
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    precision = Precision(device.type, AMP_DTYPES[train.amp])
    vgg = None
    if config.loss.lambda_vgg > 0:
        vgg = build_vgg19(config.loss.vgg_weights, config.loss.vgg_input).for_autocast(precision.dtype)
        vgg = vgg.to(device).to(memory_format=memory_format)
    seed_everything(train.seed)
    generator = build_generator(config, semantic_nc, num_label_channels).to(device).to(memory_format=memory_format)
    discriminator = build_discriminator(config, semantic_nc).to(device).to(memory_format=memory_format)
    ema = ExponentialMovingAverage(generator, train.ema_decay, train.ema_rampup) if train.ema_decay > 0 else None
    generator = wrap_ddp(generator, context)
    discriminator = wrap_ddp(discriminator, context)
    optimizer_g, optimizer_d = build_optimizers(generator, discriminator, train, device)
    scaler = torch.amp.GradScaler(device.type, enabled=train.amp == "fp16")
    return TrainingState(generator, discriminator, optimizer_g, optimizer_d, scaler, ema, vgg, precision,
                         LossWeights.from_config(config.loss), context, num_label_channels)
