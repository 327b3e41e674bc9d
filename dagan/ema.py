"""Exponential moving average of the generator's weights (an optional evaluation generator).

``ema = beta * ema + (1 - beta) * current`` after every generator update; buffers
(BatchNorm running statistics, spectral-norm vectors) are copied as they are. The EMA copy
never trains and never needs gradients.

``beta`` is ``train.ema_decay`` from the first update on, unless ``rampup`` > 0: then the
average's half-life is at most ``rampup`` times the number of updates so far (StyleGAN2-ADA's
``ema_rampup``), so a short run does not keep its random initialisation in the average. With
decay 0.999 (half-life 693 steps) and no ramp-up, 36% of the average after 1000 steps is still
the initial weights; with ``rampup`` 0.05 the half-life is 50 steps there. The ramp depends
only on the step, so a resumed run averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage:
    """Holds ``module``: a frozen copy of the tracked network, updated by :meth:`update`."""

    def __init__(self, network: nn.Module, decay: float, rampup: float = 0.0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        if rampup < 0.0:
            raise ValueError(f"train.ema_rampup must be >= 0 (0: no ramp-up), got {rampup}")
        self.decay = decay
        self.rampup = rampup
        self.module = copy.deepcopy(network).eval().requires_grad_(False)

    def beta(self, step: int) -> float:
        """The averaging weight of update number ``step`` (1-based): the decay, capped by the ramp-up."""
        if self.rampup <= 0.0:
            return self.decay
        half_life = self.rampup * step
        return min(self.decay, 0.5 ** (1.0 / half_life)) if half_life > 0 else 0.0

    @torch.no_grad()
    def update(self, network: nn.Module, step: int | None = None) -> None:
        """Move the average towards ``network`` (the unwrapped module, not a DDP wrapper).

        ``step`` is the number of generator updates so far, this one included; it is required
        with a ramp-up.
        """
        if self.rampup > 0.0 and step is None:
            raise ValueError("an EMA with a ramp-up needs the step of each update")
        beta = self.beta(step) if step is not None else self.decay
        for average, current in zip(self.module.parameters(), network.parameters(), strict=True):
            average.lerp_(current.detach(), 1.0 - beta)
        for average, current in zip(self.module.buffers(), network.buffers(), strict=True):
            average.copy_(current)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
