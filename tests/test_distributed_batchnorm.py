"""The CPU (gloo) synchronised batch norm of dagan/distributed.py in two real processes, also under bf16 autocast
(params.yaml's ``train.amp: bf16``): its statistics are those of one BatchNorm2d over both ranks' batches."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dagan.distributed import GlooSyncBatchNorm

CHANNELS = 3
AMP = ("off", "bf16")


def batches() -> torch.Tensor:
    return torch.randn(2, 4, CHANNELS, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1  # rank, N, C, H, W


def _rank(rank: int, store_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        for amp in AMP:
            norm = GlooSyncBatchNorm(CHANNELS)
            x = batches()[rank].requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                out = norm(x.to(torch.bfloat16) if amp == "bf16" else x)
            out.float().sum().backward()
            results[rank, amp] = (norm.running_mean.clone(), norm.running_var.clone(), out.dtype, x.grad is not None)
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_the_statistics_of_the_whole_batch_also_under_bf16_autocast(tmp_path):
    results = mp.Manager().dict()
    mp.start_processes(_rank, args=(str(tmp_path / "store"), results), nprocs=2, start_method="spawn")
    reference = nn.BatchNorm2d(CHANNELS)
    reference(batches().flatten(0, 1))
    for (rank, amp), (mean, var, dtype, has_grad) in sorted(results.items()):
        tolerance = 1e-5 if amp == "off" else 2e-2  # bf16 inputs carry 8 mantissa bits
        torch.testing.assert_close(mean, reference.running_mean, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(var, reference.running_var, rtol=tolerance, atol=tolerance)
        assert dtype == (torch.bfloat16 if amp == "bf16" else torch.float32) and has_grad, (rank, amp)
    assert len(results) == 2 * len(AMP)
