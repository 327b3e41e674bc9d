"""Multiscale PatchGAN discriminator (paper section 3, "Training Details"; [31, 44]), and the
choice between it and CC-FPSE's feature-pyramid discriminator (``model.discriminator``).

Each scale sees concat(semantic input, image). Layers (k4, p2): conv in -> ndf (bias, no
norm), then ``n_layers - 1`` convs doubling the channels up to 512 (stride 2, the last
stride 1), each spectral norm + InstanceNorm (no affine) without conv bias; LeakyReLU 0.2
after each; a final conv -> 1 (bias). Scale i+1 sees the input average-pooled (3x3,
stride 2, pad 1, count_include_pad False). Every intermediate feature is returned for the
feature-matching loss (one group per scale).

Every discriminator is called as ``D(semantic, image)`` and returns a
:class:`~dagan.losses.DiscriminatorOutput`, which the loss functions take.

With ``model.spap`` = discriminator/both, a SPAP unit (:mod:`dagan.nn.spap`, spectral-normalised
like the discriminator's convs) refines the first layer's output at every scale; that output
(the SPAP unit's) stays the first feature, so feature matching sees as many features as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import Config, resolved_value
from dagan.fpse_discriminator import FPSEDiscriminator
from dagan.init import init_weights
from dagan.losses import DiscriminatorOutput
from dagan.nn.spap import SpatialPyramidAttentivePooling
from dagan.nn.spectral import spectral_norm

MAX_CHANNELS = 512


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 4, spap_order: str | None = None):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"n_layers must be >= 2, got {n_layers}")
        layers = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2))]
        channels = ndf
        for index in range(1, n_layers):
            previous, channels = channels, min(channels * 2, MAX_CHANNELS)
            stride = 1 if index == n_layers - 1 else 2
            layers.append(nn.Sequential(
                spectral_norm(nn.Conv2d(previous, channels, 4, stride=stride, padding=2, bias=False)),
                nn.InstanceNorm2d(channels, affine=False),
                nn.LeakyReLU(0.2),
            ))
        layers.append(nn.Sequential(nn.Conv2d(channels, 1, 4, stride=1, padding=2)))
        self.layers = nn.ModuleList(layers)
        self.spap = SpatialPyramidAttentivePooling(ndf, spap_order, spectral=True) if spap_order else None

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Every layer's output; the last one is the patch logits. With ``return_attention`` also the
        SPAP gates (B, K-1, h, w) of the first layer (None without SPAP)."""
        features = []
        gates = None
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index == 0 and self.spap is not None:
                x, gates = self.spap(x)
            features.append(x)
        return (features, gates) if return_attention else features


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 4, num_discriminators: int = 2,
                 spap_order: str | None = None):
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf, n_layers, spap_order) for _ in range(num_discriminators)
        )

    def forward(self, semantic: torch.Tensor, image: torch.Tensor, return_attention: bool = False):
        """Each scale sees concat(semantic, image): its logits, and its other features as one group.

        With ``return_attention`` also {"spap_d": SPAP gates of the finest scale} when D has SPAP."""
        x = torch.cat([semantic, image], 1)
        outputs = []
        attention: dict[str, torch.Tensor] = {}
        for index, scale in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            features, gates = scale(x, return_attention=True)
            if index == 0 and gates is not None:
                attention["spap_d"] = gates
            outputs.append(features)
        result = DiscriminatorOutput(logits=[scale[-1] for scale in outputs],
                                     features=[scale[:-1] for scale in outputs])
        return (result, attention) if return_attention else result


def build_discriminator(config: Config, semantic_nc: int) -> nn.Module:
    """Translate the (resolved) config: ``model.discriminator`` multiscale or fpse, initialised."""
    discriminator: nn.Module
    if config.model.discriminator == "fpse":
        discriminator = FPSEDiscriminator(semantic_nc, ndf=resolved_value(config.model.ndf))
    else:
        discriminator = MultiscaleDiscriminator(
            in_channels=semantic_nc + 3,
            ndf=resolved_value(config.model.ndf),
            n_layers=config.model.n_layers_d,
            num_discriminators=config.model.num_discriminators,
            spap_order=config.model.spap_order if config.model.spap_in("discriminator") else None,
        )
    init_weights(discriminator, config.model.init_gain, config.model.init_spectral_norm_weights)
    return discriminator
