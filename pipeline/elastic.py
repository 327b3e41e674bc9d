"""``python -m pipeline.elastic TORCHRUN_ARGS``: one node of a distributed training, torchrun made safe to restart.

Every node of a TrainJob runs this (pipeline/trainjob.py, :func:`pipeline.trainjob.node_command`
builds the command). It is torchrun (``torch.distributed.run``) with two changes:

* It turns off the rendezvous store sharing of torch's c10d rendezvous
  (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, unless the environment sets it). With sharing, the
  workers of every restart meet in one store, kept apart only by the restart count; but each
  agent counts its own restarts (the node whose worker failed counts one, the others restart
  for the new round without counting), so after a worker of one node dies the restarted
  workers read the previous attempt's addresses and hang in ``init_process_group`` (seen here
  with torch 2.14.1: two nodes, one worker killed; PyTorch's issue "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=0
  is not compatible with torchelastic restarts"). Without sharing, the rank-0 worker of every
  attempt starts a fresh store.
* A node that cannot go on ends with one line on stderr and status 1 instead of a traceback:
  fewer nodes than ``--nnodes`` joined within the rendezvous's ``join_timeout`` (a node was
  lost and no replacement came), the rendezvous store is gone (it lives in the agent of the
  node that serves ``--rdzv-endpoint``, node 0 of a TrainJob), or the rendezvous was closed by
  another node. A worker group that failed after all its restarts prints torchrun's failure
  summary (its root cause) without the launcher's own traceback.

What a lost or preempted node means for a run: docs/KUBEFLOW.md, "When things fail".
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

SHARE_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
DEFAULT_JOIN_TIMEOUT_S = 600  # torch's default for the c10d rendezvous
RESUME_ADVICE = ("the checkpoints in train.out_dir are kept: submit the job again to resume from the newest "
                 "(a retried pipeline train step does)")


def join_timeout_s(rdzv_conf: str) -> int:
    """The ``join_timeout`` of torchrun's ``--rdzv-conf key=value,...`` (torch's default when absent)."""
    for item in rdzv_conf.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "join_timeout" and value.strip():
            return int(value)
    return DEFAULT_JOIN_TIMEOUT_S


def failure_line(err: BaseException, rdzv_id: str, endpoint: str, nnodes: str, join_timeout: int) -> str | None:
    """One line for a node that cannot go on, or None for an error that is not about the rendezvous."""
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousClosedError,
        RendezvousConnectionError,
        RendezvousTimeoutError,
    )

    where = f"the rendezvous {rdzv_id!r} at {endpoint}"
    if isinstance(err, RendezvousTimeoutError):
        needed = nnodes.split(":")[0]
        return (f"error: fewer than {needed} nodes joined {where} within {join_timeout} s: a node was lost (or never "
                f"started) and no replacement joined in time; {RESUME_ADVICE}")
    if isinstance(err, RendezvousConnectionError):
        return (f"error: lost the store of {where}: the node that serves it (node 0 of a TrainJob) is gone; "
                f"{RESUME_ADVICE}")
    if isinstance(err, RendezvousClosedError):
        return f"error: {where} was closed: another node ended the job (its log says why); {RESUME_ADVICE}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(SHARE_STORE_ENV, "1")
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = run.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run.run(args)
    except ChildFailedError as err:
        print(err, file=sys.stderr)  # torchrun's summary: the failed workers and the root cause
        return 1
    except SignalException as err:
        print(f"stopped by {signal.Signals(err.sigval).name}: the workers were asked to write a checkpoint and stop",
              file=sys.stderr)
        return 128 + int(err.sigval)
    except Exception as err:
        line = failure_line(err, args.rdzv_id, args.rdzv_endpoint, args.nnodes, join_timeout_s(args.rdzv_conf))
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
