"""Real torch elastic on this machine: two torchrun agents as two "nodes" on 127.0.0.1, each started with the
TrainJob's own node command (:func:`pipeline.trainjob.node_command`: c10d rendezvous, gloo, ``--max-restarts 1``)
running ``components.train`` on a tiny model, with real processes and signals.

* A worker killed with SIGKILL: both agents restart the worker group, training resumes from the newest
  checkpoint and ends with exactly the weights (and optimiser states) of an uninterrupted two-node run: same
  world size, the data order a function of (seed, epoch, index), every state in the checkpoint.
* A node preempted (SIGTERM to its agent): its worker finishes the step, every rank stops, rank 0 writes a
  checkpoint; the other node's worker exits with status 75 so its agent restarts and waits in the rendezvous;
  the node's replacement joins, and the run ends with the uninterrupted run's weights.
* A node lost (its agent and worker killed with SIGKILL) and never replaced: the survivor restarts, waits the
  rendezvous's join timeout for a second node and ends with one line naming the cause; the checkpoints stay.
* Node 0 lost: it hosts the rendezvous store (the first node started here, as node 0 of a TrainJob), so the
  other node ends at once, again with one line.

The uninterrupted reference run is shared by the module. Each node's output goes to a log file (shown when a
test fails); ``LOGLEVEL=INFO`` makes torch elastic report its restarts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from train_fixtures import tiny_settings, write_prepared

from components.train import REMOTE_STOP_EXIT
from dagan.checkpoint import load_checkpoint
from pipeline.trainjob import node_command

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # enough after the first checkpoint for the kill to land mid-run on a fast machine
TIMEOUT_S = 300  # per wait; a loaded 2-core machine needs ~1 min for a run
# The survivor's wait for a lost node's replacement; torch applies it to the first rendezvous too, where the second
# node must start within it (a few seconds on an idle machine, up to ~10 s under heavy load).
JOIN_TIMEOUT_S = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    """One torchrun agent (a "node") and the log file of its output."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_worker(self) -> None:
        (worker,) = psutil.Process(self.process.pid).children()  # torchrun starts its workers itself
        worker.kill()

    def lose(self) -> None:
        """The node is gone: the agent and its workers die at once (the workers run in sessions of their own)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            child.kill()
        self.process.kill()

    def preempt(self) -> None:
        self.process.send_signal(signal.SIGTERM)  # what the kubelet sends to the container's first process

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.lose()
            raise AssertionError(f"node still running after {TIMEOUT_S} s:\n{self.output()[-3000:]}") from None


@dataclass
class Job:
    """A two-node training of the tiny config: its own out_dir, rendezvous id and port."""

    root: Path
    name: str
    join_timeout_s: int = 60
    port: int = field(default_factory=_free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.root / self.name

    def start_node(self, label: str) -> Node:
        params = self.root / f"params-{self.name}.yaml"
        if not params.is_file():
            settings = tiny_settings(self.root / "prepared", self.out_dir, max_steps=STEPS, batch_size=2,
                                     checkpoint_every=1, keep_last=STEPS, sample_every=0)
            params.write_text(yaml.safe_dump(settings))
        command = node_command(["--params", str(params)], num_nodes=2, procs_per_node=1,
                               rdzv_endpoint=f"127.0.0.1:{self.port}", rdzv_id=self.name, max_restarts=1,
                               join_timeout_s=self.join_timeout_s, shutdown_timeout_s=60, python=sys.executable)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO", "GLOO_SOCKET_IFNAME": "lo",
               "MLFLOW_TRACKING_URI": f"sqlite:///{self.root / 'mlflow.db'}"}
        log = self.root / f"{self.name}-{label}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        node = Node(process, log)
        self.nodes.append(node)
        if len(self.nodes) == 1:
            self._wait_for_store(node)
        return node

    def _wait_for_store(self, node: Node) -> None:
        """Let the first node host the rendezvous store, as node 0 of a TrainJob does (the endpoint is its address;
        on 127.0.0.1 every agent could host it, the first to listen wins)."""
        deadline = time.monotonic() + TIMEOUT_S
        while not any(conn.status == psutil.CONN_LISTEN and conn.laddr.port == self.port
                      for conn in psutil.Process(node.process.pid).net_connections("tcp")):
            assert node.process.poll() is None and time.monotonic() < deadline, node.output()[-3000:]
            time.sleep(0.1)

    def wait_for_checkpoint(self, step: int) -> None:
        path = self.out_dir / "checkpoints" / f"step-{step:08d}.pt"
        deadline = time.monotonic() + TIMEOUT_S
        while not path.is_file():
            ended = [node for node in self.nodes if node.process.poll() is not None]
            assert not ended and time.monotonic() < deadline, f"no {path.name}:\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def output(self) -> str:
        return "\n".join(f"--- {node.log.name}\n{node.output()}" for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.lose()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic")
    write_prepared(root / "prepared", num_train=8)
    return root


@pytest.fixture
def new_job(root, request):
    jobs: list[Job] = []

    def make(**changes) -> Job:
        jobs.append(Job(root, f"{request.node.name.removeprefix('test_')[:40]}-{len(jobs)}", **changes))
        return jobs[-1]

    yield make
    for job in jobs:
        job.stop()


@pytest.fixture(scope="module")
def reference(root) -> dict:
    """The final checkpoint of the uninterrupted two-node run."""
    job = Job(root, "reference")
    nodes = [job.start_node("a"), job.start_node("b")]
    try:
        assert [node.wait() for node in nodes] == [0, 0], job.output()[-3000:]
    finally:
        job.stop()
    return load_checkpoint(job.out_dir / "checkpoints" / "final.pt")


def assert_same_training(job: Job, reference: dict) -> None:
    """Bitwise the same weights and optimiser states as the reference run (and as many steps)."""
    final = load_checkpoint(job.out_dir / "checkpoints" / "final.pt")
    assert final["step"] == reference["step"] == STEPS
    for part in ("generator", "discriminator"):
        for key, expected in reference[part].items():
            assert torch.equal(final[part][key], expected), f"{part}.{key} differs"
    for optimizer in ("optimizer_g", "optimizer_d"):
        for index, state in reference[optimizer]["state"].items():
            for key, expected in state.items():
                assert torch.equal(final[optimizer]["state"][index][key], expected), f"{optimizer} {index}.{key}"


def mlflow_runs(job: Job) -> list[str]:
    """The statuses of the MLflow runs of this job's out_dir (rank 0 tags each with it)."""
    with sqlite3.connect(job.root / "mlflow.db") as db:
        rows = db.execute("select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where t.key = 'dagan.out_dir' and t.value = ?", (str(job.out_dir.resolve()),))
        return [status for (status,) in rows]


def test_a_killed_worker_restarts_the_group_and_the_run_ends_as_if_uninterrupted(new_job, reference):
    job = new_job()
    a, b = job.start_node("a"), job.start_node("b")
    job.wait_for_checkpoint(1)
    b.kill_worker()
    assert [a.wait(), b.wait()] == [0, 0], job.output()[-4000:]
    output = job.output()
    assert "exitcode: -9" in b.output() and "will restart worker group" in b.output(), output[-4000:]
    assert "will restart worker group" in a.output(), "the healthy node restarts too (new rendezvous round)"
    assert re.search(r"resumed from \S+step-\d{8}\.pt at step [1-5]\b", output), output[-4000:]
    assert_same_training(job, reference)
    assert mlflow_runs(job) == ["FINISHED"], "the resumed rank 0 continued the same MLflow run"


def test_a_preempted_node_is_replaced_and_the_run_ends_as_if_uninterrupted(new_job, reference):
    job = new_job()
    a, b = job.start_node("a"), job.start_node("b")
    job.wait_for_checkpoint(1)
    b.preempt()
    assert b.wait() == 128 + signal.SIGTERM, b.output()[-3000:]
    assert b.output().rstrip().endswith("the workers were asked to write a checkpoint and stop")
    replacement = job.start_node("b-replacement")  # what Kubernetes does for the deleted pod of an indexed Job
    assert [a.wait(), replacement.wait()] == [0, 0], job.output()[-4000:]
    # the other node restarted its worker group: its stopped worker asked for it (exit 75), or the replacement's
    # arrival made the agent restart the group first (a race both ways end the same)
    restarted = (f"exitcode: {REMOTE_STOP_EXIT}", "new nodes from group_rank=0; will restart worker group")
    assert any(line in a.output() for line in restarted), "the other node's worker group was restarted"
    stop = r"(SIGTERM|signal \(another rank\)): stopped at step [1-5]/6; checkpoint \S+step-\d{8}\.pt"
    assert re.search(stop, job.output()), "rank 0 (on either node) wrote the checkpoint of the stop"
    assert_same_training(job, reference)


def test_a_lost_node_without_replacement_ends_the_survivor_with_one_line(new_job):
    job = new_job(join_timeout_s=JOIN_TIMEOUT_S)
    a, b = job.start_node("a"), job.start_node("b")
    job.wait_for_checkpoint(1)
    b.lose()
    assert a.wait() == 1, a.output()[-3000:]
    last = a.output().rstrip().splitlines()[-1]
    assert last.startswith(f"error: fewer than 2 nodes joined the rendezvous '{job.name}' at 127.0.0.1:{job.port} "
                           f"within {JOIN_TIMEOUT_S} s: a node was lost"), a.output()[-3000:]
    assert "submit the job again to resume" in last and "RendezvousTimeoutError" not in a.output()
    assert "will restart worker group" in a.output(), "the survivor restarted and waited for a replacement first"
    assert (job.out_dir / "checkpoints" / "step-00000001.pt").is_file(), "nothing lost"


def test_losing_node_0_ends_the_others_at_once_with_one_line(new_job):
    """Node 0 hosts the rendezvous store: without it the others cannot even wait for a replacement."""
    job = new_job()
    a, b = job.start_node("a"), job.start_node("b")
    job.wait_for_checkpoint(1)
    a.lose()
    assert b.wait() == 1, b.output()[-3000:]
    last = b.output().rstrip().splitlines()[-1]
    assert last.startswith(f"error: lost the store of the rendezvous '{job.name}' at 127.0.0.1:{job.port}: the node "
                           "that serves it (node 0 of a TrainJob) is gone"), b.output()[-3000:]
    assert (job.out_dir / "checkpoints" / "step-00000001.pt").is_file(), "nothing lost"
