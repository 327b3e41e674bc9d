"""A live training owns its train.out_dir: a second training into it refuses in one line naming the holder, touches
nothing and leaves the first run RUNNING; the lock dies with the process; the clean-up of runs left RUNNING by
killed processes leaves other machines' runs alone. Real ``python -m components.train`` processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from train_fixtures import tiny_settings, write_prepared

from components.train import HOST_TAG, OUT_DIR_TAG
from components.train import main as train_main
from dagan.train.folder_lock import LOCK_FILE, FolderInUseError, hold_folder


def _params(root: Path, **train: object) -> tuple[Path, str]:
    prepared = write_prepared(root / "prepared", num_train=8)
    settings = tiny_settings(prepared, root / "out", **train)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    settings["mlflow"] = {"tracking_uri": uri, "experiment": "lock"}
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    return params, uri


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_a_second_training_into_a_live_runs_folder_refuses_and_the_first_goes_on(tmp_path, monkeypatch, caplog):
    params, uri = _params(tmp_path, epochs=100_000, checkpoint_every=2, sample_every=0, log_every=1)
    command = [sys.executable, "-m", "components.train", "--params", str(params)]
    first = subprocess.Popen(command, cwd=tmp_path, env=_environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(first.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("step 3/" in line for line in lines):
            assert first.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        out_dir = tmp_path / "out"
        before = {path: path.stat().st_mtime_ns for path in (out_dir / "checkpoints").iterdir()}

        second = subprocess.run(command, cwd=tmp_path, env=_environment(), capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {out_dir} is in use by another training (pid {first.pid} on "
                          f"{socket.gethostname()}, since {errors[0].split(', since ')[1]}"], second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first training goes on
        assert all(path.stat().st_mtime_ns <= mtime for path, mtime in before.items() if path.exists())
        runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("lock").experiment_id])
        assert [run.info.status for run in runs] == ["RUNNING"]  # no second run, and the first is not marked KILLED

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=180) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=60)
    reader.join(timeout=10)
    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).data.tags["dagan.stop_reason"] == "SIGTERM"
    stopped_at = json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"]

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    assert train_main(["--params", str(params), "-S", f"train.max_steps={stopped_at + 1}"]) == 0  # the lock is free
    assert f"resumed from {tmp_path / 'out' / 'checkpoints'}" in caplog.text


def test_the_lock_is_released_when_its_holder_ends_however_it_ends(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom dagan.train.folder_lock import "
                               "hold_folder\nwith hold_folder(sys.argv[1]):\n    print('held', flush=True)\n"
                               "    time.sleep(600)\n", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=f"pid {holder.pid} on {socket.gethostname()}"):
            with hold_folder(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait(timeout=60)
    with hold_folder(tmp_path):  # the kernel released it
        assert f"pid {os.getpid()} on" in (tmp_path / LOCK_FILE).read_text()


def test_runs_left_running_on_another_machine_are_not_marked_killed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    params, uri = _params(tmp_path, max_steps=1)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("lock")
    out_dir = str((tmp_path / "out").resolve())
    here = client.create_run(experiment_id, tags={OUT_DIR_TAG: out_dir, HOST_TAG: socket.gethostname()})
    elsewhere = client.create_run(experiment_id, tags={OUT_DIR_TAG: out_dir, HOST_TAG: "another-machine"})
    assert train_main(["--params", str(params)]) == 0
    assert client.get_run(here.info.run_id).info.status == "KILLED"  # its process is dead: it would hold the lock
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # a pod of the same path may be alive
