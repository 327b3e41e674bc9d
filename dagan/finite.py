"""Finiteness of weights: a diverged model is never saved, registered or used to generate.

Training checks its weights after every optimiser step with one fused reduction
(:func:`all_finite`: the 2-norm of all tensors, cheap enough for every step: docs/PERFORMANCE.md,
"Guards"); only when that norm is not finite does the exact per-tensor check decide (a norm
can overflow for huge but finite weights). Checkpoints are checked tensor by tensor before they
are written and before a generator is loaded from one (:func:`non_finite_tensors`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import get_total_norm


def module_tensors(*modules: nn.Module) -> list[torch.Tensor]:
    """The floating-point parameters and buffers of ``modules``."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.is_floating_point()]


@torch.no_grad()
def all_finite(tensors: list[torch.Tensor]) -> bool:
    """True when no element of ``tensors`` is NaN or infinite (fast path: one fused norm)."""
    if not tensors or bool(torch.isfinite(get_total_norm(tensors, 2.0))):
        return True
    return not any(not bool(torch.isfinite(t).all()) for t in tensors)


@torch.no_grad()
def non_finite_tensors(state: Mapping[str, object], prefix: str = "") -> dict[str, int]:
    """{dotted name: count of NaN/Inf elements} over the tensors of a (nested) state dict."""
    found: dict[str, int] = {}
    for name, value in state.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            found.update(non_finite_tensors(value, f"{key}."))
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                found[key] = count
    return found


def describe_non_finite(found: Mapping[str, int]) -> str:
    """``"1240 NaN/Inf values in 12 tensors (first: fc.weight)"``."""
    return f"{sum(found.values())} NaN/Inf values in {len(found)} tensor(s) (first: {next(iter(found))})"
