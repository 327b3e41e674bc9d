"""The training loop: one function for a single process and for torchrun DDP.

:func:`train` builds the run's parts, each from its own module: the batches
(:mod:`dagan.train.batches`), the plan of steps (:mod:`dagan.train.plan`) and the training state
(:mod:`dagan.train.state`); it resumes, then calls :meth:`_Run.train_step` until the plan is
complete or a stop is voted. A step sets the learning rates from the schedule, makes one G
update (D frozen) and one D update (:mod:`dagan.train.steps`, paper Eq. 10) and the EMA update;
then (rank 0 only) come the metrics, sample grids and checkpoints that are due. A run resumes
from the newest checkpoint in ``train.out_dir`` (or an explicit one) and reproduces the
uninterrupted run: the checkpoint holds every state, the data order and augmentation are
functions of (seed, epoch, index), and the sampler starts mid-epoch at the saved step; the
config may change only as :mod:`dagan.train.resume` allows. A new run may start from the weights
of another checkpoint (``train.init_from``, e.g. an imported official model). SIGTERM
(preemption), SIGINT (Ctrl-C) or a ``should_stop`` request ends the run after the current step
with a checkpoint (:mod:`dagan.train.signals`). A non-finite loss stops the run before its update
is applied, and the weights are checked after every update (:mod:`dagan.finite`); nothing
non-finite is ever written, so the last checkpoint named as good is good.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dagan.checkpoint import (
    FINAL_NAME,
    checkpoint_dir,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    step_path,
)
from dagan.config import Config, resolved_value
from dagan.distributed import DistributedContext, all_ranks_sum, setup, teardown, unwrap
from dagan.eval.visualize import sample_grid
from dagan.finite import all_finite, describe_non_finite, module_tensors, non_finite_tensors
from dagan.heap import reuse_freed_memory
from dagan.schedule import set_learning_rate
from dagan.train.batches import TrainingBatches
from dagan.train.callbacks import NullLogger, Progress, StartReport, StepReport, Throughput, TrainingLogger, log
from dagan.train.plan import TrainingPlan
from dagan.train.signals import StopSignals
from dagan.train.state import TrainingState, build_state
from dagan.train.steps import NonFiniteLossError, NonFiniteWeightsError, calibration_fake, d_step, g_step

SAMPLE_ROWS = 4  # rows of the training's sample grids
_ADVICE = "Lower the learning rates (train.lr_g / train.lr_d) or use train.amp=off"


@dataclass
class TrainResult:
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last step's losses, throughput
    checkpoint: Path | None = None  # the last checkpoint written (or resumed from)
    stopped_early: bool = False  # a signal or should_stop ended the run before total_steps
    resumed_from: Path | None = None
    stop_reason: str | None = None  # "SIGTERM", "SIGINT" or "should_stop" when stopped_early


def train(config: Config, logger: TrainingLogger | None = None, resume: str | Path | None = None) -> TrainResult:
    """Train per ``config`` (resolved); see the module docstring. Only rank 0 calls ``logger``."""
    if config.train.heap_reuse and (reason := reuse_freed_memory()) is not None:
        log.warning("train.heap_reuse: %s (set train.heap_reuse=false to silence this)", reason)
    context = setup(config.train.device)
    try:
        with StopSignals() as signals:  # from the start: a signal during set-up stops after the first step
            return _train(config, logger if context.is_main and logger is not None else NullLogger(), resume,
                          context, signals)
    finally:
        teardown(context)


def _train(config: Config, logger: TrainingLogger, resume: str | Path | None, context: DistributedContext,
           signals: StopSignals) -> TrainResult:
    batches = TrainingBatches(config, context)
    manifest = batches.manifest
    plan = TrainingPlan.from_config(config.train, batches.steps_per_epoch)
    state = build_state(config, manifest.semantic_nc, context, manifest.num_label_channels)
    resumed_from, step, changes = _resume(state, config, manifest.semantic_nc, resume, context)
    logger.on_start(StartReport(step, plan.total_steps, resumed_from, changes))
    run = _Run(config, context, logger, signals, state, batches, plan, step, resumed_from,
               Progress(plan.total_steps, step, config.train.log_every, enabled=context.is_main),
               Throughput(resolved_value(config.train.batch_size)))
    if context.is_main:
        log.info("training %d steps (%d per epoch, global batch %d on %d process(es), %s)", plan.total_steps,
                 plan.steps_per_epoch, config.train.batch_size, context.world_size, context.device)
    try:
        while not run.is_over:
            for batch in batches.from_step(run.step):
                run.train_step(batch)
                if run.is_over:
                    break
        if run.stop_reason is None:
            run.write_final_checkpoint()
    finally:
        run.progress.close()
    return TrainResult(run.step, plan.total_steps, run.metrics, run.last_checkpoint, run.stop_reason is not None,
                       resumed_from, run.stop_reason)


def _resume(state: TrainingState, config: Config, semantic_nc: int, resume: str | Path | None,
            context: DistributedContext) -> tuple[Path | None, int, tuple[str, ...]]:
    """Restore ``resume`` or the newest checkpoint of ``train.out_dir`` (else start from ``train.init_from`` when
    set): (path resumed from or None, step, config changes)."""
    if context.is_main:
        for path in remove_stale_temporaries(config.train.out_dir):
            log.info("removed %s, left by a killed checkpoint write", path)
    if resume is not None:
        found: tuple[Path, dict[str, Any]] | None = (Path(resume), load_checkpoint(resume, context.device))
    else:
        found = load_latest_checkpoint(config.train.out_dir, context.device)
    if found is None:
        if config.train.init_from:
            state.initialise_from(load_checkpoint(config.train.init_from, context.device), config.train.init_from,
                                  semantic_nc)
            if context.is_main:
                log.info("new run from the weights of %s", config.train.init_from)
        return None, 0, ()
    path, checkpoint = found
    changes = state.restore(checkpoint, path, config, semantic_nc)
    set_rng_state(checkpoint["rng"])
    if context.is_main:
        log.info("resumed from %s at step %d%s", path, checkpoint["step"],
                 f" with changed {', '.join(changes)}" if changes else "")
    return path, checkpoint["step"], changes


@dataclass
class _Run:
    """A run in progress in this process: the parts it trains with and how far it has come."""

    config: Config
    context: DistributedContext
    logger: TrainingLogger  # a NullLogger on the ranks other than 0
    signals: StopSignals
    state: TrainingState
    batches: TrainingBatches
    plan: TrainingPlan
    step: int  # steps done
    last_checkpoint: Path | None  # the last checkpoint written or resumed from
    progress: Progress
    throughput: Throughput
    metrics: dict[str, float] = field(default_factory=dict)  # the last step's losses, learning rates, throughput
    stop_reason: str | None = None  # set when a signal or should_stop ends the run before the plan's last step

    @property
    def is_over(self) -> bool:
        return self.plan.is_complete(self.step) or self.stop_reason is not None

    def train_step(self, batch: dict[str, Any]) -> None:
        """One step on ``batch``: both updates, then what falls due after it. The run's last step (the plan's
        last, or a stop) always logs its metrics and its sample grid, so that every run leaves both
        (dvc.yaml declares ``losses.tsv`` and ``samples/`` as outputs of the train stage)."""
        started = time.perf_counter()
        semantic, real = self.batches.model_inputs(batch)
        losses, fake, rates = self._update(semantic, real)
        self.step += 1
        self.throughput.add(time.perf_counter() - started)
        self.metrics = {**losses, "lr_g": rates["g"], "lr_d": rates["d"], **self.throughput.of_run()}
        self.progress.update(self.step, losses)
        self._vote_on_stopping()
        if self.plan.needs_logging(self.step) or self.is_over:
            self._log_metrics(losses, rates)
        if self.context.is_main and (self.plan.needs_samples(self.step) or self.is_over):
            self._log_samples(batch["label"], fake, real)
        if self.plan.needs_checkpoint(self.step, stopping=self.stop_reason is not None):
            self._write_checkpoint(step_path(self.config.train.out_dir, self.step))
            if self.context.is_main:
                prune_checkpoints(self.config.train.out_dir, self.config.train.keep_last)
        if self.stop_reason is not None and self.context.is_main:
            log.warning("%s: stopped at step %d/%d; checkpoint %s", self.stop_reason, self.step,
                        self.plan.total_steps, self.last_checkpoint)

    def _update(self, semantic: torch.Tensor,
                real: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, dict[str, float]]:
        """The step's learning rates, the G then the D update, the check of the new weights and the EMA
        update: (losses, G's fake batch, learning rates {"g", "d"})."""
        state, train = self.state, self.config.train
        factor = self.plan.lr_factor(self.step)
        rates = {"g": set_learning_rate(state.optimizer_g, train.lr_g, factor),
                 "d": set_learning_rate(state.optimizer_d, train.lr_d, factor)}
        try:
            g_losses, fake = g_step(state, semantic, real)
            losses = {**g_losses, **d_step(state, semantic, real)}
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step + 1}: {err}; the run stopped before applying this update and "
                f"wrote no checkpoint for it; last good checkpoint: {self._last_good()}. {_ADVICE}"
            ) from None
        if not all_finite(module_tensors(state.generator, state.discriminator)):
            described = ", ".join(f"{name}={value:.4g}" for name, value in losses.items())
            raise NonFiniteWeightsError(
                f"the update of step {self.step + 1} made weights NaN/Inf (its losses were finite: {described}); no "
                f"checkpoint holds them; last good checkpoint: {self._last_good()}. {_ADVICE}")
        if state.ema is not None:
            state.ema.update(unwrap(state.generator), self.step + 1)
        return losses, fake, rates

    def _last_good(self) -> str:
        return str(self.last_checkpoint or "none was written yet")

    def _log_metrics(self, losses: dict[str, float], rates: dict[str, float]) -> None:
        """The step's losses, learning rates and throughput (since the last logged step) to the logger."""
        self.logger.log_metrics(self.step, {
            **{f"loss/{name}": value for name, value in losses.items()}, "lr/g": rates["g"], "lr/d": rates["d"],
            **{f"perf/{name}": value for name, value in self.throughput.of_interval().items()},
        })

    def _log_samples(self, label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> None:
        """The sample grid label | fake | real of the step's first rows."""
        rows = slice(0, SAMPLE_ROWS)
        self.logger.log_images(self.step, "samples", sample_grid(label[rows], fake[rows], real[rows],
                                                                 self.batches.manifest.class_colors))

    def _vote_on_stopping(self) -> None:
        """After every step every rank votes (a stop signal received; on rank 0, the logger's ``should_stop``);
        one vote stops every rank after this step, unless it was the last."""
        requested = self.context.is_main and self.logger.should_stop(StepReport(
            self.step, self.plan.epoch(self.step), self.plan.total_steps, self.metrics, self.state.eval_generator))
        votes = [float(self.signals.received is not None), float(requested)]
        if self.context.distributed:
            votes = all_ranks_sum(torch.tensor(votes, device=self.context.device), self.context).tolist()
        if sum(votes) > 0 and not self.plan.is_complete(self.step):
            self.stop_reason = self.signals.received or ("should_stop" if votes[1] > 0 else "signal (another rank)")

    def write_final_checkpoint(self) -> None:
        """``final.pt`` after the last step (a resumed run with no step left writes it only when it is missing)."""
        final = checkpoint_dir(self.config.train.out_dir) / FINAL_NAME
        if self.throughput.run_steps > 0 or not final.is_file():
            self._write_checkpoint(final)

    def _write_checkpoint(self, path: Path) -> None:
        """Rank 0 writes the checkpoint atomically (recalibrating the EMA's batch norm first; never one with NaN/Inf
        weights); every rank records it as the last one."""
        if self.context.is_main:
            state = self.state
            if state.ema is not None and self.config.train.ema_bn_batches > 0:
                state.ema.recalibrate_batch_norm(self.batches.calibration_inputs(),
                                                 lambda module, batch: calibration_fake(module, *batch))
            checkpoint = state.to_checkpoint(self.config, self.batches.manifest.semantic_nc, self.step,
                                             self.plan.epoch(self.step))
            bad = {**non_finite_tensors(checkpoint["generator"], "generator."),
                   **non_finite_tensors(checkpoint["discriminator"], "discriminator."),
                   **non_finite_tensors(checkpoint["ema"] or {}, "ema.")}
            if bad:
                raise NonFiniteWeightsError(f"step {self.step}: the weights hold {describe_non_finite(bad)}; {path} "
                                            f"was not written. {_ADVICE}")
            save_checkpoint(checkpoint, path)
            self.logger.on_checkpoint(self.step, path)
        self.last_checkpoint = path
