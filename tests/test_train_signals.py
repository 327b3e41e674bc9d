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
    """A components.train subprocess in its own session (= process group), its output collected by a thread.

    ``prelude``: Python code the process runs before the component (a test's stand-in for a slow step)."""

    def __init__(self, tmp_path: Path, *overrides: str, prelude: str = ""):
        prepared = write_prepared(tmp_path / "prepared", num_train=8)
        self.out_dir = tmp_path / "out"
        settings = tiny_settings(prepared, self.out_dir, epochs=100_000, checkpoint_every=100_000,
                                 sample_every=0, log_every=1)
        settings["dataset"]["num_workers"] = 2  # worker processes that receive the group's signal too
        settings["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "signals"}
        self.tracking_uri = settings["mlflow"]["tracking_uri"]
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        command = [sys.executable, "-c", f"{prelude}\nimport runpy, sys\nsys.argv[0] = 'components.train'\n"
                   "runpy.run_module('components.train', run_name='__main__', alter_sys=True)"] if prelude else \
            [sys.executable, "-m", "components.train"]
        self.process = subprocess.Popen(
            [*command, "--params", str(params), *overrides], cwd=tmp_path, env=env,
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


def test_the_same_command_resumes_after_a_signal_in_the_same_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    first = Training(tmp_path)
    first.wait_for("step 3/")
    assert first.signal_group(signal.SIGTERM)[0] == 0
    stopped_at = json.loads((first.out_dir / "metrics.json").read_text())["steps"]
    run_id = json.loads((first.out_dir / "mlflow_run.json").read_text())["run_id"]

    again = Training(tmp_path)  # the same command
    again.wait_for(f"resumed from {first.out_dir / 'checkpoints' / f'step-{stopped_at:08d}.pt'} at step {stopped_at}")
    again.wait_for(f"step {stopped_at + 2}/")
    code, output = again.signal_group(signal.SIGTERM)
    assert code == 0, output[-3000:]
    assert json.loads((first.out_dir / "metrics.json").read_text())["steps"] >= stopped_at + 2
    assert json.loads((first.out_dir / "mlflow_run.json").read_text())["run_id"] == run_id  # the run continues
    losses = [row.split("\t")[0] for row in (first.out_dir / "losses.tsv").read_text().splitlines()[1:]]
    assert losses == [str(step) for step in range(1, len(losses) + 1)]  # every step once, none twice
    run = MlflowClient(first.tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED" and f"dagan.resumed_at_step_{stopped_at}" not in run.data.tags  # same config


SLOW_STEP = """
import time
import dagan.train.loop
real_g_step = dagan.train.loop.g_step
def slow_g_step(*args, **kwargs):  # from step 3 on, a step takes 60 s
    slow_g_step.calls += 1
    if slow_g_step.calls >= 3:
        print("slow step", flush=True)
        time.sleep(60)
    return real_g_step(*args, **kwargs)
slow_g_step.calls = 0
dagan.train.loop.g_step = slow_g_step
"""


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first Ctrl-C waits for the step to end (here 60 s); the second one stops the process at once (exit 130, one
    line), with no checkpoint of the interrupted step, and the MLflow run is ended (KILLED), not left RUNNING."""
    from mlflow import MlflowClient

    training = Training(tmp_path, prelude=SLOW_STEP)
    training.wait_for("slow step")
    os.kill(training.process.pid, signal.SIGINT)  # the process only, as a terminal's second Ctrl-C reaches it
    time.sleep(2)
    assert training.process.poll() is None  # the first one waits for the step
    os.kill(training.process.pid, signal.SIGINT)
    started = time.monotonic()
    try:
        code = training.process.wait(timeout=40)
    finally:
        training.kill()
    training.reader.join(timeout=10)
    output = "".join(training.lines)
    assert time.monotonic() - started < 40 and code == 130, output[-3000:]
    assert "interrupted (Ctrl-C): stopped at once" in output and "Traceback" not in output, output[-3000:]
    assert not any((training.out_dir / "checkpoints").glob("*.pt"))
    run_id = json.loads((training.out_dir / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(training.tracking_uri).get_run(run_id).info.status == "KILLED"
