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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import Config
from dagan.fpse_discriminator import FPSEDiscriminator
from dagan.init import init_weights
from dagan.losses import DiscriminatorOutput
from dagan.nn.spectral import spectral_norm

MAX_CHANNELS = 512


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 4):
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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output; the last one is the patch logits."""
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 4, num_discriminators: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, ndf, n_layers) for _ in range(num_discriminators)
        )

    def forward(self, semantic: torch.Tensor, image: torch.Tensor) -> DiscriminatorOutput:
        """Each scale sees concat(semantic, image): its logits, and its other features as one group."""
        x = torch.cat([semantic, image], 1)
        outputs = []
        for index, scale in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return DiscriminatorOutput(logits=[scale[-1] for scale in outputs], features=[scale[:-1] for scale in outputs])


def build_discriminator(config: Config, semantic_nc: int) -> nn.Module:
    """Translate the (resolved) config: ``model.discriminator`` multiscale or fpse, initialised."""
    if config.model.discriminator == "fpse":
        discriminator = FPSEDiscriminator(semantic_nc, ndf=config.model.ndf)
    else:
        discriminator = MultiscaleDiscriminator(
            in_channels=semantic_nc + 3,
            ndf=config.model.ndf,
            n_layers=config.model.n_layers_d,
            num_discriminators=config.model.num_discriminators,
        )
    init_weights(discriminator, config.model.init_gain, config.model.init_spectral_norm_weights)
    return discriminator
