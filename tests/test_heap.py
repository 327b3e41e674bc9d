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
