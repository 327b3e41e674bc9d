"""How training talks to the outside: a logger protocol, step reports, throughput and console progress.

The library never imports a tracking system. Callers pass an object with the methods of
:class:`TrainingLogger` (MLflow in ``components.train``, Ray Tune's report in
``components.tune``); :class:`NullLogger` implements them all as no-ops for subclassing.
Only rank 0 calls the logger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from torch import nn

from dagan.console import progress_bar

log = logging.getLogger("dagan.train")


@dataclass(frozen=True)
class StartReport:
    """Passed to :meth:`TrainingLogger.on_start` once the config, the data and the checkpoint to resume
    from are checked, before the first step: a run that cannot start never reaches the logger."""

    step: int  # 0, or the step of the checkpoint resumed from
    total_steps: int
    resumed_from: Path | None
    changes: tuple[str, ...] = ()  # allowed config changes since that checkpoint, "train.max_steps: 400 -> 800"


@dataclass(frozen=True)
class StepReport:
    """Passed to :meth:`TrainingLogger.should_stop` after every step.

    ``generator`` is the network to evaluate (the EMA copy when there is one), unwrapped
    from DDP and in training mode: switch it to ``eval()`` and back to ``train()`` around
    an evaluation, under ``torch.no_grad()``.
    """

    step: int
    epoch: int
    total_steps: int
    metrics: Mapping[str, float]
    generator: nn.Module


class TrainingLogger(Protocol):
    def on_start(self, report: StartReport) -> None:
        """Everything is checked and the first step comes next (the place to open a tracking run)."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Losses, learning rates and throughput, every ``train.log_every`` steps."""

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        """An (H, W, 3) uint8 image, e.g. the sample grid label | fake | real."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint was written (complete and renamed into place)."""

    def should_stop(self, report: StepReport) -> bool:
        """Called after every step; True ends the run cleanly with a checkpoint."""


class NullLogger:
    """A :class:`TrainingLogger` that does nothing; subclass it and override what you need."""

    def on_start(self, report: StartReport) -> None:
        pass

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        pass

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def should_stop(self, report: StepReport) -> bool:
        return False


class Throughput:
    """Seconds per step and images per second, over this process's steps of the run and over the steps
    since the last logged metrics (a resumed run counts from its first step)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size  # the global batch
        self.run_seconds, self.run_steps = 0.0, 0
        self.interval_seconds, self.interval_steps = 0.0, 0

    def add(self, seconds: float) -> None:
        """One more step, which took ``seconds``."""
        self.interval_seconds, self.interval_steps = self.interval_seconds + seconds, self.interval_steps + 1
        self.run_seconds, self.run_steps = self.run_seconds + seconds, self.run_steps + 1

    def of_run(self) -> dict[str, float]:
        return {"seconds_per_step": self.run_seconds / self.run_steps,
                "images_per_second": self.batch_size * self.run_steps / self.run_seconds}

    def of_interval(self) -> dict[str, float]:
        """Over the steps since the last call (or the start); starts the next interval."""
        rates = {"seconds_per_step": self.interval_seconds / self.interval_steps,
                 "images_per_second": self.batch_size * self.interval_steps / self.interval_seconds}
        self.interval_seconds, self.interval_steps = 0.0, 0
        return rates


class Progress:
    """A progress bar with losses and ETA on a terminal (stderr); plain log lines every N steps otherwise."""

    def __init__(self, total: int, initial: int, log_every: int, enabled: bool = True):
        self.log_every = max(1, log_every)
        self.total = total
        self.start_time = time.perf_counter()
        self.start_step = initial
        self.bar = None
        self.enabled = enabled
        if enabled:
            self.bar = progress_bar(total, initial, desc="train", unit="step")

    def update(self, step: int, losses: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        summary = " ".join(f"{name}={value:.3f}" for name, value in losses.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(summary, refresh=False)
            return
        if step % self.log_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.start_time
            done = step - self.start_step
            eta = elapsed / done * (self.total - step) if done else float("nan")
            log.info("step %d/%d %s eta %s", step, self.total, summary, _duration(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
