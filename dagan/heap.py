"""Keep freed memory in the process heap (docs/PERFORMANCE.md, "Commands": allocators).

glibc hands every freed block above its mmap threshold (32 MiB at most) straight back to the
kernel. A training step frees and re-allocates the same large activations and weight copies
every iteration, so each one is page-faulted in again, and writing fresh memory is much slower
than writing reused memory: the step takes longer (the measured cost, and the peak memory that
reuse adds, are in docs/PERFORMANCE.md). :func:`reuse_freed_memory` sets glibc's ``mallopt``
once per process: no mmap'd chunks, and no trimming of the heap's free top below 2 GiB, the
same as :data:`GLIBC_TUNABLES` in the environment of a process at its start (which gives the
setting to a program that does not call ``mallopt``, e.g. the official code in ``bench.official``).
:func:`large_blocks_mmapped` tells which one a process has. Numerics are untouched.
``train.heap_reuse=false`` skips it.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int
GLIBC_TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD_BYTES}"
PROBE_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB)


def glibc_version() -> str | None:
    """"glibc 2.35" style string, or None on other C libraries (musl, macOS, Windows)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None


def reuse_freed_memory() -> str | None:
    """Apply the setting to this process; None when applied, else the reason it could not be."""
    version = glibc_version()
    if version is None:
        return "not a glibc system (mallopt unavailable); the allocator is left as it is"
    libc = ctypes.CDLL(None)
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return None if applied else f"mallopt refused the setting ({version})"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def large_blocks_mmapped() -> bool | None:
    """Whether this process's malloc gives a large block its own mmap'd chunk (glibc's default) rather than
    heap memory that stays reused (the setting); None off glibc. Allocates and frees one 64 MiB block."""
    if glibc_version() is None:
        return None
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    block = libc.malloc(PROBE_BYTES)
    try:
        return libc.mallinfo2().hblks > before
    finally:
        libc.free(block)
