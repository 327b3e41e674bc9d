"""System metrics of every node of a torchrun job, side by side in the training's one MLflow run.

MLflow samples a machine's CPU, memory, disk, network and GPUs (``system/*``) in the process that
opens a run with ``log_system_metrics=True``. Under torchrun, rank 0 opens the training's run; the
first process of every other node (``LOCAL_RANK`` 0) follows it: rank 0 publishes the run's id in
torchrun's own key-value store (``MASTER_ADDR:MASTER_PORT``), and each node opens the run in a
background thread after ``mlflow.config.set_system_metrics_node_id("node<N>")`` (``N``: torchrun's
``GROUP_RANK``). So with more than one node every node's metrics are ``system/node<N>/...``, rank 0's
node included; one node keeps MLflow's plain ``system/...``. Rank 0 waits (at most ``NODE_WAIT_S``)
until every node has opened the run before it ends it, so that no node reopens an ended run; a
node's sampler stops by itself once the run has ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import timedelta

log = logging.getLogger("components")

RUN_KEY = "dagan/mlflow/run_id"
FOLLOWED_KEY = "dagan/mlflow/followed/"  # + the node's GROUP_RANK: that node opened the run
NODE_WAIT_S = 60.0  # rank 0, at the end: how long it waits for nodes that have not opened the run yet
# rank 0, at the end: how long it tries to reach the store. Under torch elastic's c10d rendezvous the store lives in
# rank 0's process group, which training has closed by then: a missing store must not hold the run's end for minutes
STORE_CONNECT_S = 5.0
START_WAIT_S = 3600.0  # another node: how long it waits for rank 0 to open the run (data checks, model set-up)


def node_count() -> int:
    """The torchrun job's nodes (1 outside torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def node_id() -> str | None:
    """``node<GROUP_RANK>`` when the job has several nodes, else None (MLflow's plain ``system/`` names)."""
    return f"node{os.environ.get('GROUP_RANK', '0')}" if node_count() > 1 else None


def _store(timeout_s: float):
    """A client of the key-value store that torchrun's processes share."""
    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=timeout_s))


def publish_run(run_id: str) -> None:
    """Rank 0: tell the other nodes which run to follow."""
    if node_count() > 1:
        _store(NODE_WAIT_S).set(RUN_KEY, run_id)


def wait_for_nodes() -> None:
    """Rank 0, before it ends the run: every other node has opened it (or NODE_WAIT_S passed)."""
    if node_count() <= 1:
        return
    keys = [f"{FOLLOWED_KEY}{node}" for node in range(1, node_count())]
    try:
        _store(STORE_CONNECT_S).wait(keys, timedelta(seconds=NODE_WAIT_S))
    except Exception as err:  # noqa: BLE001 - a node that never followed costs its metrics, not the run's end
        log.warning("not every node opened the MLflow run within %.0f s (%s); ending it anyway", NODE_WAIT_S, err)


def follow_run_in_background(connect: Callable[[], object]) -> threading.Thread | None:
    """Another node's first process: open rank 0's run in a thread, for this node's system metrics.

    ``connect`` points MLflow at the tracking store (components.outputs.connect_tracking)."""
    if node_count() <= 1 or os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("RANK", "0") == "0":
        return None
    thread = threading.Thread(target=_follow, args=(connect,), name="mlflow-node-metrics", daemon=True)
    thread.start()
    return thread


def _follow(connect: Callable[[], object]) -> None:
    import mlflow

    name = node_id()
    store = None
    try:
        store = _store(START_WAIT_S)
        run_id = store.get(RUN_KEY).decode()
        connect()
        mlflow.config.set_system_metrics_node_id(name)
        mlflow.start_run(run_id=run_id, log_system_metrics=True)  # this thread's run: never ended from here
        log.info("%s: system metrics go to MLflow run %s as system/%s/*", name, run_id, name)
    except Exception as err:  # noqa: BLE001 - this node's metrics are lost, training goes on
        log.warning("%s: no system metrics in MLflow (%s)", name, str(err).splitlines()[0][:200])
    finally:
        if store is not None:  # done, either way: rank 0 need not wait for this node
            with contextlib.suppress(Exception):
                store.set(f"{FOLLOWED_KEY}{os.environ.get('GROUP_RANK', '0')}", "1")
