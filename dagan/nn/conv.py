"""A 3x3 convolution that runs as one matrix multiply on small feature maps.

The generator's first blocks convolve 1024 channels at 2x4 to 8x16 pixels (Cityscapes layout,
docs/MODEL.md, "Backbone"). There the convolution library spends its time reordering the
1024x1024x3x3 weight and its gradient, not multiplying, and unfold + one GEMM is faster; from
16x32 on the convolution is faster again (the timings: docs/PERFORMANCE.md, "What changed").
So :class:`Conv2d` takes the GEMM path only up to :data:`GEMM_MAX_PIXELS` output pixels, and
only on CPUs (where it was measured). Both compute the same sums (up to float rounding;
tests/test_fast_paths.py compares them in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.layout import is_channels_last, weight_matrix

GEMM_MAX_PIXELS = 128  # 8x16; the GEMM path lost at 16x32 (512 pixels) in every precision measured


def conv3x3_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1) for a 3x3 weight, as unfold + (bias +) one matrix multiply.

    Rows of the product are output pixels and columns output channels, so the result is
    channels_last without a copy; it is made contiguous when ``x`` is. The unfolded columns
    follow the weight's own memory order, so the weight is never copied either.
    """
    batch, in_channels, height, width = x.shape
    out_channels = weight.shape[0]
    pixels = height * width
    columns = F.unfold(x, 3, padding=1)  # (batch, in_channels * 9, pixels), (in, kh, kw) order
    if is_channels_last(weight):  # the weight matrix's columns are in (kh, kw, in) order
        columns = columns.view(batch, in_channels, 9, pixels).permute(0, 3, 2, 1)
    else:
        columns = columns.transpose(1, 2)
    columns = columns.reshape(batch * pixels, in_channels * 9)
    matrix = weight_matrix(weight)
    out = columns @ matrix.t() if bias is None else torch.addmm(bias, columns, matrix.t())
    out = out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state_dict and hooks, e.g. spectral norm) whose 3x3, stride 1,
    padding 1 convolutions of CPU maps up to :data:`GEMM_MAX_PIXELS` pixels run as :func:`conv3x3_as_gemm`."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= GEMM_MAX_PIXELS
                and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"):
            return conv3x3_as_gemm(x, weight, bias)
        return super()._conv_forward(x, weight, bias)
