"""A real ``mlflow server`` on loopback for the tests that need a tracking server (sweeps, credentials)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real tracking server on loopback: sqlite backend and proxied artifacts in a tmp folder.

    It starts in the background (importing mlflow takes seconds) while the test prepares its data;
    :meth:`url` waits until it answers."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow_cli) if mlflow_cli.exists() else shutil.which("mlflow"), "server",
                   "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                   "--artifacts-destination", str(root / "server-artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        # No job-execution workers (MLflow's GenAI jobs: a job runner and several huey consumers per server).
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = (root / "server.log").open("w")
        # Its own process group: `mlflow server` starts uvicorn as a child, and stop() ends both.
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=root,
                                        start_new_session=True)

    def url(self) -> str:
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """End the server's whole process group (the CLI and its uvicorn child), then wait for the CLI."""
        for signal_number in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, signal_number)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=20)
                os.killpg(self.process.pid, signal.SIGKILL)  # a uvicorn child that outlived the CLI
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                pass
            break
        self.log.close()
