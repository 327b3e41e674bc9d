"""What every writer of the library shares about the disk: the errnos of a full disk or quota.

Checkpoints (:mod:`dagan.checkpoint`), shards (:mod:`dagan.data.shards`) and the components' error
handler turn these into one clear line. A module of its own, so that the data code does not import the
checkpoint code (and with it, lazily, every model): dvc.yaml's data stages depend on their import closure.
"""

from __future__ import annotations

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_line(err: OSError) -> str:
    """The one line a full disk (``err.errno`` in DISK_FULL) is reported with, naming the file or folder."""
    where = f" writing {err.filename}" if err.filename else ""
    return (f"error: no space left on the device{where} ({err.strerror}); free space there or write the outputs to "
            "another disk, then run the same command again")
