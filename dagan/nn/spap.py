"""Spatial Pyramid Attentive Pooling (SPAP; Sun and Wu, "Learning Spatial Pyramid Attentive Pooling
in Image Synthesis and Image-to-Image Translation", 2019).

From the paper: a unit for generators and discriminators made of (i) an atrous spatial pyramid
(parallel dilated convolutions that see the same feature at several context sizes), (ii) a
cascade attention that weighs the pyramid levels against each other over spatial positions and
feature channels, visited coarse-to-fine or fine-to-coarse, and (iii) a residual connection.

The paper leaves the layout open; this module chooses (docs/ATTENTION.md lists every choice):

* pyramid: one 3x3 conv ``C -> C`` (bias) per dilation rate in :data:`SPAP_RATES` (1, 2, 4, 8;
  padding = rate, so every level keeps the input size), each followed by LeakyReLU 0.2;
* cascade: the levels sorted by rate, coarsest first (``coarse_to_fine``) or finest first
  (``fine_to_coarse``). ``y_1`` is the first level; for every next level ``f_k``
  ``a_k = sigmoid(conv1x1([y_(k-1), f_k]))`` (2C -> C, bias) is a gate per position *and*
  channel, and ``y_k = a_k * f_k + (1 - a_k) * y_(k-1)``;
* residual: ``out = x + y_K``. With the small initial weights of the model (xavier, gain 0.02)
  the unit starts close to the identity.

``forward`` returns ``(out, gates)``; ``gates`` (B, K-1, H, W) are the channel means of the
gates a_2..a_K (how much each cascade step takes from its new level), drawn in evaluate's
attention figure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.spectral import spectral_norm

SPAP_RATES = (1, 2, 4, 8)
SPAP_ORDERS = ("coarse_to_fine", "fine_to_coarse")


class SpatialPyramidAttentivePooling(nn.Module):
    """SPAP over ``channels`` features; ``spectral`` puts spectral norm on every conv (discriminator use)."""

    def __init__(self, channels: int, order: str = "coarse_to_fine", rates: tuple[int, ...] = SPAP_RATES,
                 spectral: bool = False):
        super().__init__()
        if order not in SPAP_ORDERS:
            raise ValueError(f"SPAP order must be one of {', '.join(SPAP_ORDERS)}, got {order!r}")
        if len(rates) < 2 or any(rate < 1 for rate in rates) or len(set(rates)) != len(rates):
            raise ValueError(f"SPAP needs at least two distinct dilation rates >= 1, got {rates}")
        wrap = spectral_norm if spectral else (lambda conv: conv)
        ordered = sorted(rates, reverse=order == "coarse_to_fine")
        self.order = order
        self.rates = tuple(ordered)  # in cascade order
        self.levels = nn.ModuleList(
            wrap(nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate)) for rate in self.rates
        )
        self.gates = nn.ModuleList(wrap(nn.Conv2d(2 * channels, channels, 1)) for _ in self.rates[1:])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        levels = [F.leaky_relu(conv(x), 0.2) for conv in self.levels]
        mixed = levels[0]
        gate_maps = []
        for gate_conv, level in zip(self.gates, levels[1:], strict=True):
            gate = torch.sigmoid(gate_conv(torch.cat([mixed, level], dim=1)))
            mixed = gate * level + (1 - gate) * mixed
            gate_maps.append(gate.mean(dim=1, keepdim=True))
        return x + mixed, torch.cat(gate_maps, dim=1)


def spap_parameter_count(channels: int, num_rates: int = len(SPAP_RATES)) -> int:
    """Parameters of one SPAP unit: num_rates 3x3 convs (C -> C) and num_rates - 1 1x1 gates (2C -> C)."""
    return num_rates * (9 * channels * channels + channels) + (num_rates - 1) * (2 * channels * channels + channels)
