"""The training objective of paper Eq. 10, as pure functions of tensors.

L = lambda_cgan * L_cgan + lambda_f * L_f + lambda_p * L_p with
* L_cgan: hinge adversarial loss, averaged over the discriminator's scales;
* L_f: L1 feature matching over every intermediate discriminator feature (logits
  excluded), summed over layers and averaged over scales;
* L_p: VGG19 perceptual L1 on relu1_1..relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1.
With SPADE's style encoder (``model.style=vae``, docs/MULTIMODAL.md) one more term:
* L_kld: KL divergence of the encoder's Gaussian from N(0, I), weighted by lambda_kld.
The lambdas are applied by the caller (training step), not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

Features = list[list[torch.Tensor]]  # per scale, per layer; the last layer holds the logits


def _logits(outputs: Features) -> list[torch.Tensor]:
    return [scale[-1] for scale in outputs]


def d_hinge_loss(real_outputs: Features, fake_outputs: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator hinge terms (real, fake): mean(relu(1 - D(real))), mean(relu(1 + D(fake)))."""
    real = _logits(real_outputs)
    fake = _logits(fake_outputs)
    loss_real = sum(F.relu(1 - logits).mean() for logits in real) / len(real)
    loss_fake = sum(F.relu(1 + logits).mean() for logits in fake) / len(fake)
    return loss_real, loss_fake


def g_hinge_loss(fake_outputs: Features) -> torch.Tensor:
    """Generator hinge loss: -mean(D(fake)), averaged over scales."""
    fake = _logits(fake_outputs)
    return -sum(logits.mean() for logits in fake) / len(fake)


def feature_matching_loss(fake_outputs: Features, real_outputs: Features) -> torch.Tensor:
    """Sum over scales and intermediate layers of L1(fake, real.detach()), divided by the scales."""
    if len(fake_outputs) != len(real_outputs):
        raise ValueError(f"{len(fake_outputs)} fake scales vs {len(real_outputs)} real scales")
    total = fake_outputs[0][0].new_zeros(())
    for fake_scale, real_scale in zip(fake_outputs, real_outputs, strict=True):
        for fake_feature, real_feature in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + F.l1_loss(fake_feature, real_feature.detach())
    return total / len(fake_outputs)


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
    return sum(w * F.l1_loss(f, r.detach()) for w, f, r in zip(weights, fake_features, real_features, strict=True))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 - exp(logvar)), in float32.

    Summed over the batch and the latent dimensions, not averaged, as the official SPADE code does
    (per GPU there, per process under DDP here), so its weight lambda_kld = 0.05 means the same.
    """
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
