"""Learning-rate schedules: constant for ``epochs`` epochs, then a linear decay over ``epochs_decay``.

Two forms (``train.lr_schedule``):

* ``official`` - what the official DAGAN/SPADE training does: the rate changes once per epoch,
  at the end of it; the decay starts after epoch ``epochs + 1`` and the last epoch runs at
  ``1 / epochs_decay`` of the base rate (it never reaches 0). For the 0-based epoch ``e`` of a
  step the factor is ``1 - max(0, e - epochs) / epochs_decay``.
* ``linear`` - the factor is evaluated per step on the fractional epoch ``step /
  steps_per_epoch``, so the decay is smooth and reaches 0 at the end of the last epoch
  (the built-in synthetic preset, whose 8 decay epochs would make coarse steps).
"""

from __future__ import annotations

LR_SCHEDULES = ("official", "linear")


def lr_factor(step: int, steps_per_epoch: int, epochs: int, epochs_decay: int, schedule: str) -> float:
    """Multiplier of the base learning rate for the optimiser update number ``step`` (0-based)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "official":
        epoch = step // steps_per_epoch
        if epoch <= epochs or epochs_decay <= 0:
            return 1.0
        return max(0.0, 1.0 - (epoch - epochs) / epochs_decay)
    progress = step / steps_per_epoch
    if progress < epochs:
        return 1.0
    if epochs_decay <= 0:
        return 0.0
    return max(0.0, 1.0 - (progress - epochs) / epochs_decay)


def steps_per_epoch(num_samples: int, global_batch: int) -> int:
    """Whole global batches in an epoch of ``num_samples`` (the last partial batch is dropped)."""
    return num_samples // global_batch


def total_steps(steps_in_epoch: int, epochs: int, epochs_decay: int, max_steps: int = 0) -> int:
    """Optimiser updates of a run: every epoch's, or at most ``max_steps`` when > 0."""
    total = (epochs + epochs_decay) * steps_in_epoch
    return min(total, max_steps) if max_steps > 0 else total


def set_learning_rate(optimizer, base_lr: float, factor: float) -> float:
    """Set every parameter group of ``optimizer`` to ``base_lr * factor``; return that value."""
    lr = base_lr * factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
