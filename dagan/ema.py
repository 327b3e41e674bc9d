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

Batch norm: the buffers copied from the trained network are its running statistics, which
describe the trained network's activations, not the average's. :meth:`recalibrate_batch_norm`
recomputes them from the average's own activations on a few batches (OASIS recomputes the
statistics of its EMA generator the same way before evaluating it); the training loop does it
before every checkpoint (``train.ema_bn_batches``). The next update copies the trained network's
buffers again, so this never changes the training itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

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
        for average_buffer, buffer in zip(self.module.buffers(), network.buffers(), strict=True):
            average_buffer.copy_(buffer)

    @torch.no_grad()
    def recalibrate_batch_norm(self, inputs: Iterable[Any],
                               forward: Callable[[nn.Module, Any], Any] = lambda module, batch: module(batch)) -> int:
        """Recompute the running statistics of every batch norm of the average from its forward
        passes (train mode, cumulative average) over ``inputs`` (``forward(module, batch)`` runs
        one); returns the number of batches."""
        norms = [m for m in self.module.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative moving average: every batch counts the same
        self.module.train()
        count = 0
        try:
            for batch in inputs:
                forward(self.module, batch)
                count += 1
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            self.module.eval()
        return count

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
