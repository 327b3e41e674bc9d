"""The training objective of paper Eq. 10, as pure functions of tensors.

L = lambda_cgan * L_cgan + lambda_f * L_f + lambda_p * L_p with
* L_cgan: hinge adversarial loss, averaged over the discriminator's score maps (one per scale of
  the multiscale discriminator, one per pyramid level of FPSE);
* L_f: L1 feature matching over the discriminator's intermediate features (logits excluded):
  summed within a group, averaged over the groups (multiscale: a group per scale; FPSE: a group
  per feature, as the official CC-FPSE code divides by the number of features);
* L_p: VGG19 perceptual L1 on relu1_1..relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1.
CA2SIS (dagan/ca2sis.py) adds
* L_att: its cross-attention logits aligned with the class masks (:func:`attention_alignment_loss`).
With SPADE's style encoder (``model.style=vae``, docs/MULTIMODAL.md) one more term:
* L_kld: KL divergence of the encoder's Gaussian from N(0, I), weighted by lambda_kld.
The lambdas are applied by the caller (training step), not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class DiscriminatorOutput(NamedTuple):
    """What every discriminator returns, for the loss functions below."""

    logits: list[torch.Tensor]  # score maps (B, 1, h, w): one per scale / pyramid level
    features: list[list[torch.Tensor]]  # feature-matching groups of intermediate features

    def split(self, first: int) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
        """The first ``first`` samples of the batch, and the rest (a [fake; real] pass split in two)."""
        head = DiscriminatorOutput([t[:first] for t in self.logits], [[t[:first] for t in g] for g in self.features])
        tail = DiscriminatorOutput([t[first:] for t in self.logits], [[t[first:] for t in g] for g in self.features])
        return head, tail


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)``, typed: the builtin sum of tensors is a tensor (the start value 0 adds nothing)."""
    return cast(torch.Tensor, sum(terms))


def d_hinge_loss(
    real_outputs: DiscriminatorOutput, fake_outputs: DiscriminatorOutput
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator hinge terms (real, fake): mean(relu(1 - D(real))), mean(relu(1 + D(fake)))."""
    real = real_outputs.logits
    fake = fake_outputs.logits
    loss_real = _total(F.relu(1 - logits).mean() for logits in real) / len(real)
    loss_fake = _total(F.relu(1 + logits).mean() for logits in fake) / len(fake)
    return loss_real, loss_fake


def g_hinge_loss(fake_outputs: DiscriminatorOutput) -> torch.Tensor:
    """Generator hinge loss: -mean(D(fake)), averaged over the score maps."""
    fake = fake_outputs.logits
    return -_total(logits.mean() for logits in fake) / len(fake)


def feature_matching_loss(fake_outputs: DiscriminatorOutput, real_outputs: DiscriminatorOutput) -> torch.Tensor:
    """Sum over groups and their features of L1(fake, real.detach()), divided by the number of groups."""
    fake_groups, real_groups = fake_outputs.features, real_outputs.features
    if len(fake_groups) != len(real_groups):
        raise ValueError(f"{len(fake_groups)} fake feature groups vs {len(real_groups)} real ones")
    total = fake_outputs.logits[0].new_zeros(())
    for fake_group, real_group in zip(fake_groups, real_groups, strict=True):
        for fake_feature, real_feature in zip(fake_group, real_group, strict=True):
            total = total + F.l1_loss(fake_feature, real_feature.detach())
    return total / len(fake_groups)


def perceptual_loss(
    fake_features: list[torch.Tensor],
    real_features: list[torch.Tensor],
    weights: tuple[float, ...] = VGG_LAYER_WEIGHTS,
) -> torch.Tensor:
    """Weighted L1 between VGG features of fake and (detached) real images."""
    if not len(fake_features) == len(real_features) == len(weights):
        raise ValueError(
            f"got {len(fake_features)} fake, {len(real_features)} real feature maps and {len(weights)} weights"
        )
    return _total(w * F.l1_loss(f, r.detach()) for w, f, r in zip(weights, fake_features, real_features, strict=True))


def attention_alignment_loss(logits: list[torch.Tensor], semantic: torch.Tensor) -> torch.Tensor:
    """CA2SIS L_att: mean over layers and classes of BCE-with-logits(logits[:, c], mask of class c).

    ``logits``: per attention layer, the head-averaged cross-attention logits (B, C, h, w) over the C
    class tokens; ``semantic``: the generator's input, whose first C channels are the class one-hot
    (resized to each layer's size, nearest). Computed in float32.
    """
    total = semantic.new_zeros((), dtype=torch.float32)
    for layer in logits:
        target = F.interpolate(semantic[:, : layer.shape[1]].float(), size=layer.shape[2:], mode="nearest")
        per_class = F.binary_cross_entropy_with_logits(layer.float(), target, reduction="none")
        total = total + per_class.mean(dim=(0, 2, 3)).mean()
    return total / len(logits)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar)), in float32.

    Summed over the batch and the latent dimensions, not averaged, as the official SPADE code does
    (per GPU there, per process under DDP here), so its weight lambda_kld = 0.05 means the same.
    """
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
