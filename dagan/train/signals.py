"""Stop requests by signal: SIGTERM (preemption) and SIGINT (Ctrl-C) end a run with a checkpoint.

``timeout``, ``kill -TERM -PGID``, systemd, Slurm, Kubernetes and a terminal's Ctrl-C signal the
whole process group, DataLoader worker processes included. The training process turns the first
SIGTERM or SIGINT into a flag that the loop checks after every step (:class:`StopSignals`); the
loop then writes a checkpoint and returns. Workers ignore both signals
(:func:`ignore_stop_signals` is their ``worker_init_fn``), so the group's signal cannot kill them
under the running loop; they are started with both signals blocked (:func:`stop_signals_blocked`)
and unblock them only once ignored, so none reaches a worker before that. A second Ctrl-C
restores the previous handler and raises KeyboardInterrupt: pressing it twice stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Records the first SIGTERM/SIGINT as :attr:`received` (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.received: str | None = None  # "SIGTERM" or "SIGINT"
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":  # Ctrl-C twice: stop now
            self._restore()
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader: the main process alone decides when to stop."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT back in this thread (and in processes it forks) until the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
