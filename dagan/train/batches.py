"""The batches a training run reads: this process's share of the training split, resumable at any step.

The data order and augmentation are functions of (``train.seed``, epoch, index) only: the
:class:`~dagan.distributed.ResumableDistributedSampler` shuffles per epoch and starts mid-epoch
at a resumed step, :class:`~dagan.data.PairedDataset` draws its crops and flips per (seed, epoch,
index), and the DataLoader's worker seeds come from a generator seeded per epoch. So a resumed
run reads exactly the batches the uninterrupted run would have read.

DataLoader workers start with SIGTERM/SIGINT blocked and then ignore them
(:mod:`dagan.train.signals`): the training process alone decides when to stop.

:meth:`TrainingBatches.calibration_inputs` serves the EMA's batch-norm recalibration at every
checkpoint (:mod:`dagan.ema`): the first training batches, in order, not augmented.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from dagan.config import Config, resolved_value
from dagan.data import PairedDataset, read_manifest
from dagan.distributed import DistributedContext, ResumableDistributedSampler
from dagan.labels import semantic_input
from dagan.train.signals import ignore_stop_signals, stop_signals_blocked

EPOCH_SEED_STRIDE = 100_003  # worker seeds of epoch e come from a generator seeded with seed * stride + e


class TrainingBatches:
    """The training split's batches for this process (``train.batch_size`` split over the ranks)."""

    def __init__(self, config: Config, context: DistributedContext):
        self.config = config
        self.device = context.device
        self.manifest = read_manifest(config.dataset.prepared_dir)
        dataset = config.dataset
        self.dataset = PairedDataset(dataset.prepared_dir, "train", crop_size=resolved_value(dataset.crop_size),
                                     aspect_ratio=resolved_value(dataset.aspect_ratio), train=True, flip=dataset.flip,
                                     seed=config.train.seed)
        self.sampler = ResumableDistributedSampler(self.dataset, context, resolved_value(config.train.batch_size),
                                                   config.train.seed)
        self.worker_seeds = torch.Generator()
        self.loader = DataLoader(self.dataset, batch_size=self.sampler.batch_per_rank, sampler=self.sampler,
                                 drop_last=True, num_workers=dataset.num_workers,
                                 pin_memory=self.device.type == "cuda", generator=self.worker_seeds,
                                 worker_init_fn=ignore_stop_signals)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def from_step(self, step: int) -> Iterator[dict[str, Any]]:
        """The batches of the global step ``step`` (0-based) and the ones after it, to the end of its epoch."""
        epoch = step // self.steps_per_epoch
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_step(step - epoch * self.steps_per_epoch)
        self.dataset.set_epoch(epoch)
        self.worker_seeds.manual_seed(self.config.train.seed * EPOCH_SEED_STRIDE + epoch)
        with stop_signals_blocked():  # the workers start now, with the signals held back
            return iter(self.loader)

    def model_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot semantic input, photo) of ``batch`` on the training device, channels-last when
        ``train.channels_last``."""
        label = batch["label"].to(self.device, non_blocking=True)
        instance = batch["instance"].to(self.device, non_blocking=True) if self.manifest.has_instance else None
        semantic = semantic_input(label, self.manifest.num_label_channels, instance)
        photo = batch["image"].to(self.device, non_blocking=True)
        if self.config.train.channels_last:
            semantic = semantic.contiguous(memory_format=torch.channels_last)
            photo = photo.contiguous(memory_format=torch.channels_last)
        return semantic, photo

    @functools.cached_property
    def calibration_dataset(self) -> PairedDataset:
        """The training split without augmentation, built (and its shards hashed) once per run, at the first
        checkpoint that needs it."""
        dataset = self.config.dataset
        return PairedDataset(dataset.prepared_dir, "train", crop_size=resolved_value(dataset.crop_size),
                             aspect_ratio=resolved_value(dataset.aspect_ratio), train=False, flip=False)

    def calibration_inputs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(semantic input, photo, noise seed) of the first ``train.ema_bn_batches`` batches of
        ``train.batch_size``, in order, not augmented (the photo is the style image of a style-encoding
        generator and the posterior of a ``vae``; the seed draws a multimodal generator's noise:
        :func:`dagan.train.steps.calibration_fake`)."""
        train = self.config.train
        loader = DataLoader(self.calibration_dataset, batch_size=train.batch_size, shuffle=False, num_workers=0)
        for index, batch in zip(range(train.ema_bn_batches), loader, strict=False):
            yield *self.model_inputs(batch), train.seed + index
