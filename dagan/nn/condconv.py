"""Layout-conditioned depthwise-separable convolutions: the block of the CC-FPSE generator.

CC-FPSE (Liu et al., NeurIPS 2019, section 3.1) predicts the generator's convolution kernels from
the semantic layout, so that every pixel is convolved with a kernel chosen for its class and
context. A full predicted kernel per pixel would be far too large, so the convolution is
factorised: a predicted 3x3 *depthwise* kernel per sample, channel and pixel
(:func:`spatial_depthwise_conv3x3`), then an ordinary learned 1x1 convolution that mixes the
channels, then a predicted per-pixel, per-channel gate (a sigmoid; the paper's "conditional
attention") that rescales the result.

:class:`CondConvBlock` is the residual block built from two such convolutions (layout in
docs/CCFPSE.md): BN -> conditional depthwise 3x3 (fin) -> 1x1 fin->fmid -> gate -> LeakyReLU 0.2
-> BN -> conditional depthwise 3x3 (fmid) -> 1x1 fmid->fout -> gate -> LeakyReLU 0.2, plus the
shortcut (identity, or SPADE norm + spectral-norm 1x1 conv when fin != fout), fmid = min(fin, fout).
Each of the four predictors (two kernels, two gates) is its own 3x3 conv label -> 128 + ReLU and
3x3 conv 128 -> out. Its batch norms are affine (SyncBatchNorm under DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.conv import Conv2d
from dagan.nn.spade import SPADE
from dagan.nn.spectral import spectral_norm

PREDICTOR_HIDDEN = 128  # width of the hidden conv of every kernel / gate predictor
KERNEL_TAPS = 9  # a 3x3 depthwise kernel


def spatial_depthwise_conv3x3(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """A 3x3 depthwise convolution (zero padding 1) with its own kernel at every sample, channel and pixel.

    ``x``: (B, C, H, W); ``kernels``: (B, 9 C, H, W), channel 9 c + 3 i + j holding the weight of
    channel c at row offset i - 1 and column offset j - 1 (the order of ``F.unfold``). Computed as
    nine shifted products summed, so no (B, 9 C, H, W) copy of ``x`` is made.
    """
    batch, channels, height, width = x.shape
    if kernels.shape != (batch, KERNEL_TAPS * channels, height, width):
        raise ValueError(f"kernels of shape {tuple(kernels.shape)} do not fit features of shape {tuple(x.shape)}; "
                         f"expected ({batch}, {KERNEL_TAPS * channels}, {height}, {width})")
    taps = kernels.unflatten(1, (channels, KERNEL_TAPS))
    padded = F.pad(x, (1, 1, 1, 1))
    out = taps[:, :, 0] * padded[:, :, :height, :width]
    for tap in range(1, KERNEL_TAPS):
        row, column = divmod(tap, 3)
        out = out + taps[:, :, tap] * padded[:, :, row:row + height, column:column + width]
    return out


def predictor(label_nc: int, out_channels: int, gate: bool = False) -> nn.Sequential:
    """label map -> 3x3 conv (128) -> ReLU -> 3x3 conv (out_channels) [-> sigmoid for a gate]."""
    layers = [Conv2d(label_nc, PREDICTOR_HIDDEN, 3, padding=1), nn.ReLU(),
              Conv2d(PREDICTOR_HIDDEN, out_channels, 3, padding=1)]
    return nn.Sequential(*layers, nn.Sigmoid()) if gate else nn.Sequential(*layers)


class CondConvBlock(nn.Module):
    """The CC-FPSE residual block (module docstring) on features x and a condition map of x's size.

    ``unused_norms``: the official block also creates three affine batch norms (over fmid, fin and
    fmid channels) that its forward pass never calls. They are kept, frozen, so that parameter
    counts and state dicts match the official models; they take no part in any computation.
    """

    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.kernels_0 = predictor(label_nc, KERNEL_TAPS * fin)
        self.kernels_1 = predictor(label_nc, KERNEL_TAPS * fmid)
        self.gate_0 = predictor(label_nc, fmid, gate=True)
        self.gate_1 = predictor(label_nc, fout, gate=True)
        self.norm_0 = nn.BatchNorm2d(fin)
        self.pointwise_0 = nn.Conv2d(fin, fmid, 1)
        self.norm_1 = nn.BatchNorm2d(fmid)
        self.pointwise_1 = nn.Conv2d(fmid, fout, 1)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_nc)
        self.unused_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in (fmid, fin, fmid)).requires_grad_(False)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if condition.shape[2:] != x.shape[2:]:
            condition = F.interpolate(condition, size=x.shape[2:], mode="nearest")
        shortcut = self.conv_s(self.norm_s(x, condition)) if self.learned_shortcut else x
        dx = spatial_depthwise_conv3x3(self.norm_0(x), self.kernels_0(condition))
        dx = F.leaky_relu(self.pointwise_0(dx) * self.gate_0(condition), 0.2)
        dx = spatial_depthwise_conv3x3(self.norm_1(dx), self.kernels_1(condition))
        dx = F.leaky_relu(self.pointwise_1(dx) * self.gate_1(condition), 0.2)
        return shortcut + dx
