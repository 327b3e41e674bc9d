"""Weight initialisation shared by G and D: xavier normal with a small gain, zero biases.

Spectral-normalised convs keep their trainable weight in ``weight_orig``; it is initialised
too. The official code initialises only the derived ``weight`` on a GPU (it moves the network
to the GPU first, so the write lands in a stale CPU copy and ``weight_orig`` keeps PyTorch's
default Kaiming-uniform initialisation; biases are zeroed either way) - a bug we do not copy by default;
``model.init_spectral_norm_weights=false`` restores it.
"""

from __future__ import annotations

from typing import cast

from torch import nn


def init_weights(module: nn.Module, gain: float = 0.02, spectral_norm_weights: bool = True) -> None:
    """Xavier-normal weights (``gain``) and zero biases; spectral-norm weights only if ``spectral_norm_weights``."""
    for layer in module.modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        spectral = hasattr(layer, "weight_orig")
        if spectral_norm_weights or not spectral:  # else as the official code on a GPU: the default init
            weight = cast(nn.Parameter, layer.weight_orig) if spectral else layer.weight  # spectral_norm's original
            nn.init.xavier_normal_(weight, gain=gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
