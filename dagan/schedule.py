"""Learning-rate schedule of the official training (DESIGN.md section 1, "Optimiser").

The learning rate stays constant for ``epochs`` epochs, then decays linearly to zero over
``epochs_decay`` more epochs. The factor is evaluated per step on the fractional epoch
``step / steps_per_epoch``, so the decay is smooth and reaches 0 exactly at the last step.
"""

from __future__ import annotations


def lr_factor(step: int, steps_per_epoch: int, epochs: int, epochs_decay: int) -> float:
    """Multiplier of the base learning rate for the optimiser update number ``step`` (0-based)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    progress = step / steps_per_epoch
    if progress < epochs:
        return 1.0
    if epochs_decay <= 0:
        return 0.0
    return max(0.0, 1.0 - (progress - epochs) / epochs_decay)


def set_learning_rate(optimizer, base_lr: float, factor: float) -> float:
    """Set every parameter group of ``optimizer`` to ``base_lr * factor``; return that value."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
