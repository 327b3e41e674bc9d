"""A real two-node Ray cluster on this machine for the sweep tests: ``ray start --head`` and one
``ray start --address`` worker, each a separate process tree with its own CPU count and a custom
resource that names it (``head_slot`` / ``worker_slot``), token authentication on.

Every node is started with ``--block`` in its own session, so the test can stop one node alone: a
SIGKILL to the worker's process group is a lost node (its raylet, agents and object store die at
once; its Ray workers notice their raylet is gone and exit), and :meth:`RayCluster.stop` stops what
is left, also when a test fails. ``ray stop`` is never used: it stops every Ray process of the
machine, other sessions' too.

Addresses: the dashboard (the Jobs API the tests submit to) binds 127.0.0.1. Ray's node-to-node
services (GCS, raylets, object managers) listen on the machine's address: Ray turns 127.0.0.1 into
the machine's reachable address for any multi-node cluster and refuses a second node on loopback
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``). Token authentication (``RAY_AUTH_MODE=token``) guards them:
without the cluster's token no RPC or HTTP request is served.

Ray's memory monitor is off (``RAY_memory_monitor_refresh_ms=0``): it watches the whole machine's
memory and kills Ray workers when it is 95 % used, which on a machine shared with other work kills
trials for memory they do not use.

Every port is an ephemeral one chosen here (Ray's defaults are fixed ports: 6379, 8265, 10001,
52365, ... which another Ray on the machine may hold), and the session folder is a short temporary
folder (Ray's unix sockets live there, and a socket path may not exceed 107 bytes).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow_fixtures import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 300  # a node starts in ~20 s on an idle 2-core machine; minutes when it is loaded
OBJECT_STORE_BYTES = 100 * 1024**2  # the sweep puts almost nothing there (Ray's default takes 30 % of the RAM)


class RayCluster:
    """Start with :meth:`start_head`, :meth:`add_worker`; always :meth:`stop` (a fixture's finalizer)."""

    def __init__(self, env: dict[str, str]):
        self.root = Path(tempfile.mkdtemp(prefix="ray-"))  # short: unix socket paths live under it
        self.token = secrets.token_hex(16)
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_monitor_refresh_ms": "0",
                    "HOME": str(self.root / "home"), "TMPDIR": str(self.root / "tmp"),
                    "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
        (self.root / "home").mkdir()
        (self.root / "tmp").mkdir()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.node_manager_ports: dict[str, int] = {}
        self.node_args: dict[str, tuple[str, ...]] = {}
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, *args: str) -> None:
        self.node_args[name] = args
        self.node_manager_ports[name] = free_port()  # also names the node's Ray workers (their command line)
        ports = [f"--node-manager-port={self.node_manager_ports[name]}"] + [f"--{flag}={free_port()}" for flag in (
            "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port")]
        log = (self.root / f"{name}.log").open("w")
        self.nodes[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--num-cpus=1", f"--resources={json.dumps({f'{name}_slot': 1})}",
             f"--object-store-memory={OBJECT_STORE_BYTES}",
             f"--temp-dir={self.root / 'ray'}", "--disable-usage-stats", *ports, *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_head(self) -> None:
        self._start("head", "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}")

    def add_worker(self) -> None:
        self._start("worker", f"--address=127.0.0.1:{self.gcs_port}")

    def wait_until_up(self, nodes: int) -> None:
        """Until the dashboard answers (with the token) and ``nodes`` nodes are alive; bounded. A node that exits
        while starting is started once more: Ray gives a raylet 30 s to register, which a loaded machine can miss."""
        deadline = time.monotonic() + START_TIMEOUT_S
        restarted: set[str] = set()
        while self.alive_nodes() < nodes:
            for name, process in list(self.nodes.items()):
                if process.poll() is None:
                    continue
                if name in restarted:
                    pytest.fail(f"ray node {name} exited with {process.returncode}:\n{self.log(name)}")
                restarted.add(name)
                self.kill_node(name)
                self._start(name, *self.node_args[name])
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray cluster did not come up with {nodes} nodes in {START_TIMEOUT_S} s:\n"
                            + "\n".join(self.log(name) for name in self.nodes))
            time.sleep(1)

    def _get(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.dashboard_url}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> int:
        try:
            return len(self.node_ids())
        except OSError:  # the dashboard is not up yet
            return 0

    def node_ids(self) -> dict[str, str]:
        """Alive nodes: node id -> "head" | "worker" (from the custom resource each node was started with)."""
        nodes = self._get("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]
        return {node["node_id"]: next(key[:-len("_slot")] for key in node["resources_total"] if key.endswith("_slot"))
                for node in nodes if node["state"] == "ALIVE"}

    def log(self, name: str) -> str:
        return f"--- {name} ---\n" + (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def jobs(self) -> list[dict]:
        """The cluster's Ray jobs (the Jobs API's JobDetails: submission_id, status, driver_info, ...)."""
        return self._get("/api/jobs/")

    def kill_node(self, name: str) -> None:
        """A lost node: SIGKILL to every process of the node, no draining: its ``ray start`` session and its Ray
        workers (sessions of their own, found by the raylet they were started by: ``RAY_RAYLET_PID``)."""
        import psutil

        process = self.nodes.pop(name)
        try:
            raylets = [child.pid for child in psutil.Process(process.pid).children(recursive=True)
                       if child.name() == "raylet"]
        except psutil.NoSuchProcess:
            raylets = []
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill([item.pid for item in self._processes(lambda env: env.get("RAY_RAYLET_PID") in map(str, raylets))])
        process.wait(timeout=30)

    def _processes(self, chosen) -> list:
        """This cluster's processes (the cluster's token in their environment) whose environment ``chosen`` likes."""
        import psutil

        found = []
        for item in psutil.process_iter(["pid"]):
            try:
                env = item.environ()
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if env.get("RAY_AUTH_TOKEN") == self.token and chosen(env):
                found.append(item)
        return found

    def suspend_trials(self) -> list:
        """SIGSTOP this cluster's Ray Tune trials (Ray titles their processes ``ray::ImplicitFunc...``): while they
        are stopped, a check of their progress cannot race them. Give the list to :meth:`resume`."""
        import psutil

        trials = []
        for item in self._processes(lambda env: True):
            try:
                if "ImplicitFunc" in " ".join(item.cmdline()[:1]):
                    item.suspend()
                    trials.append(item)
            except psutil.NoSuchProcess:
                pass
        return trials

    @staticmethod
    def resume(processes: list) -> None:
        import psutil

        for item in processes:
            try:
                item.resume()
            except psutil.NoSuchProcess:
                pass

    def stop(self) -> None:
        """SIGTERM to each ``ray start --block`` (it drains and stops its node), then SIGKILL to what is left."""
        for process in self.nodes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.nodes.values():
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes.clear()
        kill(matching(str(self.root)))  # Ray workers whose raylet is gone exit by themselves; none may linger
        shutil.rmtree(self.root, ignore_errors=True)


def matching(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a folder or a port this test chose)."""
    import psutil

    return [process.info["pid"] for process in psutil.process_iter(["pid", "cmdline"])
            if any(text in part for part in process.info["cmdline"] or ())]


def kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
