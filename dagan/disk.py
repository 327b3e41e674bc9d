"""What every writer of the library shares about the disk: the errnos of a full disk or quota.

Checkpoints (:mod:`dagan.checkpoint`), shards (:mod:`dagan.data.shards`) and the components' error
handler turn these into one clear line. A module of its own, so that the data code does not import the
checkpoint code (and with it, lazily, every model): dvc.yaml's data stages depend on their import closure.
"""

from __future__ import annotations

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
