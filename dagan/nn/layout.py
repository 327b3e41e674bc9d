"""A conv weight's memory read as a matrix, in whichever layout it has (docs/PERFORMANCE.md).

A (out, in, kh, kw) weight is either contiguous, memory order (out, in, kh, kw), or
channels_last, memory order (out, kh, kw, in). :func:`weight_matrix` views that memory as an
(out, -1) matrix without copying, so its columns follow the memory order. Spectral norm
(dagan/nn/spectral.py) and the small-map GEMM convolution (dagan/nn/conv.py) both work on it.
"""

from __future__ import annotations

import torch


def is_channels_last(weight: torch.Tensor) -> bool:
    """A 4-D tensor stored channels_last (and not also contiguous, as 1x1 kernels can be)."""
    return weight.dim() == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight's memory as an (out_channels, -1) matrix: columns in (in, kh, kw) order for a
    contiguous weight, (kh, kw, in) for a channels_last one. A view, never a copy, for both."""
    if is_channels_last(weight):
        return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return weight.reshape(weight.shape[0], -1)
