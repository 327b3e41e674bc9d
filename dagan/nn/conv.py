"""A 3x3 convolution that runs as one matrix multiply on small feature maps.

The generator's first blocks convolve 1024 channels at 2x4 to 8x16 pixels (Cityscapes layout,
docs/MODEL.md, "Backbone"). There the convolution library spends its time reordering the
1024x1024x3x3 weight and its gradient, not multiplying, and unfold + one GEMM is faster; from
16x32 on the convolution is faster again (the timings: docs/PERFORMANCE.md, "What changed").
So :class:`Conv2d` takes the GEMM path only up to :data:`GEMM_MAX_PIXELS` output pixels, and
only on CPUs (where it was measured). Both compute the same sums (up to float rounding;
tests/test_fast_paths.py compares them in float64).

These layers move their weight, not their pixels: a 1024x1024x3x3 weight is 9.4M values, the
output at 8x16 is 131k. With spectral norm (:mod:`dagan.nn.spectral`) the GEMM path therefore
divides the output by sigma instead of the weight (:class:`_SpectralConv3x3AsGemm`): conv(x, W) / sigma
= conv(x, W / sigma), without writing W / sigma and reading it back, and its backward makes the
weight gradient, rank-one spectral-norm term included, in one matrix multiply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from dagan.nn.layout import is_channels_last, weight_matrix
from dagan.nn.spectral import columns_order, fused_spectral_norm_of

GEMM_MAX_PIXELS = 128  # 8x16; the GEMM path lost at 16x32 (512 pixels) in every precision measured


def _columns(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The unfolded 3x3 neighbourhoods of ``x``: (batch * pixels, in_channels * 9), in the column order
    of ``weight_matrix(weight)``, so the weight is never copied."""
    batch, in_channels, height, width = x.shape
    pixels = height * width
    columns = F.unfold(x, 3, padding=1)  # (batch, in_channels * 9, pixels), (in, kh, kw) order
    if is_channels_last(weight):  # the weight matrix's columns are in (kh, kw, in) order
        columns = columns.view(batch, in_channels, 9, pixels).permute(0, 3, 2, 1)
    else:
        columns = columns.transpose(1, 2)
    return columns.reshape(batch * pixels, in_channels * 9)


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(batch * pixels, channels) rows as a (batch, channels, H, W) map of ``like``'s size and layout."""
    batch, _, height, width = like.shape
    image = rows.view(batch, height, width, rows.shape[1]).permute(0, 3, 1, 2)
    return image if like.is_contiguous(memory_format=torch.channels_last) else image.contiguous()


def conv3x3_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=1) for a 3x3 weight, as unfold + (bias +) one matrix multiply.

    Rows of the product are output pixels and columns output channels, so the result is
    channels_last without a copy; it is made contiguous when ``x`` is.
    """
    columns = _columns(x, weight)
    matrix = weight_matrix(weight)
    out = columns @ matrix.t() if bias is None else torch.addmm(bias, columns, matrix.t())
    return _image(out, x)


class _SpectralConv3x3AsGemm(torch.autograd.Function):
    """conv3x3_as_gemm(x, W / sigma, bias) with sigma = u . (W v), computed as (columns @ W^T) / sigma + bias.

    Backward, with g the output gradient as rows and c = <g, out - bias> / sigma (= <G, W> / sigma^2
    of :class:`dagan.nn.spectral._DivideBySigma`, read from the small output instead of the weight):
    dW = [g^T / sigma | -c u] @ [columns; v^T], one GEMM writing the weight gradient once; dx = fold((g @ W) / sigma).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, u: torch.Tensor,
                v: torch.Tensor, weight_v: torch.Tensor | None) -> torch.Tensor:
        v_columns = columns_order(v, weight)
        if weight_v is None:
            weight_v = torch.mv(weight_matrix(weight), v_columns)
        sigma = torch.dot(u, weight_v).item()  # CPU only: no device sync
        columns = _columns(x, weight)
        matrix = weight_matrix(weight)
        out = (torch.mm(columns, matrix.t()).mul_(1 / sigma) if bias is None
               else torch.addmm(bias, columns, matrix.t(), alpha=1 / sigma))
        ctx.save_for_backward(columns, weight, bias, u, v_columns, out)
        ctx.sigma, ctx.x_shape, ctx.x_dtype = sigma, x.shape, x.dtype
        return _image(out, x)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        columns, weight, bias, u, v_columns, out = ctx.saved_tensors
        batch, in_channels, height, width = ctx.x_shape
        sigma = ctx.sigma
        rows = grad.permute(0, 2, 3, 1).reshape(-1, weight.shape[0])
        raw = out if bias is None else out - bias.to(out.dtype)
        inner = torch.dot(rows.to(weight.dtype).reshape(-1), raw.to(weight.dtype).reshape(-1)).item() / sigma
        left = torch.cat([rows.t() * (1 / sigma), (u * -inner)[:, None].to(rows.dtype)], 1)
        right = torch.cat([columns.to(left.dtype), v_columns[None].to(left.dtype)], 0)
        grad_matrix = torch.mm(left, right).to(weight.dtype)  # (out, columns), the weight's own memory order
        if is_channels_last(weight):
            out_channels, _, kernel_h, kernel_w = weight.shape
            grad_weight = grad_matrix.view(out_channels, kernel_h, kernel_w, in_channels).permute(0, 3, 1, 2)
        else:
            grad_weight = grad_matrix.view(weight.shape)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_columns = torch.mm(rows, weight_matrix(weight).to(rows.dtype)).mul_(1 / sigma)
            pixels = height * width
            if is_channels_last(weight):
                grad_columns = grad_columns.view(batch, pixels, 9, in_channels).permute(0, 3, 2, 1)
            else:
                grad_columns = grad_columns.view(batch, pixels, in_channels * 9).transpose(1, 2)
            grad_x = F.fold(grad_columns.reshape(batch, in_channels * 9, pixels), (height, width), 3, padding=1)
            grad_x = grad_x.to(ctx.x_dtype)
        grad_bias = None if bias is None else rows.sum(0).to(bias.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, state_dict and hooks, e.g. spectral norm) whose 3x3, stride 1,
    padding 1 convolutions of CPU maps up to :data:`GEMM_MAX_PIXELS` pixels run as :func:`conv3x3_as_gemm`,
    with a fused spectral norm (:func:`dagan.nn.spectral.spectral_norm`) applied to the output."""

    def takes_gemm_path(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= GEMM_MAX_PIXELS
                and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros")

    def normalizes_output(self, x: torch.Tensor) -> bool:
        """Whether this call divides its output by sigma (asked by the spectral-norm hook before forward)."""
        return self.takes_gemm_path(x) and fused_spectral_norm_of(self) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectral = fused_spectral_norm_of(self) if self.takes_gemm_path(x) else None
        if spectral is not None:
            weight, u, v, weight_v = spectral.power_iteration(self, do_power_iteration=self.training)
            return _SpectralConv3x3AsGemm.apply(x, weight, self.bias, u, v, weight_v)
        return super().forward(x)

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.takes_gemm_path(x):
            return conv3x3_as_gemm(x, weight, bias)
        return super()._conv_forward(x, weight, bias)
