"""What the command-line tools print: the log level flags and progress bars.

Every command takes ``-v/--verbose`` (debug messages) and ``-q/--quiet`` (warnings and errors
only). Progress bars go to stderr, only when stderr is a terminal and the log level shows
INFO messages: pipes, log files, CI and ``-q`` get plain log lines (or nothing), never
carriage-return noise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def add_log_level_arguments(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (exclusive), stored as ``args.log_level``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                       default=logging.INFO, help="show debug messages")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       help="show only warnings and errors (no progress bars)")


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines on stderr at ``level`` (a second call changes the level)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(level)


def bars_enabled() -> bool:
    """Progress bars only on a terminal, and not under ``-q``."""
    return sys.stderr.isatty() and logging.getLogger().isEnabledFor(logging.INFO)


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """``items`` with a tqdm bar on stderr when :func:`bars_enabled`, else ``items`` unchanged."""
    if not bars_enabled():
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True))


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it") -> tqdm | None:
    """A manual tqdm bar on stderr (update it yourself), or None when bars are off."""
    if not bars_enabled():
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
