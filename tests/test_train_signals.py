"""SIGTERM / SIGINT to the whole process group of a real ``python -m components.train`` with DataLoader
workers (what `timeout`, `kill -TERM -PGID`, systemd, Slurm, Kubernetes and Ctrl-C do): a checkpoint,
a cleanly ended MLflow run, exit 0 (SIGTERM) or 130 (SIGINT), no worker traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from train_fixtures import tiny_settings, write_prepared

from dagan.checkpoint import load_checkpoint


class Training:
    """A components.train subprocess in its own session (= process group), its output collected by a thread."""

    def __init__(self, tmp_path: Path, *overrides: str):
        prepared = write_prepared(tmp_path / "prepared", num_train=8)
        self.out_dir = tmp_path / "out"
        settings = tiny_settings(prepared, self.out_dir, max_steps=100_000, checkpoint_every=100_000,
                                 sample_every=0, log_every=1)
        settings["dataset"]["num_workers"] = 2  # worker processes that receive the group's signal too
        settings["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "signals"}
        self.tracking_uri = settings["mlflow"]["tracking_uri"]
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "components.train", "--params", str(params), *overrides], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"never printed {text!r}:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.1)

    def signal_group(self, signum: int) -> tuple[int, str]:
        os.killpg(self.process.pid, signum)
        try:
            code = self.process.wait(timeout=180)
        finally:
            self.kill()
        self.reader.join(timeout=10)
        return code, "".join(self.lines)

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_checkpoints_and_ends_the_mlflow_run(tmp_path, signum, exit_code):
    from mlflow import MlflowClient

    training = Training(tmp_path)
    training.wait_for("step 3/")  # the DataLoader workers are running
    code, output = training.signal_group(signum)

    assert code == exit_code, output[-3000:]
    assert "killed by signal" not in output and "Traceback" not in output, output[-3000:]
    name = signal.Signals(signum).name
    assert "stopped at step" in output and name in output
    metrics = json.loads((training.out_dir / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["steps"] >= 3
    checkpoint = training.out_dir / "checkpoints" / f"step-{metrics['steps']:08d}.pt"
    assert load_checkpoint(checkpoint)["step"] == metrics["steps"]
    run_id = json.loads((training.out_dir / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient(training.tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["dagan.stop_reason"] == name
