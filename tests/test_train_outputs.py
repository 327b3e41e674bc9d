"""Every output that dvc.yaml declares for the train stage exists after every successful run, whatever the config:
the last step always logs its losses (losses.tsv) and draws its sample grid (samples/latest.png), also with
``train.sample_every: 0``, ``train.max_steps`` below the sampling or logging interval, or a run stopped early;
checked through the component and through a real ``dvc repro`` of the project's train stage."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_fixtures import tiny_config, tiny_settings, write_prepared

from components.outputs import LATEST_SAMPLES, LOSSES_FILE, SAMPLES_DIR
from components.train import main as train_main
from dagan.train import NullLogger, train

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "prepared", num_train=8)


def test_a_run_shorter_than_the_intervals_writes_its_last_sample_grid_and_losses(tmp_path, prepared, monkeypatch):
    """The run ends before the first grid and log line are due (train.sample_every: 0: the dvc repro test below)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(prepared, tmp_path / "out", sample_every=100, max_steps=3, log_every=10)
    settings["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "outputs"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    assert train_main(["--params", str(tmp_path / "params.yaml")]) == 0
    assert (tmp_path / "out" / SAMPLES_DIR / LATEST_SAMPLES).is_file()
    rows = (tmp_path / "out" / LOSSES_FILE).read_text().splitlines()
    assert [row.split("\t")[0] for row in rows[1:]] == ["3"]


class StopAfterFirstStep(NullLogger):
    def __init__(self) -> None:
        self.logged: list[int] = []
        self.images: list[int] = []

    def log_metrics(self, step, metrics) -> None:
        self.logged.append(step)

    def log_images(self, step, name, image) -> None:
        self.images.append(step)

    def should_stop(self, report) -> bool:
        return True


def test_a_run_stopped_early_logs_the_losses_and_the_grid_of_its_last_step(tmp_path, prepared):
    logger = StopAfterFirstStep()
    result = train(tiny_config(prepared, tmp_path / "out", max_steps=50, log_every=10, sample_every=10), logger)
    assert result.stopped_early and result.step == 1
    assert logger.logged == [1] and logger.images == [1]


def test_dvc_repro_of_the_train_stage_with_sample_every_0(tmp_path, caplog):
    """The project's own dvc.yaml train stage, run by the real dvc in a fresh repository: dvc fails the stage when a
    declared output is missing."""
    caplog.set_level(logging.INFO)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for package in ("components", "dagan"):
        (tmp_path / package).symlink_to(REPO / package)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    write_prepared(tmp_path / params["dataset"]["prepared_dir"], num_train=8)
    tiny = tiny_settings(tmp_path / params["dataset"]["prepared_dir"], tmp_path / "unused", max_steps=2,
                         sample_every=0, log_every=10)
    for section in ("dataset", "model", "loss", "train"):
        params[section].update({key: value for key, value in tiny[section].items()
                                if key not in ("prepared_dir", "out_dir")})
    params["train"].update(amp="off", channels_last=False, ema_bn_batches=0)
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True, env=env)
    result = subprocess.run([DVC, "repro", "--single-item", "train"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out_dir = tmp_path / params["train"]["out_dir"]
    assert (out_dir / SAMPLES_DIR / LATEST_SAMPLES).is_file() and (out_dir / LOSSES_FILE).is_file()
    assert (tmp_path / "dvc.lock").is_file()


def test_the_runs_data_sha256_tag_names_the_data_it_read(tmp_path, prepared, monkeypatch):
    """The tag is the sha256 of the manifest the run read, and the manifest names every shard's sha256 (which every
    reader verifies before reading: tests/test_train_guards.py)."""
    import hashlib
    import json

    from mlflow import MlflowClient

    from dagan.data.shards import sha256_of

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    settings = tiny_settings(prepared, tmp_path / "out", max_steps=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings["mlflow"] = {"tracking_uri": uri, "experiment": "outputs"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    assert train_main(["--params", str(tmp_path / "params.yaml")]) == 0
    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    manifest = prepared / "manifest.json"
    tag = MlflowClient(uri).get_run(run_id).data.tags["data_sha256"]
    assert tag == hashlib.sha256(manifest.read_bytes()).hexdigest()
    shards = json.loads(manifest.read_text())["shards"]
    assert shards and all(shard["sha256"] == sha256_of(prepared / shard["path"]) for shard in shards)
