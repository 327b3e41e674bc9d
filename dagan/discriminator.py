"""Multiscale PatchGAN discriminator (paper section 3, "Training Details"; [31, 44]).

Each scale sees concat(semantic input, image). Layers (k4, p2): conv in -> ndf (bias, no
norm), then ``n_layers - 1`` convs doubling the channels up to 512 (stride 2, the last
stride 1), each spectral norm + InstanceNorm (no affine) without conv bias; LeakyReLU 0.2
after each; a final conv -> 1 (bias). Scale i+1 sees the input average-pooled (3x3,
stride 2, pad 1, count_include_pad False). Every intermediate feature is returned for the
feature-matching loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import Config
from dagan.init import init_weights
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

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """x: concat(semantic input, image) -> per scale, the list of its features (logits last)."""
        outputs = []
        for index, scale in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs


def build_discriminator(config: Config, semantic_nc: int) -> MultiscaleDiscriminator:
    """Translate the (resolved) config; the input is the semantic input plus an RGB image."""
    discriminator = MultiscaleDiscriminator(
        in_channels=semantic_nc + 3,
        ndf=config.model.ndf,
        n_layers=config.model.n_layers_d,
        num_discriminators=config.model.num_discriminators,
    )
    init_weights(discriminator, config.model.init_gain, config.model.init_spectral_norm_weights)
    return discriminator
