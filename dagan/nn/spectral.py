"""Spectral normalisation (Miyato et al. 2018, used by SPADE/DAGAN's G and D) with a fused backward.

:func:`spectral_norm` is :func:`torch.nn.utils.spectral_norm` — the same ``weight_orig``
parameter, ``weight_u`` / ``weight_v`` buffers, state_dict hooks and power iteration (one step
per training-mode forward, none in eval mode) — with one change for speed (issue 8): the
gradient of W / sigma, sigma = u^T W v with u, v held constant, is computed in one fused
expression, dW = (G - <G, W> / sigma * u v^T) / sigma, instead of autograd's chain of
elementwise ops over the weight. The 1024x1024x3x3 weights of the generator's first blocks
make that chain memory-bound and slow on CPUs; the values are the same up to float rounding
(tests/test_fast_paths.py checks it in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.spectral_norm import SpectralNorm


class _DivideBySigma(torch.autograd.Function):
    """weight / (u . (W v)) for a weight whose matrix view is weight.reshape(out_channels, -1)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sigma = torch.dot(u, torch.mv(weight.reshape(weight.shape[0], -1), v))
        ctx.save_for_backward(weight, u, v, sigma)
        return weight / sigma

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight, u, v, sigma = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.contiguous_format)
        weight = weight.contiguous(memory_format=torch.contiguous_format)
        inner = torch.dot(grad.reshape(-1), weight.reshape(-1))
        grad_matrix = torch.addr(grad.reshape(grad.shape[0], -1), u * (-inner / sigma), v)
        return grad_matrix.div_(sigma).view(weight.shape), None, None


class FusedSpectralNorm(SpectralNorm):
    """torch's SpectralNorm hook with :class:`_DivideBySigma` computing the normalised weight."""

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        if do_power_iteration:
            with torch.no_grad():
                matrix = self.reshape_weight_to_matrix(weight)
                for _ in range(self.n_power_iterations):
                    v = F.normalize(torch.mv(matrix.t(), u), dim=0, eps=self.eps, out=v)
                    u = F.normalize(torch.mv(matrix, v), dim=0, eps=self.eps, out=u)
                if self.n_power_iterations > 0:  # clones: a later forward updates the buffers in place
                    u = u.clone(memory_format=torch.contiguous_format)
                    v = v.clone(memory_format=torch.contiguous_format)
        return _DivideBySigma.apply(weight, u, v)


def spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """Spectral-normalise ``module.weight`` (output channels first, as for Conv2d and Linear)."""
    torch.nn.utils.spectral_norm(module, n_power_iterations=n_power_iterations, eps=eps, dim=0)
    for key, hook in module._forward_pre_hooks.items():
        if type(hook) is SpectralNorm and hook.name == "weight":
            module._forward_pre_hooks[key] = FusedSpectralNorm(hook.name, hook.n_power_iterations, hook.dim, hook.eps)
            return module
    raise RuntimeError(f"torch.nn.utils.spectral_norm registered no SpectralNorm hook on {type(module).__name__}")
