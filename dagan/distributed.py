"""Single-process and torchrun (DDP) execution: devices, process group, sync BN, samplers.

* ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` joins the
  process group with nccl on GPUs and gloo on CPUs.
* Batch norm statistics are synchronised across ranks (SyncBatchNorm; docs/MODEL.md, "Backbone").
  torch's SyncBatchNorm only runs on accelerators, so on CPU (gloo) :class:`GlooSyncBatchNorm`
  does the same with a differentiable all-reduce.
* DDP wraps with ``broadcast_buffers=False``: every rank updates its own BN statistics and
  spectral-norm vectors from synchronised values, so they stay equal without a broadcast.
* :class:`EpochBatchSampler`-style ordering: a DistributedSampler (also with one replica)
  shuffled with the config seed, cut to whole global batches, that can start mid-epoch for
  an exact resume. Rank ``r`` takes every ``world_size``-th sample of the same permutation,
  so one process with batch B and N processes with B / N each see the same global batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import cast

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from dagan.schedule import steps_per_epoch


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(request: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``request`` (auto | cpu | cuda | cuda:N, the value of ``key``) -> a device; cuda without a GPU is an error."""
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cpu":
        return torch.device("cpu")
    if request == "cuda" or request.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key}={request} but no CUDA GPU is visible to PyTorch "
                f"(torch.cuda.is_available() is False); use {key}=cpu or {key}=auto"
            )
        index = local_rank if request == "cuda" else int(request.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ValueError(f"{key}={request}: only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise ValueError(f"{key}={request!r} is not one of auto, cpu, cuda, cuda:N")


def setup(device_request: str) -> DistributedContext:
    """Resolve the device and, under torchrun (WORLD_SIZE > 1), join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def teardown(context: DistributedContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size={global_batch} is the global batch and must be divisible by the "
            f"number of processes ({world_size}); choose a multiple of {world_size}"
        )
    return global_batch // world_size


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all ranks (works on CPU/gloo).

    Same parameters and buffers as :class:`torch.nn.BatchNorm2d`, so state dicts are
    interchangeable. Gradients flow through the all-gather. Under autocast (bf16 / fp16 inputs) the
    statistics are computed in float32, as torch's own batch norm does, and the output keeps the input's type.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        # Per-rank count, mean and centred sum of squares, combined exactly (Chan et al.): the
        # one-pass E[x^2] - mean^2 loses the precision that small-variance features need.
        count = x.numel() // x.shape[1]
        local_mean = x.mean(dim=(0, 2, 3))
        local_m2 = ((x - local_mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3))
        gathered = dist_fn.all_gather(torch.stack([local_mean, local_m2, torch.full_like(local_mean, count)]))
        counts = torch.stack([g[2, 0] for g in gathered]).detach()
        total = counts.sum()
        means = torch.stack([g[0] for g in gathered])  # (ranks, C)
        mean = (counts[:, None] * means).sum(0) / total
        m2 = sum(g[1] for g in gathered) + (counts[:, None] * (means - mean) ** 2).sum(0)
        var = m2 / total
        if self.track_running_stats:
            assert (self.num_batches_tracked is not None and self.running_mean is not None
                    and self.running_var is not None)  # track_running_stats registers them
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one (torch's on GPU, ours on CPU)."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats, device=device)
            sync.load_state_dict(child.state_dict())
            for converted, original in zip(sync.parameters(), child.parameters(), strict=True):
                converted.requires_grad_(original.requires_grad)  # frozen stays frozen (as torch's conversion)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module


def wrap_ddp(module: nn.Module, context: DistributedContext) -> nn.Module:
    """DDP with broadcast_buffers=False (see module docstring); identity in one process."""
    if not context.distributed:
        return module
    module = convert_sync_batchnorm(module, context.device)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_ranks_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a small tensor over ranks (identity in one process)."""
    if context.distributed:
        values = values.clone()
        dist.all_reduce(values)
    return values


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler cut to ``steps_per_epoch`` whole global batches, startable mid-epoch."""

    def __init__(self, dataset: Dataset, context: DistributedContext, global_batch: int, seed: int):
        super().__init__(dataset, num_replicas=context.world_size, rank=context.rank,
                         shuffle=True, seed=seed, drop_last=True)
        self.batch_per_rank = per_rank_batch(global_batch, context.world_size)
        samples = len(cast(Sized, dataset))  # a map-style dataset
        self.steps_per_epoch = steps_per_epoch(samples, global_batch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {samples} samples, fewer than one global batch "
                f"(train.batch_size={global_batch}); lower train.batch_size"
            )
        self.start_step = 0

    def set_start_step(self, step_in_epoch: int) -> None:
        """Skip the first ``step_in_epoch`` batches of the current epoch (resume)."""
        self.start_step = step_in_epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[: self.steps_per_epoch * self.batch_per_rank]
        return iter(indices[self.start_step * self.batch_per_rank:])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_per_rank
