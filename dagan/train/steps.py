"""One discriminator update and one generator update (paper Eq. 10; docs/MODEL.md, "Losses").

Both take the run's :class:`~dagan.train.state.TrainingState` (networks, optimisers, scaler,
precision, loss weights, the VGG extractor and the distributed context) and one batch:

* :func:`d_step`: hinge loss on D(real) and D(G(s)) with the fake computed without
  gradients; fake and real pass through D in one concatenated batch (one D forward).
* :func:`g_step`: lambda_gan * hinge + lambda_feat * feature matching (+ lambda_vgg * VGG19
  perceptual when the state holds a VGG extractor). D's parameters are frozen with
  ``requires_grad_(False)`` for the step, so no D gradient is computed or accumulated. D(real)
  is only needed as a detached target, so it runs without gradients and only D(fake) is
  back-propagated (both discriminators normalise per sample (instance norm), and the D(real)
  pass reuses the spectral-norm weights of the D(fake) pass without another power iteration,
  so this equals the concatenated pass). A cross-attention generator (CA2SIS) adds
  lambda_att * L_att.

Both work with every generator and discriminator (``model.generator``, ``model.discriminator``):
a discriminator is called as ``D(semantic, image)`` and returns a
:class:`~dagan.losses.DiscriminatorOutput` (score maps and feature-matching groups), which the
loss functions take as it is.

:func:`generate_training_fake` calls the generator as each kind needs: a style-encoding generator
(CA2SIS) receives the real photo as its ``style_image``; multimodal DAGAN generators
(docs/MULTIMODAL.md) get their latent in both steps as the official code does: ``vae`` encodes
the real photo and samples z from its posterior (and the G step adds lambda_kld * KL),
``noise3d`` draws z ~ N(0, I) per image. Both use torch's RNG, which checkpoints save, so a
resumed run draws the same z. ``style=off`` calls the generator exactly as before.
:func:`calibration_fake` draws the same kinds of z for the EMA's batch-norm recalibration, from a
seeded generator of its own (:mod:`dagan.ema`).

Both steps check that every loss is finite before back-propagating, so a NaN or Inf never
reaches the weights; under DDP the checked values are averaged over ranks first, so every
rank stops together. Returned losses are plain floats (one device sync per step).
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch
from torch import nn

from dagan.distributed import DistributedContext, all_ranks_sum, unwrap
from dagan.generator import run_generator, uses_style_image
from dagan.latent import seeded_normal
from dagan.losses import (
    attention_alignment_loss,
    d_hinge_loss,
    feature_matching_loss,
    g_hinge_loss,
    kl_divergence,
    perceptual_loss,
)
from dagan.nn.style import LatentStyle, reparameterize
from dagan.train.state import LossWeights, TrainingState


class NonFiniteError(FloatingPointError):
    """Training diverged (a loss or a weight is NaN/Inf); nothing non-finite was written."""


class NonFiniteLossError(NonFiniteError):
    """A loss is NaN or Inf; the update was not applied."""


class NonFiniteWeightsError(NonFiniteError):
    """An update made weights NaN or Inf (with finite losses); no checkpoint holds them."""


def _checked(losses: dict[str, torch.Tensor], context: DistributedContext | None) -> dict[str, float]:
    stacked = torch.stack([value.detach().float() for value in losses.values()])
    if context is not None and context.distributed:
        stacked = all_ranks_sum(stacked, context) / context.world_size
    values = dict(zip(losses, stacked.tolist(), strict=True))
    bad = {name: value for name, value in values.items() if not torch.isfinite(torch.tensor(value))}
    if bad:
        raise NonFiniteLossError(", ".join(f"{name}={value}" for name, value in bad.items()))
    return values


@contextlib.contextmanager
def _power_iteration_paused(module: nn.Module):
    """Spectral norm advances its power iteration on every forward in training mode; a second
    forward (D(real) after D(fake)) must reuse the weights of the first, as one concatenated
    pass would. In eval mode a spectral-norm conv recomputes W / sigma from its current u, v."""
    normalized = [m for m in module.modules() if m.training and hasattr(m, "weight_u")]
    for layer in normalized:
        layer.training = False
    try:
        yield
    finally:
        for layer in normalized:
            layer.training = True


def generate_training_fake(
    generator: nn.Module, semantic: torch.Tensor, real: torch.Tensor, cross_attention: bool = False
) -> tuple[torch.Tensor, dict]:
    """G's fake for a training step and what its extra loss terms need: ``{"posterior": (mu, logvar)}``
    of the real photo for ``vae``; ``{"ca2sis": logits}`` of a style-encoding generator with
    ``cross_attention``; else {}."""
    network = unwrap(generator)
    style = getattr(network, "style", "off")
    if style == "vae":
        fake, posterior = generator(semantic, style_image=real)
        return fake, {"posterior": posterior}
    if style == "noise3d":
        z_dim = cast(LatentStyle, network).z_dim
        return generator(semantic, torch.randn(semantic.shape[0], z_dim, device=semantic.device)), {}
    if cross_attention and uses_style_image(generator):
        return run_generator(generator, semantic, real, return_attention=True)
    return run_generator(generator, semantic, real), {}


def calibration_fake(generator: nn.Module, semantic: torch.Tensor, real: torch.Tensor, seed: int) -> torch.Tensor:
    """G's image in the batch-norm recalibration of an EMA generator (:meth:`dagan.ema.ExponentialMovingAverage.
    recalibrate_batch_norm`): a multimodal generator gets its latent as in training (``vae``: sampled from the real
    photo's posterior, ``noise3d``: N(0, I)), not z = 0, whose statistics are not the training's (with ``vae``,
    fc(0) is the same map for every image, so its batch norms would divide by a variance of 0). The noise comes
    from a CPU generator seeded with ``seed`` (:func:`dagan.latent.seeded_normal`), so a checkpoint's
    recalibration draws nothing from torch's RNG and a resumed run stays exact."""
    style = getattr(generator, "style", "off")
    if style == "off":
        return run_generator(generator, semantic, real)
    latent = cast(LatentStyle, generator)  # a generator with a style: DAGAN or CC-FPSE
    noise = seeded_normal(seed, (semantic.shape[0], latent.z_dim)).to(semantic.device)
    if style == "vae":
        mu, logvar = latent.encode(real)
        noise = reparameterize(mu, logvar, noise.to(mu.dtype))
    return generator(semantic, noise)


def d_step(state: TrainingState, semantic: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """One D update (``state.optimizer_d``); returns the {"d_real", "d_fake"} hinge losses."""
    state.optimizer_d.zero_grad(set_to_none=True)
    with state.precision.autocast():
        with torch.no_grad():
            fake, _ = generate_training_fake(state.generator, semantic, real)
        outputs = state.discriminator(torch.cat([semantic, semantic]), torch.cat([fake.detach(), real.to(fake.dtype)]))
        fake_outputs, real_outputs = outputs.split(semantic.shape[0])
        loss_real, loss_fake = d_hinge_loss(real_outputs, fake_outputs)
    values = _checked({"d_real": loss_real, "d_fake": loss_fake}, state.context)
    _apply_update(state.scaler, state.optimizer_d, loss_real + loss_fake)
    return values


def g_step(state: TrainingState, semantic: torch.Tensor, real: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """One G update (``state.optimizer_g``) with D frozen; returns the losses and the (detached) fake batch."""
    if state.weights.vgg > 0 and state.vgg is None:
        raise ValueError("loss.lambda_vgg > 0 needs a VGG19 feature extractor (dagan.perceptual.build_vgg19)")
    critic = unwrap(state.discriminator)  # no DDP reduction for a frozen D
    critic.requires_grad_(False)
    try:
        state.optimizer_g.zero_grad(set_to_none=True)
        with state.precision.autocast():
            fake, extras = generate_training_fake(state.generator, semantic, real,
                                                  cross_attention=state.weights.att > 0)
            losses = _generator_losses(critic, state.vgg, state.weights, semantic, fake, real, extras)
            total = _weighted_total(losses, state.weights)
        losses["g_total"] = total
        values = _checked(losses, state.context)
        _apply_update(state.scaler, state.optimizer_g, total.float())
    finally:
        critic.requires_grad_(True)
    return values, fake.detach()


def _generator_losses(critic: nn.Module, vgg: nn.Module | None, weights: LossWeights, semantic: torch.Tensor,
                      fake: torch.Tensor, real: torch.Tensor, extras: dict) -> dict[str, torch.Tensor]:
    """The terms of G's objective that are on: hinge, feature matching, perceptual, CA2SIS attention, KL."""
    fake_outputs = critic(semantic, fake)
    with torch.no_grad(), _power_iteration_paused(critic):
        real_outputs = critic(semantic, real.to(fake.dtype))
    losses = {"g_gan": g_hinge_loss(fake_outputs)}
    if weights.feat > 0:
        losses["g_feat"] = feature_matching_loss(fake_outputs, real_outputs)
    if weights.vgg > 0:
        if vgg is None:  # build_state builds the VGG19 whenever loss.lambda_vgg > 0
            raise ValueError("loss.lambda_vgg > 0 needs the VGG19 extractor in the training state")
        with torch.no_grad():
            real_features = vgg(real)
        losses["g_vgg"] = perceptual_loss(vgg(fake), real_features)
    if "ca2sis" in extras:
        losses["g_att"] = attention_alignment_loss(extras["ca2sis"], semantic)
    if "posterior" in extras:
        losses["g_kld"] = kl_divergence(*extras["posterior"])
    return losses


def _weighted_total(losses: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """lambda_gan * g_gan + the other weighted terms present, summed in this order (paper Eq. 10)."""
    total = weights.gan * losses["g_gan"]
    for name, weight in (("g_feat", weights.feat), ("g_vgg", weights.vgg), ("g_att", weights.att),
                         ("g_kld", weights.kld)):
        if name in losses:
            total = total + weight * losses[name]
    return total


def _apply_update(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Back-propagate ``loss`` (scaled for fp16) and step ``optimizer``."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
