"""Exponential moving average of the generator's weights (an optional evaluation generator).

``ema = decay * ema + (1 - decay) * current`` after every generator update; buffers
(BatchNorm running statistics, spectral-norm vectors) are copied as they are. The EMA copy
never trains and never needs gradients.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage:
    """Holds ``module``: a frozen copy of the tracked network, updated by :meth:`update`."""

    def __init__(self, network: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(network).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the average towards ``network`` (the unwrapped module, not a DDP wrapper)."""
        for average, current in zip(self.module.parameters(), network.parameters(), strict=True):
            average.lerp_(current.detach(), 1.0 - self.decay)
        for average, current in zip(self.module.buffers(), network.buffers(), strict=True):
            average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
