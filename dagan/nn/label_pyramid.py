"""CC-FPSE's global-context-aware weight prediction network: a feature pyramid over the label map.

The kernels of a conditional convolution (dagan/nn/condconv.py) should depend on more than the
class under a pixel (Liu et al., NeurIPS 2019, section 3.2). The label map is therefore encoded
bottom-up (a 3x3 conv at full resolution, then one stride-2 3x3 conv per halving down to the
generator's start size) and decoded top-down as a feature pyramid network: at each finer level
the coarser output, upsampled x2 (nearest), plus a 1x1 lateral projection of the encoder's
feature there, through a 3x3 conv. Every conv is spectral-normalised without bias, followed by
an affine batch norm (SyncBatchNorm under DDP) and LeakyReLU 0.2; all have ``channels`` (= ngf)
outputs. Each generator block is conditioned on the pyramid level of its own resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.conv import Conv2d
from dagan.nn.spectral import spectral_norm


def normalized_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Spectral-norm conv (no bias) -> BatchNorm (affine) -> LeakyReLU 0.2."""
    conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(spectral_norm(conv), nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))


class LabelPyramid(nn.Module):
    """label map (B, label_nc, H, W) -> ``levels`` feature maps, coarsest (H / 2**(levels-1)) first."""

    def __init__(self, label_nc: int, channels: int, levels: int):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a label pyramid needs at least 2 levels, got {levels}")
        self.bottom_up = nn.ModuleList(
            [normalized_conv(label_nc, channels, 3)]
            + [normalized_conv(channels, channels, 3, stride=2) for _ in range(levels - 1)]
        )
        # lateral[k] and top_down[k] make level k + 1 (0 = coarsest) from level k and the encoder there.
        self.lateral = nn.ModuleList(normalized_conv(channels, channels, 1) for _ in range(levels - 1))
        self.top_down = nn.ModuleList(normalized_conv(channels, channels, 3) for _ in range(levels - 1))

    def forward(self, label_map: torch.Tensor) -> list[torch.Tensor]:
        encoded = []
        x = label_map
        for layer in self.bottom_up:
            x = layer(x)
            encoded.append(x)
        levels = [encoded[-1]]
        for lateral, top_down, skip in zip(self.lateral, self.top_down, reversed(encoded[:-1]), strict=True):
            upsampled = F.interpolate(levels[-1], scale_factor=2, mode="nearest")
            levels.append(top_down(upsampled + lateral(skip)))
        return levels
