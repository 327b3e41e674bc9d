"""Spectral normalisation (Miyato et al. 2018, used by SPADE/DAGAN's G and D) with a fused backward.

:func:`spectral_norm` is :func:`torch.nn.utils.spectral_norm` — the same ``weight_orig``
parameter, ``weight_u`` / ``weight_v`` buffers, state_dict hooks and power iteration (one step
per training-mode forward, none in eval mode) — with three changes for speed (docs/PERFORMANCE.md):

* the gradient of W / sigma, sigma = u^T W v with u, v held constant, is computed in one fused
  expression, dW = G / sigma - <G, W> / sigma^2 * u v^T (one pass over the weight on CPUs),
  instead of autograd's chain of elementwise ops over the weight. The 1024x1024x3x3 weights of
  the generator's first blocks make that chain memory-bound and slow on CPUs;
* sigma = u^T W v reuses the W v the power iteration has just computed (bitwise the same value;
  torch multiplies by W again);
* the weight is used in the memory layout it has. torch reshapes a channels_last weight into
  a contiguous (out, in*kh*kw) matrix, a strided copy of the whole weight per power iteration,
  per forward and per backward; here the matrix is the weight's own memory read as
  (out, kh*kw*in) and only the length-(in*kh*kw) vector v is permuted to match. W / sigma
  then stays channels_last, as the convolution wants it;
* a module that can divide its output by sigma instead (:meth:`dagan.nn.conv.Conv2d.normalizes_output`:
  the GEMM convolution of small maps, where the weight is far larger than the output) is left
  to do so: the hook then computes no W / sigma, and the module calls :meth:`FusedSpectralNorm.power_iteration`.

The values are those of torch's version up to float rounding (tests/test_fast_paths.py).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.spectral_norm import SpectralNorm

from dagan.nn.layout import is_channels_last, weight_matrix


def columns_order(vector: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``vector`` (logical (in, kh, kw) order) in the column order of ``weight_matrix(weight)``."""
    if is_channels_last(weight):
        return vector.view(weight.shape[1:]).permute(1, 2, 0).reshape(-1)
    return vector


def logical_order(vector: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`columns_order`."""
    if is_channels_last(weight):
        in_channels, kernel_h, kernel_w = weight.shape[1:]
        return vector.view(kernel_h, kernel_w, in_channels).permute(2, 0, 1).reshape(-1)
    return vector


class _DivideBySigma(torch.autograd.Function):
    """weight / (u . (W v)) with W = weight.reshape(out_channels, -1), in the weight's own layout.
    ``weight_v``: W v when the power iteration has just computed it (saves a pass over W)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                weight_v: torch.Tensor | None) -> torch.Tensor:
        v_columns = columns_order(v, weight)
        if weight_v is None:
            weight_v = torch.mv(weight_matrix(weight), v_columns)
        sigma = torch.dot(u, weight_v)
        ctx.save_for_backward(weight, u, v_columns, sigma)
        return weight / sigma

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        weight, u, v_columns, sigma = ctx.saved_tensors
        owned = grad.dtype != weight.dtype or grad.stride() != weight.stride()
        if owned:  # the weight's dtype and element order, so one matrix view fits both; a buffer of our own
            grad = torch.empty_like(weight).copy_(grad)
        grad_matrix = weight_matrix(grad)
        inner = torch.dot(grad_matrix.reshape(-1), weight_matrix(weight).reshape(-1))
        if weight.device.type == "cpu":  # one pass; reading the scalars costs no device sync here
            sigma_value = sigma.item()
            update = grad_matrix.addr_ if owned else functools.partial(torch.addr, grad_matrix)  # in place on our copy
            result = update(u, v_columns, beta=1 / sigma_value, alpha=-inner.item() / sigma_value**2)
        else:  # no host sync on accelerators: two passes
            result = torch.addr(grad_matrix, u * (-inner / sigma), v_columns).div_(sigma)
        if is_channels_last(weight):
            out_channels, in_channels, kernel_h, kernel_w = weight.shape
            return result.view(out_channels, kernel_h, kernel_w, in_channels).permute(0, 3, 1, 2), None, None, None
        return result.view(weight.shape), None, None, None


class FusedSpectralNorm(SpectralNorm):
    """torch's SpectralNorm hook with :class:`_DivideBySigma` computing the normalised weight."""

    def __call__(self, module: nn.Module, inputs: tuple) -> None:
        normalizes_output = getattr(module, "normalizes_output", None)
        if normalizes_output is not None and normalizes_output(inputs[0]):
            setattr(module, self.name, None)  # no W / sigma this call: the module divides its output by sigma
            return
        setattr(module, self.name, self.compute_weight(module, do_power_iteration=module.training))

    def power_iteration(self, module: nn.Module, do_power_iteration: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(weight_orig, u, v, W v): one power-iteration step per call in training mode (u and v updated in
        place, then cloned for autograd, as torch's does); in eval mode the current u, v and no W v."""
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        weight_v = None
        if do_power_iteration:
            with torch.no_grad():
                matrix = weight_matrix(weight)
                for _ in range(self.n_power_iterations):
                    v_logical = logical_order(torch.mv(matrix.t(), u), weight)
                    v = F.normalize(v_logical, dim=0, eps=self.eps, out=v)
                    weight_v = torch.mv(matrix, columns_order(v, weight))
                    u = F.normalize(weight_v, dim=0, eps=self.eps, out=u)
                if self.n_power_iterations > 0:  # clones: a later forward updates the buffers in place
                    u = u.clone(memory_format=torch.contiguous_format)
                    v = v.clone(memory_format=torch.contiguous_format)
        return weight, u, v, weight_v

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        return _DivideBySigma.apply(*self.power_iteration(module, do_power_iteration))


def fused_spectral_norm_of(module: nn.Module) -> FusedSpectralNorm | None:
    """The :class:`FusedSpectralNorm` hook of ``module.weight``, or None."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, FusedSpectralNorm) and hook.name == "weight":
            return hook
    return None


def spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """Spectral-normalise ``module.weight`` (output channels first, as for Conv2d and Linear)."""
    torch.nn.utils.spectral_norm(module, n_power_iterations=n_power_iterations, eps=eps, dim=0)
    for key, hook in module._forward_pre_hooks.items():
        if type(hook) is SpectralNorm and hook.name == "weight":
            module._forward_pre_hooks[key] = FusedSpectralNorm(hook.name, hook.n_power_iterations, hook.dim, hook.eps)
            return module
    raise RuntimeError(f"torch.nn.utils.spectral_norm registered no SpectralNorm hook on {type(module).__name__}")
