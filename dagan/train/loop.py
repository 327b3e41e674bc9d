"""The training loop: one function for a single process and for torchrun DDP.

Per step: learning rates from the schedule, one G update (D frozen), one D update, the EMA
update, then (rank 0 only) logging, sample grids and checkpoints. A run resumes from the
newest checkpoint in ``train.out_dir`` (or an explicit one) and reproduces the uninterrupted
run: the checkpoint holds every state, the data order and augmentation are functions of
(seed, epoch, index), and the sampler starts mid-epoch at the saved step; the config may
change only as :mod:`dagan.train.resume` allows. A new run may start from the weights of another
checkpoint (``train.init_from``, e.g. an imported official model). SIGTERM (preemption), SIGINT
(Ctrl-C) or a ``should_stop`` request ends the run after the current step with a checkpoint
(:mod:`dagan.train.signals`). A non-finite loss stops the run before its update is applied, and
the weights are checked after every update (:mod:`dagan.finite`); nothing non-finite is ever
written, so the last checkpoint named as good is good.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

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
from dagan.data import Manifest, PairedDataset, read_manifest
from dagan.distributed import DistributedContext, ResumableDistributedSampler, all_ranks_sum, setup, teardown, unwrap
from dagan.finite import all_finite, describe_non_finite, module_tensors, non_finite_tensors
from dagan.heap import reuse_freed_memory
from dagan.labels import semantic_input
from dagan.schedule import lr_factor, set_learning_rate
from dagan.schedule import total_steps as planned_steps
from dagan.train.callbacks import NullLogger, Progress, StartReport, StepReport, TrainingLogger, log
from dagan.train.signals import StopSignals, ignore_stop_signals, stop_signals_blocked
from dagan.train.state import TrainingState, build_state
from dagan.train.steps import (
    LossWeights,
    NonFiniteLossError,
    NonFiniteWeightsError,
    calibration_fake,
    d_step,
    g_step,
)
from dagan.visualize import sample_grid

SAMPLE_ROWS = 4  # rows of the training's sample grids


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


def _train(config: Config, logger: TrainingLogger, resume: str | Path | None, context: DistributedContext,
           signals: StopSignals):
    opts = config.train
    batch_size, epochs = resolved_value(opts.batch_size), resolved_value(opts.epochs)
    epochs_decay, lr_schedule = resolved_value(opts.epochs_decay), resolved_value(opts.lr_schedule)
    device = context.device
    manifest = read_manifest(config.dataset.prepared_dir)
    _calibration_dataset.cache_clear()  # built once per run, at the first checkpoint
    dataset = PairedDataset(config.dataset.prepared_dir, "train", crop_size=resolved_value(config.dataset.crop_size),
                            aspect_ratio=resolved_value(config.dataset.aspect_ratio), train=True,
                            flip=config.dataset.flip, seed=opts.seed)
    sampler = ResumableDistributedSampler(dataset, context, batch_size, opts.seed)
    loader_generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=sampler.batch_per_rank, sampler=sampler, drop_last=True,
                        num_workers=config.dataset.num_workers, pin_memory=device.type == "cuda",
                        generator=loader_generator, worker_init_fn=ignore_stop_signals)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = planned_steps(steps_per_epoch, epochs, epochs_decay, opts.max_steps)

    state = build_state(config, manifest.semantic_nc, context, manifest.num_label_channels)
    out_dir = Path(opts.out_dir)
    resume_path, step, changes = _resume(state, config, manifest.semantic_nc, resume, context)
    last_checkpoint = resume_path
    logger.on_start(StartReport(step, total_steps, resume_path, changes))

    weights = LossWeights.from_config(config.loss)
    progress = Progress(total_steps, step, opts.log_every, enabled=context.is_main)
    metrics: dict[str, float] = {}
    interval_seconds, interval_steps, run_seconds, run_steps = 0.0, 0, 0.0, 0
    stopped_early, stop_reason = False, None
    if context.is_main:
        log.info("training %d steps (%d per epoch, global batch %d on %d process(es), %s)",
                 total_steps, steps_per_epoch, opts.batch_size, context.world_size, device)
    try:
        while step < total_steps and not stopped_early:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch)
            sampler.set_start_step(step - epoch * steps_per_epoch)
            dataset.set_epoch(epoch)
            loader_generator.manual_seed(opts.seed * 100_003 + epoch)
            with stop_signals_blocked():  # workers start with the signals held back (dagan.train.signals)
                batches = iter(loader)
            for batch in batches:
                started = time.perf_counter()
                label = batch["label"].to(device, non_blocking=True)
                instance = batch["instance"].to(device, non_blocking=True) if manifest.has_instance else None
                semantic = semantic_input(label, manifest.num_label_channels, instance)
                real = batch["image"].to(device, non_blocking=True)
                if opts.channels_last:
                    semantic = semantic.contiguous(memory_format=torch.channels_last)
                    real = real.contiguous(memory_format=torch.channels_last)
                factor = lr_factor(step, steps_per_epoch, epochs, epochs_decay, lr_schedule)
                lr_g = set_learning_rate(state.optimizer_g, opts.lr_g, factor)
                lr_d = set_learning_rate(state.optimizer_d, opts.lr_d, factor)
                try:
                    g_losses, fake = g_step(state.generator, state.discriminator, state.optimizer_g, semantic,
                                            real, weights, state.scaler, state.vgg, state.precision, context)
                    d_losses = d_step(state.generator, state.discriminator, state.optimizer_d, semantic, real,
                                      state.scaler, state.precision, context)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1}: {err}; the run stopped before applying this "
                        f"update and wrote no checkpoint for it; last good checkpoint: "
                        f"{last_checkpoint or 'none was written yet'}. {_ADVICE}"
                    ) from None
                if not all_finite(module_tensors(state.generator, state.discriminator)):
                    raise NonFiniteWeightsError(
                        f"the update of step {step + 1} made weights NaN/Inf (its losses were finite: "
                        f"{_losses(g_losses, d_losses)}); no checkpoint holds them; last good checkpoint: "
                        f"{last_checkpoint or 'none was written yet'}. {_ADVICE}")
                if state.ema is not None:
                    state.ema.update(unwrap(state.generator), step + 1)
                step += 1
                seconds = time.perf_counter() - started
                interval_seconds, interval_steps = interval_seconds + seconds, interval_steps + 1
                run_seconds, run_steps = run_seconds + seconds, run_steps + 1
                losses = {**g_losses, **d_losses}
                metrics = {**losses, "lr_g": lr_g, "lr_d": lr_d,
                           "seconds_per_step": run_seconds / run_steps,
                           "images_per_second": batch_size * run_steps / run_seconds}
                progress.update(step, losses)
                if step % opts.log_every == 0 or step == total_steps:
                    logger.log_metrics(step, {
                        **{f"loss/{k}": v for k, v in losses.items()}, "lr/g": lr_g, "lr/d": lr_d,
                        "perf/seconds_per_step": interval_seconds / interval_steps,
                        "perf/images_per_second": batch_size * interval_steps / interval_seconds,
                    })
                    interval_seconds, interval_steps = 0.0, 0
                if context.is_main and opts.sample_every > 0 and step % opts.sample_every == 0:
                    rows = slice(0, SAMPLE_ROWS)
                    logger.log_images(step, "samples", sample_grid(batch["label"][rows], fake[rows], real[rows],
                                                                   manifest.class_colors))
                stop = context.is_main and logger.should_stop(
                    StepReport(step, step // steps_per_epoch, total_steps, metrics, state.eval_generator))
                flags = [float(signals.received is not None), float(stop)]
                if context.distributed:  # every rank stops at the same step
                    flags = all_ranks_sum(torch.tensor(flags, device=device), context).tolist()
                stopped_early = sum(flags) > 0 and step < total_steps
                stop_reason = signals.received or ("should_stop" if flags[1] > 0 else "signal (another rank)")
                if step < total_steps and (stopped_early or step % opts.checkpoint_every == 0):
                    last_checkpoint = _write(state, config, manifest, step, steps_per_epoch,
                                             step_path(out_dir, step), context, logger)
                    if context.is_main:
                        prune_checkpoints(out_dir, opts.keep_last)
                if stopped_early and context.is_main:
                    log.warning("%s: stopped at step %d/%d; checkpoint %s", stop_reason, step, total_steps,
                                last_checkpoint)
                if stopped_early or step >= total_steps:
                    break
        final = checkpoint_dir(out_dir) / FINAL_NAME
        if not stopped_early and (run_steps > 0 or not final.is_file()):
            last_checkpoint = _write(state, config, manifest, step, steps_per_epoch, final,
                                     context, logger)
    finally:
        progress.close()
    return TrainResult(step, total_steps, metrics, last_checkpoint, stopped_early, resume_path,
                       stop_reason if stopped_early else None)


_ADVICE = "Lower the learning rates (train.lr_g / train.lr_d) or use train.amp=off"


def _losses(*parts: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4g}" for part in parts for name, value in part.items())


@functools.lru_cache(maxsize=1)
def _calibration_dataset(prepared_dir: str, crop_size: int, aspect_ratio: float) -> PairedDataset:
    """The training split without augmentation, built (and its shards hashed) once, not at every checkpoint."""
    return PairedDataset(prepared_dir, "train", crop_size=crop_size, aspect_ratio=aspect_ratio, train=False,
                         flip=False)


def _calibration_inputs(config: Config, manifest: Manifest,
                        device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(semantic input, photo, noise seed) of the first ``train.ema_bn_batches`` training batches, in order, not
    augmented (the photo is the style image of a style-encoding generator and the posterior of a ``vae``; the seed
    draws a multimodal generator's noise: :func:`dagan.train.steps.calibration_fake`)."""
    dataset = _calibration_dataset(str(config.dataset.prepared_dir), config.dataset.crop_size,
                                   config.dataset.aspect_ratio)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, num_workers=0)
    for index, batch in zip(range(config.train.ema_bn_batches), loader, strict=False):
        instance = batch["instance"].to(device) if manifest.has_instance else None
        semantic = semantic_input(batch["label"].to(device), manifest.num_label_channels, instance)
        photo = batch["image"].to(device)
        if config.train.channels_last:
            semantic, photo = (t.contiguous(memory_format=torch.channels_last) for t in (semantic, photo))
        yield semantic, photo, config.train.seed + index


def _write(state: TrainingState, config: Config, manifest: Manifest, step: int, steps_per_epoch: int, path: Path,
           context: DistributedContext, logger: TrainingLogger) -> Path:
    """Rank 0 writes the checkpoint atomically (recalibrating the EMA's batch norm first; never one with NaN/Inf
    weights); every rank returns its path."""
    if context.is_main:
        if state.ema is not None and config.train.ema_bn_batches > 0:
            state.ema.recalibrate_batch_norm(_calibration_inputs(config, manifest, context.device),
                                             lambda module, batch: calibration_fake(module, *batch))
        checkpoint = state.to_checkpoint(config, manifest.semantic_nc, step, step // steps_per_epoch)
        bad = {**non_finite_tensors(checkpoint["generator"], "generator."),
               **non_finite_tensors(checkpoint["discriminator"], "discriminator."),
               **non_finite_tensors(checkpoint["ema"] or {}, "ema.")}
        if bad:
            raise NonFiniteWeightsError(f"step {step}: the weights hold {describe_non_finite(bad)}; {path} was not "
                                        f"written. {_ADVICE}")
        save_checkpoint(checkpoint, path)
        logger.on_checkpoint(step, path)
    return path
