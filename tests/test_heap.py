"""dagan.heap: train.heap_reuse keeps large freed blocks in the heap instead of mmap'd chunks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dagan import heap

# Allocates a 64 MiB tensor and prints glibc's count of mmap'd chunks (mallinfo2().hblks) while it lives.
PROBE = """
import ctypes, sys
import torch
from dagan.heap import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory() is None
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = torch.ones(2**24)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(heap.glibc_version() is None, reason="glibc only (mallopt, mallinfo2)")
@pytest.mark.parametrize(("setting", "new_mmap_chunks"), [("system", 1), ("reuse", 0)])
def test_reuse_keeps_large_blocks_out_of_mmap(setting, new_mmap_chunks):
    result = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent, env={"GLIBC_TUNABLES": ""})
    assert int(result.stdout.strip().splitlines()[-1]) == new_mmap_chunks


def test_a_non_glibc_system_gets_a_reason_not_an_error(monkeypatch):
    monkeypatch.setattr(heap, "glibc_version", lambda: None)
    assert "not a glibc system" in heap.reuse_freed_memory()


@pytest.mark.skipif(heap.glibc_version() is None, reason="glibc only (mallopt, mallinfo2)")
@pytest.mark.parametrize(("environment", "mmapped"), [({"GLIBC_TUNABLES": ""}, True),
                                                     ({"GLIBC_TUNABLES": heap.GLIBC_TUNABLES}, False)])
def test_glibc_tunables_give_a_process_the_setting_that_large_blocks_mmapped_reports(environment, mmapped):
    """bench.official gives the official code (which never calls mallopt) the same heap reuse through the
    environment; large_blocks_mmapped() is how every benchmark row records which allocator it had."""
    probe = "from dagan.heap import large_blocks_mmapped; print(large_blocks_mmapped())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent, env=environment)
    assert result.stdout.strip() == str(mmapped)


@pytest.mark.skipif(heap.glibc_version() is None, reason="glibc only (mallopt, mallinfo2)")
def test_large_blocks_mmapped_sees_mallopt_in_this_process():
    script = ("from dagan.heap import large_blocks_mmapped, reuse_freed_memory; before = large_blocks_mmapped(); "
              "reuse_freed_memory(); print(before, large_blocks_mmapped())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent, env={"GLIBC_TUNABLES": ""})
    assert result.stdout.split() == ["True", "False"]
