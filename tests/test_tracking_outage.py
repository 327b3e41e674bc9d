"""The tracking server goes away: training never waits on it, SIGTERM is honoured at any moment, nothing is lost and
no step is logged twice; evaluate, register and a training's start fail in bounded time with one line.

A real ``mlflow server`` on loopback that the test hangs (SIGSTOP to it and its workers), wakes (SIGCONT) and
stops; real component processes. MLflow's per-try timeout is cut to a few seconds here (the default is
``components.connection.SERVER_TIMEOUT_S``) to keep the test short: the code path is the same.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from mlflow import MlflowClient
from mlflow_fixtures import MlflowServer
from train_fixtures import tiny_settings, write_prepared

from components.outbox import PENDING_FILE

REPO = Path(__file__).resolve().parents[1]
SHORT_WAITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "OMP_NUM_THREADS": "1"}


def _signal_tree(pid: int, signum: int) -> None:
    """``signum`` to the server and every worker process it started."""
    process = psutil.Process(pid)
    for member in [process, *process.children(recursive=True)]:
        member.send_signal(signum)


def _component(step: str, params: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"components.{step}", "--params", str(params)], cwd=REPO,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _steps(losses: Path) -> list[int]:
    rows = losses.read_text().splitlines()[1:] if losses.is_file() else []
    return [int(row.split("\t")[0]) for row in rows if row]


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_training_goes_on_while_the_server_hangs_and_its_resume_sends_what_waited(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        prepared = write_prepared(tmp_path / "prepared", num_train=8)
        out = tmp_path / "out"
        settings = tiny_settings(prepared, out, max_steps=30, epochs=8, epochs_decay=0, checkpoint_every=4,
                                 sample_every=4, log_every=1)
        settings["mlflow"] = {"tracking_uri": server.url(), "experiment": "outage"}
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(settings))
        client = MlflowClient(server.url())
        training = _component("train", params, SHORT_WAITS)
        run_file = out / "mlflow_run.json"
        _wait_for(lambda: run_file.is_file() and len(_steps(out / "losses.tsv")) >= 2, 240, "the first steps")
        run_id = json.loads(run_file.read_text())["run_id"]
        _wait_for(lambda: client.get_metric_history(run_id, "loss/g_total"), 60, "the first metrics on the server")

        _signal_tree(server.process.pid, signal.SIGSTOP)  # the server hangs: every call waits for nothing
        hung_at = max(_steps(out / "losses.tsv"))
        _wait_for(lambda: max(_steps(out / "losses.tsv")) >= hung_at + 6, 120, "steps while the server hangs")
        training.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, stderr = training.communicate(timeout=120)
        waited = time.monotonic() - stopped
        (tmp_path / "first.log").write_text(stderr)
        assert training.returncode == 0, stderr[-3000:]
        assert waited < 45, f"SIGTERM took {waited:.0f} s with the server hanging"
        stop_step = max(_steps(out / "losses.tsv"))
        assert (out / "checkpoints" / f"step-{stop_step:08d}.pt").is_file()  # the stop's checkpoint
        pending = [json.loads(line) for line in (out / PENDING_FILE).read_text().splitlines()]
        assert {entry["kind"] for entry in pending} >= {"metrics", "end"}
        assert max(entry["step"] for entry in pending if entry["kind"] == "metrics") == stop_step
        assert "they are kept in" in stderr and str(out / PENDING_FILE) in stderr

        _signal_tree(server.process.pid, signal.SIGCONT)
        resumed = _component("train", params, SHORT_WAITS)
        _, stderr = resumed.communicate(timeout=600)
        (tmp_path / "resumed.log").write_text(stderr)
        assert resumed.returncode == 0, stderr[-3000:]
        assert not (out / PENDING_FILE).exists()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in ("loss/g_total", "lr/g", "perf/seconds_per_step"):
            assert sorted(point.step for point in client.get_metric_history(run_id, key)) == list(range(1, 31)), key
    finally:
        _signal_tree(server.process.pid, signal.SIGCONT)
        server.stop()


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_evaluate_register_and_a_training_start_fail_in_bounded_time_with_one_line(tmp_path, monkeypatch, capsys):
    """In this process (timed without Python's start-up): 3 tries of 3 s against a hanging server, refused at once
    by a stopped one; MLflow's own retries took minutes and ended in a long traceback."""
    from eval_fixtures import (
        GOOD_METRICS,
        start_training_run,
        tiny_config,
        write_checkpoint,
        write_metrics,
        write_params,
    )
    from eval_fixtures import write_prepared as write_eval_prepared

    from components import evaluate, register, train

    for name, value in SHORT_WAITS.items():
        monkeypatch.setenv(name, value)
    server = MlflowServer(tmp_path)
    try:
        url = server.url()
        config = tiny_config(tmp_path, mlflow={"tracking_uri": url, "experiment": "down"})
        write_eval_prepared(tmp_path / "prepared")
        write_checkpoint(config, tmp_path / "train" / "checkpoints" / "final.pt")
        start_training_run(config, steps=5)
        write_metrics(config, GOOD_METRICS)
        params = str(write_params(config, tmp_path))
        capsys.readouterr()
        _signal_tree(server.process.pid, signal.SIGSTOP)  # hangs: 3 tries of 3 s each, then one line
        started = time.monotonic()
        assert evaluate.main(["--params", params]) == 2
        assert time.monotonic() - started < 60
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"error: the MLflow tracking server {url} did not answer (")
        assert not (tmp_path / "eval" / "figures").exists()  # it stopped before evaluating
    finally:
        _signal_tree(server.process.pid, signal.SIGCONT)
        server.stop()
    steps = {"evaluate": evaluate.main, "register": register.main, "train": train.main}
    for step, main in steps.items():  # nothing listens: refused at once
        new_run = ["-S", f"train.out_dir={tmp_path / 'new-training'}"] if step == "train" else []
        started = time.monotonic()
        assert main(["--params", params, *new_run]) == 2, step
        assert time.monotonic() - started < 60, step
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"error: the MLflow tracking server {url} did not answer (") and "refused" in line, line
