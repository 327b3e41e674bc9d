"""A training owns its ``train.out_dir`` while it runs: an exclusive lock that dies with the process.

Two trainings writing into one folder would replace each other's checkpoints and mix their runs. The
training takes an exclusive ``flock`` on ``<out_dir>/.train.lock`` before it touches the folder and
holds it to the end (:func:`hold_folder`). The kernel releases the lock when the process ends in any
way (exit, SIGKILL, OOM), so a lock is never left behind: the file stays, the lock does not. A second
training into the same folder stops at once with one line naming the folder and the process (pid
and host) that holds it. The file holds that description, written once the lock is taken.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".train.lock"


class FolderInUseError(FileExistsError):
    """Another live process holds the folder's lock; the message names the folder and that process."""


def describe_this_process() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


@contextmanager
def hold_folder(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock for the block (the folder is created when missing); a FolderInUseError when a live
    process holds it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 400, 0).decode(errors="replace").strip() or "a process that is starting"
            raise FolderInUseError(f"{out_dir} is in use by another training ({holder}); wait for it to end (or stop "
                                   "it), or train into another train.out_dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{describe_this_process()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
