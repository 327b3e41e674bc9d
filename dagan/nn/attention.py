"""DAGAN's two attention modules (paper section 3).

* :class:`SpatialAttention` (SAM, Eqs. 1-3): channel-wise average and max of the last
  backbone feature F, a k x k conv (2 -> 1, no bias) and a sigmoid give the position-wise
  map A_s; F_s = A_s * F.
* :class:`ChannelAttention` (CAM, Eqs. 5-9): earlier backbone scales are brought to F's size
  and fused into F~; alpha = avgpool(concat(F~, F)); gamma = conv1x1 -> ReLU -> conv1x1;
  delta = sigmoid(gamma). CAM-I (Eq. 8): F_c = delta * F~ + F. CAM-II (Eq. 9): F_c = delta * F + F~.

With one source (the official code), F~ is a 3x3 conv of the previous block's output
upsampled to F's size. With several sources (the paper's Eq. 5), each source goes through a
1x1 conv at its own resolution (which commutes with nearest upsampling, so this equals
"resize, then convolve"), is upsampled to F's size, and the concatenation goes through a
3x3 conv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Mean(torch.autograd.Function):
    """x.mean(dims, keepdim=True) whose gradient stays a broadcast view (for speed). Autograd's own
    mean backward materialises grad / n in contiguous (NCHW) order, and adding that to the
    channels_last gradient of the same feature is a slow strided add; a broadcast view is an order
    of magnitude cheaper (docs/PERFORMANCE.md, "What changed"). The values are the same: grad / n,
    broadcast."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.count = math.prod(x.shape[d] for d in dims)
        return x.mean(dims, keepdim=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (grad / ctx.count).expand(ctx.shape), None


def mean(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x.mean(dims, keepdim=True), with a gradient that keeps the layout of the tensors it meets."""
    return _Mean.apply(x, dims)


class SpatialAttention(nn.Module):
    """SAM: returns (F_s, A_s) with A_s of shape (B, 1, H, W)."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SAM kernel_size must be a positive odd number, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled_avg = mean(feature, (1,))
        pooled_max = feature.amax(dim=1, keepdim=True)
        attention = torch.sigmoid(self.conv(torch.cat([pooled_avg, pooled_max], dim=1)))
        return attention * feature, attention


class ChannelAttention(nn.Module):
    """CAM: returns (F_c, delta) with delta of shape (B, C, 1, 1).

    ``source_channels`` lists the channel counts of the earlier scales that are fused into
    F~ (one entry: the official single-source CAM; several: the paper's Eq. 5).
    ``mode`` is "I" (Eq. 8) or "II" (Eq. 9).
    """

    def __init__(self, channels: int, source_channels: list[int], mode: str = "II"):
        super().__init__()
        if mode not in ("I", "II"):
            raise ValueError(f"CAM mode must be 'I' or 'II', got {mode!r}")
        if not source_channels:
            raise ValueError("CAM needs at least one earlier backbone scale to fuse")
        self.mode = mode
        if len(source_channels) == 1:
            self.source_convs = None
            self.fuse = nn.Conv2d(source_channels[0], channels, 3, padding=1)
        else:
            self.source_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in source_channels)
            self.fuse = nn.Conv2d(channels * len(source_channels), channels, 3, padding=1)
        self.reduce = nn.Conv2d(2 * channels, channels, 1)
        self.expand = nn.Conv2d(channels, channels, 1)

    def fused_sources(self, sources: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """F~ (Eq. 5) at spatial ``size``."""
        if self.source_convs is None:
            return self.fuse(F.interpolate(sources[0], size=size, mode="nearest"))
        if len(sources) != len(self.source_convs):
            raise ValueError(f"CAM was built for {len(self.source_convs)} sources, got {len(sources)}")
        projected = [
            F.interpolate(conv(source), size=size, mode="nearest")
            for conv, source in zip(self.source_convs, sources, strict=True)
        ]
        return self.fuse(torch.cat(projected, dim=1))

    def forward(self, feature: torch.Tensor, sources: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fused_sources(sources, feature.shape[2:])
        alpha = torch.cat([mean(fused, (2, 3)), mean(feature, (2, 3))], dim=1)  # avgpool(concat(F~, F))
        delta = torch.sigmoid(self.expand(F.relu(self.reduce(alpha))))
        if self.mode == "I":
            return delta * fused + feature, delta
        return delta * feature + fused, delta
