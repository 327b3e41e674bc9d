"""The training loop: one function for a single process and for torchrun DDP (DESIGN.md s. 3).

Per step: learning rates from the schedule, one G update (D frozen), one D update, the EMA
update, then (rank 0 only) logging, sample grids and checkpoints. A run resumes from the
newest checkpoint in ``train.out_dir`` (or an explicit one) and reproduces the uninterrupted
run: the checkpoint holds every state, the data order and augmentation are functions of
(seed, epoch, index), and the sampler starts mid-epoch at the saved step. A new run may start
from the weights of another checkpoint (``train.init_from``, e.g. an imported official model). SIGTERM
(Kubernetes preemption) or a ``should_stop`` request ends the run after the current step
with a checkpoint. A non-finite loss stops the run before its update is applied; nothing is
written for it, so the last good checkpoint stays the newest.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dagan.checkpoint import (
    FINAL_NAME,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
    step_path,
)
from dagan.config import Config
from dagan.data import Manifest, PairedDataset, read_manifest
from dagan.distributed import DistributedContext, ResumableDistributedSampler, all_ranks_sum, setup, teardown, unwrap
from dagan.heap import reuse_freed_memory
from dagan.labels import semantic_input
from dagan.schedule import lr_factor, set_learning_rate
from dagan.train.callbacks import NullLogger, Progress, StepReport, TrainingLogger, log
from dagan.train.samples import palette, sample_grid
from dagan.train.state import TrainingState, build_state
from dagan.train.steps import LossWeights, NonFiniteLossError, d_step, g_step


@dataclass
class TrainResult:
    step: int
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # last step's losses, throughput
    checkpoint: Path | None = None  # the last checkpoint written (or resumed from)
    stopped_early: bool = False  # SIGTERM or should_stop ended the run before total_steps
    resumed_from: Path | None = None


class _Preemption:
    """Turns SIGTERM into a flag checked after every step (main thread only; else a no-op)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config: Config, logger: TrainingLogger | None = None, resume: str | Path | None = None) -> TrainResult:
    """Train per ``config`` (resolved); see the module docstring. Only rank 0 calls ``logger``."""
    if config.train.heap_reuse and (reason := reuse_freed_memory()) is not None:
        log.warning("train.heap_reuse: %s (set train.heap_reuse=false to silence this)", reason)
    context = setup(config.train.device)
    try:
        return _train(config, logger if context.is_main and logger is not None else NullLogger(), resume, context)
    finally:
        teardown(context)


def _train(config: Config, logger: TrainingLogger, resume: str | Path | None, context: DistributedContext):
    opts = config.train
    device = context.device
    manifest = read_manifest(config.dataset.prepared_dir)
    dataset = PairedDataset(config.dataset.prepared_dir, "train", crop_size=config.dataset.crop_size,
                            aspect_ratio=config.dataset.aspect_ratio, train=True, flip=config.dataset.flip,
                            seed=opts.seed)
    sampler = ResumableDistributedSampler(dataset, context, opts.batch_size, opts.seed)
    loader_generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=sampler.batch_per_rank, sampler=sampler, drop_last=True,
                        num_workers=config.dataset.num_workers, pin_memory=device.type == "cuda",
                        generator=loader_generator)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = (opts.epochs + opts.epochs_decay) * steps_per_epoch
    if opts.max_steps > 0:
        total_steps = min(total_steps, opts.max_steps)

    state = build_state(config, manifest.semantic_nc, context)
    out_dir = Path(opts.out_dir)
    resume_path = Path(resume) if resume is not None else latest_checkpoint(out_dir)
    step = 0
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path, map_location=device)
        state.restore(checkpoint, resume_path, config, manifest.semantic_nc)
        set_rng_state(checkpoint["rng"])
        step = checkpoint["step"]
        if context.is_main:
            log.info("resumed from %s at step %d", resume_path, step)
    elif opts.init_from:
        state.initialise_from(load_checkpoint(opts.init_from, map_location=device), opts.init_from,
                              manifest.semantic_nc)
        if context.is_main:
            log.info("new run from the weights of %s", opts.init_from)
    last_checkpoint = resume_path

    weights = LossWeights.from_config(config.loss)
    colors = palette(manifest.class_colors, manifest.num_label_channels)
    progress = Progress(total_steps, step, opts.log_every, enabled=context.is_main)
    metrics: dict[str, float] = {}
    interval_seconds, interval_steps, run_seconds, run_steps = 0.0, 0, 0.0, 0
    stopped_early = False
    if context.is_main:
        log.info("training %d steps (%d per epoch, global batch %d on %d process(es), %s)",
                 total_steps, steps_per_epoch, opts.batch_size, context.world_size, device)
    with _Preemption() as preemption:
        try:
            while step < total_steps and not stopped_early:
                epoch = step // steps_per_epoch
                sampler.set_epoch(epoch)
                sampler.set_start_step(step - epoch * steps_per_epoch)
                dataset.set_epoch(epoch)
                loader_generator.manual_seed(opts.seed * 100_003 + epoch)
                for batch in loader:
                    started = time.perf_counter()
                    label = batch["label"].to(device, non_blocking=True)
                    instance = batch["instance"].to(device, non_blocking=True) if manifest.has_instance else None
                    semantic = semantic_input(label, manifest.num_label_channels, instance)
                    real = batch["image"].to(device, non_blocking=True)
                    if opts.channels_last:
                        semantic = semantic.contiguous(memory_format=torch.channels_last)
                        real = real.contiguous(memory_format=torch.channels_last)
                    factor = lr_factor(step, steps_per_epoch, opts.epochs, opts.epochs_decay, opts.lr_schedule)
                    lr_g = set_learning_rate(state.optimizer_g, opts.lr_g, factor)
                    lr_d = set_learning_rate(state.optimizer_d, opts.lr_d, factor)
                    try:
                        g_losses, fake = g_step(state.generator, state.discriminator, state.optimizer_g, semantic,
                                                real, weights, state.scaler, state.vgg, state.precision, context)
                        d_losses = d_step(state.generator, state.discriminator, state.optimizer_d, semantic, real,
                                          state.scaler, state.precision, context)
                    except NonFiniteLossError as err:
                        kept = last_checkpoint or "none was written yet"
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step + 1}: {err}; the run stopped before applying this "
                            f"update and wrote no checkpoint for it; last good checkpoint: {kept}. Lower the "
                            "learning rates (train.lr_g / train.lr_d) or use train.amp=off"
                        ) from None
                    if state.ema is not None:
                        state.ema.update(unwrap(state.generator), step + 1)
                    step += 1
                    seconds = time.perf_counter() - started
                    interval_seconds, interval_steps = interval_seconds + seconds, interval_steps + 1
                    run_seconds, run_steps = run_seconds + seconds, run_steps + 1
                    losses = {**g_losses, **d_losses}
                    metrics = {**losses, "lr_g": lr_g, "lr_d": lr_d,
                               "seconds_per_step": run_seconds / run_steps,
                               "images_per_second": opts.batch_size * run_steps / run_seconds}
                    progress.update(step, losses)
                    if step % opts.log_every == 0 or step == total_steps:
                        logger.log_metrics(step, {
                            **{f"loss/{k}": v for k, v in losses.items()}, "lr/g": lr_g, "lr/d": lr_d,
                            "perf/seconds_per_step": interval_seconds / interval_steps,
                            "perf/images_per_second": opts.batch_size * interval_steps / interval_seconds,
                        })
                        interval_seconds, interval_steps = 0.0, 0
                    if context.is_main and opts.sample_every > 0 and step % opts.sample_every == 0:
                        logger.log_images(step, "samples", sample_grid(batch["label"], fake, real, colors))
                    stop = context.is_main and logger.should_stop(
                        StepReport(step, step // steps_per_epoch, total_steps, metrics, state.eval_generator))
                    flags = [float(preemption.requested), float(stop)]
                    if context.distributed:  # every rank stops at the same step
                        flags = all_ranks_sum(torch.tensor(flags, device=device), context).tolist()
                    stopped_early = sum(flags) > 0 and step < total_steps
                    if step < total_steps and (stopped_early or step % opts.checkpoint_every == 0):
                        last_checkpoint = _write(state, config, manifest, step, steps_per_epoch,
                                                 step_path(out_dir, step), context, logger)
                        if context.is_main:
                            prune_checkpoints(out_dir, opts.keep_last)
                    if stopped_early and context.is_main:
                        reason = "SIGTERM" if flags[0] > 0 else "should_stop"
                        log.warning("%s: stopped at step %d/%d; checkpoint %s", reason, step, total_steps,
                                    last_checkpoint)
                    if stopped_early or step >= total_steps:
                        break
            final = checkpoint_dir(out_dir) / FINAL_NAME
            if not stopped_early and (run_steps > 0 or not final.is_file()):
                last_checkpoint = _write(state, config, manifest, step, steps_per_epoch, final,
                                         context, logger)
        finally:
            progress.close()
    return TrainResult(step, total_steps, metrics, last_checkpoint, stopped_early, resume_path)


def _calibration_inputs(config: Config, manifest: Manifest, device: torch.device) -> Iterator[torch.Tensor]:
    """The semantic inputs of the first ``train.ema_bn_batches`` training batches, in order, not augmented."""
    dataset = PairedDataset(config.dataset.prepared_dir, "train", crop_size=config.dataset.crop_size,
                            aspect_ratio=config.dataset.aspect_ratio, train=False, flip=False)
    loader = DataLoader(dataset, batch_size=config.train.batch_size, shuffle=False, num_workers=0)
    for _, batch in zip(range(config.train.ema_bn_batches), loader, strict=False):
        instance = batch["instance"].to(device) if manifest.has_instance else None
        semantic = semantic_input(batch["label"].to(device), manifest.num_label_channels, instance)
        yield semantic.contiguous(memory_format=torch.channels_last) if config.train.channels_last else semantic


def _write(state: TrainingState, config: Config, manifest: Manifest, step: int, steps_per_epoch: int, path: Path,
           context: DistributedContext, logger: TrainingLogger) -> Path:
    """Rank 0 writes the checkpoint atomically (recalibrating the EMA's batch norm first); all return its path."""
    if context.is_main:
        if state.ema is not None and config.train.ema_bn_batches > 0:
            state.ema.recalibrate_batch_norm(_calibration_inputs(config, manifest, context.device))
        save_checkpoint(state.to_checkpoint(config, manifest.semantic_nc, step, step // steps_per_epoch), path)
        logger.on_checkpoint(step, path)
    return path
