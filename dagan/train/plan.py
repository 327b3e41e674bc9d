"""The plan of a training run: how many steps, the learning rate of each, and what falls due after it.

Steps count optimiser updates (one G and one D update each); ``step`` below is the number of
steps done. The run ends after ``total_steps`` (every epoch's, or ``train.max_steps``), the
learning rate follows ``train.lr_schedule`` (:mod:`dagan.schedule`), and after a step the loop
logs metrics every ``train.log_every`` steps, draws a sample grid every ``train.sample_every``
steps (both also at the run's last step, the plan's or a stop's), and writes a checkpoint every
``train.checkpoint_every`` steps or when the run stops early (the last step writes ``final.pt``
instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from dagan.config import TrainConfig, resolved_value
from dagan.schedule import lr_factor, total_steps


@dataclass(frozen=True)
class TrainingPlan:
    steps_per_epoch: int
    total_steps: int
    epochs: int  # at the full learning rate
    epochs_decay: int  # of linear decay after them
    lr_schedule: str  # dagan.schedule.LR_SCHEDULES
    log_every: int
    sample_every: int  # 0: the grid of the run's last step only
    checkpoint_every: int

    @classmethod
    def from_config(cls, train: TrainConfig, steps_per_epoch: int) -> TrainingPlan:
        epochs, epochs_decay = resolved_value(train.epochs), resolved_value(train.epochs_decay)
        return cls(steps_per_epoch, total_steps(steps_per_epoch, epochs, epochs_decay, train.max_steps),
                   epochs, epochs_decay, resolved_value(train.lr_schedule), train.log_every, train.sample_every,
                   train.checkpoint_every)

    def epoch(self, step: int) -> int:
        """The 0-based epoch of the update that follows ``step`` done steps."""
        return step // self.steps_per_epoch

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rates for the update that follows ``step`` done steps."""
        return lr_factor(step, self.steps_per_epoch, self.epochs, self.epochs_decay, self.lr_schedule)

    def is_complete(self, step: int) -> bool:
        return step >= self.total_steps

    def needs_logging(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.total_steps

    def needs_samples(self, step: int) -> bool:
        return self.sample_every > 0 and step % self.sample_every == 0

    def needs_checkpoint(self, step: int, stopping: bool) -> bool:
        """A step checkpoint: every ``checkpoint_every`` steps and at an early stop, never at the last step
        (the run writes ``final.pt`` then)."""
        return not self.is_complete(step) and (stopping or step % self.checkpoint_every == 0)
