"""Weight initialisation shared by G and D: xavier normal with a small gain, zero biases.

Spectral-normalised convs keep their trainable weight in ``weight_orig``; it is initialised
too (the official code initialises only the derived ``weight`` on GPU, which the next
forward pass overwrites — a bug we do not copy).
"""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    for layer in module.modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        weight = layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight
        nn.init.xavier_normal_(weight, gain=gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
