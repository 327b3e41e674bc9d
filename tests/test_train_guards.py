"""Training refuses to lose or poison anything: NaN/Inf weights are never written or used, a resume with
another config is refused (--force-new-run sets the old run aside), prepared shards are verified, stale
temporaries and runs left RUNNING by killed processes are cleaned up, and a config error found at start
creates no MLflow run. ``python -m components.train`` in-process, with a sqlite MLflow store."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from disk_fixtures import run_on_small_disk
from mlflow import MlflowClient
from train_fixtures import tiny_config, tiny_settings, write_prepared

import dagan.train.loop
from components.train import main as train_main
from dagan.checkpoint import CheckpointError, load_checkpoint, load_generator, save_checkpoint
from dagan.data import DataError, PairedDataset
from dagan.train import train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("data") / "prepared", num_train=8)


class Cli:
    """``python -m components.train --params <tiny params>`` in this process, tracked in a sqlite store."""

    def __init__(self, root: Path, prepared: Path, **train_settings: object):
        self.out_dir = root / "out"
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        settings = tiny_settings(prepared, self.out_dir, **{"max_steps": 2, **train_settings})
        settings["mlflow"] = {"tracking_uri": self.uri, "experiment": "guards"}
        self.params = root / "params.yaml"
        self.params.write_text(yaml.safe_dump(settings))

    def __call__(self, *args: str) -> int:
        return train_main(["--params", str(self.params), *args])

    def runs(self) -> list:
        experiment = MlflowClient(self.uri).get_experiment_by_name("guards")
        return MlflowClient(self.uri).search_runs([experiment.experiment_id]) if experiment else []

    def run_id(self) -> str:
        return json.loads((self.out_dir / "mlflow_run.json").read_text())["run_id"]


@pytest.fixture
def cli(tmp_path, prepared, monkeypatch, caplog) -> Cli:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts (./mlruns) stay in the test's folder
    caplog.set_level(logging.INFO)
    return Cli(tmp_path, prepared)


# --- NaN / Inf ----------------------------------------------------------------------------------------------------


def test_exploding_learning_rates_fail_the_run_and_write_nothing(tmp_path, prepared, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cli = Cli(tmp_path, prepared, max_steps=1, lr_g=1e10, lr_d=1e10)
    assert cli() == 1
    error = capsys.readouterr().err  # the loss of D's half of step 1 or the weights after it: either stops here
    assert re.search(r"(non-finite loss at step 1|update of step 1 made weights NaN/Inf)", error), error
    assert "last good checkpoint: none was written yet" in error
    assert not any(cli.out_dir.glob("checkpoints/*.pt"))
    assert [run.info.status for run in cli.runs()] == ["FAILED"]


def test_the_checkpoint_named_as_last_good_is_good(prepared, tmp_path, monkeypatch):
    real_d_step = dagan.train.loop.d_step
    calls = []

    def poisoning_d_step(state, *args, **kwargs):  # step 3's update makes a G weight Inf
        losses = real_d_step(state, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(state.generator.parameters()).view(-1)[0] = float("inf")
        return losses

    monkeypatch.setattr(dagan.train.loop, "d_step", poisoning_d_step)
    config = tiny_config(prepared, tmp_path / "out", max_steps=6, checkpoint_every=2)
    with pytest.raises(FloatingPointError, match=r"update of step 3 .*last good checkpoint: .*step-00000002\.pt"):
        train(config)
    folder = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002.pt"]
    state = load_checkpoint(folder / "step-00000002.pt")
    assert all(torch.isfinite(t).all() for part in ("generator", "discriminator") for t in state[part].values()
               if t.is_floating_point())


def test_evaluate_register_and_generate_refuse_a_non_finite_checkpoint(tmp_path, capsys, monkeypatch):
    from eval_fixtures import GOOD_METRICS, start_training_run, write_checkpoint, write_metrics, write_params
    from eval_fixtures import tiny_config as eval_config
    from eval_fixtures import write_prepared as write_eval_prepared

    from components.evaluate import main as evaluate_main
    from components.register import main as register_main
    from dagan.__main__ import main as dagan_main

    monkeypatch.chdir(tmp_path)
    config = eval_config(tmp_path)
    write_eval_prepared(tmp_path / "prepared")
    path = write_checkpoint(config, tmp_path / "train" / "checkpoints" / "final.pt")
    state = load_checkpoint(path)
    next(iter(state["generator"].values())).view(-1)[:3] = float("nan")
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="3 NaN/Inf values in 1 tensor"):
        load_generator(path)
    start_training_run(config)
    write_metrics(config, GOOD_METRICS)
    params = write_params(config, tmp_path)
    capsys.readouterr()
    for command in (lambda: evaluate_main(["--params", str(params)]), lambda: register_main(["--params", str(params)]),
                    lambda: dagan_main(["generate", "--model", str(path), "--labels", str(tmp_path),
                                        "--out", str(tmp_path / "generated")])):
        assert command() == 2
        error = capsys.readouterr().err
        assert "final.pt: the generator has 3 NaN/Inf values" in error and "diverged" in error
        assert "Traceback" not in error
    assert not (tmp_path / "register" / "registration.json").exists()
    assert not (tmp_path / "eval" / "per_class_iou.json").exists() and not (tmp_path / "generated").exists()


# --- resume rules -------------------------------------------------------------------------------------------------


def test_a_changed_config_is_not_resumed_and_force_new_run_sets_the_old_run_aside(cli, capsys, caplog):
    assert cli() == 0
    first_run = cli.run_id()
    config_yaml = (cli.out_dir / "config.yaml").read_text()
    capsys.readouterr()

    assert cli("-S", "train.lr_g=0.001", "-S", "loss.lambda_feat=5", "-S", "train.ema_rampup=0.5") == 2
    error = capsys.readouterr().err
    assert "train.lr_g: 0.0001 -> 0.001" in error and "loss.lambda_feat: 10.0 -> 5.0" in error
    assert "train.ema_rampup: 0.0 -> 0.5" in error  # it decides what the EMA generator computes
    assert "another train.out_dir" in error and "--force-new-run" in error
    assert (cli.out_dir / "config.yaml").read_text() == config_yaml  # nothing touched
    assert [(run.info.run_id, run.info.status) for run in cli.runs()] == [(first_run, "FINISHED")]

    assert cli("-S", "train.max_steps=3") == 0  # extending the schedule is allowed, and said
    assert "with changed train.max_steps: 2 -> 3" in caplog.text
    assert cli.run_id() == first_run and load_checkpoint(cli.out_dir / "checkpoints" / "final.pt")["step"] == 3
    tags = MlflowClient(cli.uri).get_run(first_run).data.tags
    assert tags["dagan.resumed_at_step_2"] == "train.max_steps: 2 -> 3"

    assert cli("-S", "train.lr_g=0.001", "--force-new-run") == 0
    aside = sorted(cli.out_dir.parent.glob("out.superseded-*"))
    assert len(aside) == 1 and load_checkpoint(aside[0] / "checkpoints" / "final.pt")["step"] == 3
    assert json.loads((aside[0] / "mlflow_run.json").read_text())["run_id"] == first_run
    old_losses = (aside[0] / "losses.tsv").read_text().splitlines()  # the DVC plots files go with their run
    assert [row.split("\t")[0] for row in old_losses[1:]] == ["1", "2", "3"]
    assert (aside[0] / "samples" / "latest.png").is_file()
    new_losses = (cli.out_dir / "losses.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in new_losses[1:]] == ["1", "2"]
    assert cli.run_id() != first_run
    stored = load_checkpoint(cli.out_dir / "checkpoints" / "final.pt")["config"]
    assert stored["train"]["lr_g"] == 0.001
    # the library's sections only: the steps' mlflow / register / tune settings never go into a checkpoint
    assert set(stored) == set(yaml.safe_load((cli.out_dir / "config.yaml").read_text())) == {
        "dataset", "synthetic", "model", "loss", "train", "judge", "evaluate"}
    assert sorted(run.info.status for run in cli.runs()) == ["FINISHED", "FINISHED"]


# --- what a killed process leaves behind --------------------------------------------------------------------------


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(cli, caplog):
    assert cli("-S", "train.max_steps=4") == 0
    folder = cli.out_dir / "checkpoints"
    (folder / "final.pt").unlink()
    newest = folder / "step-00000004.pt"
    shutil.copy(folder / "step-00000002.pt", newest)
    newest.write_bytes(newest.read_bytes()[:5000])  # a write cut short (disk full, copy interrupted)
    stale = folder / ".step-00000006.pt.tmp-999999999"  # a killed writer's temporary (no such process)
    stale.write_bytes(b"partial")
    assert cli("-S", "train.max_steps=4") == 0
    assert f"{newest} is truncated or not a checkpoint" in caplog.text
    assert f"resumed from {folder / 'step-00000002.pt'} at step 2" in caplog.text
    assert not stale.exists() and load_checkpoint(folder / "final.pt")["step"] == 4


def test_a_run_killed_before_its_first_checkpoint_is_not_left_running(tmp_path, prepared):
    settings = tiny_settings(prepared, tmp_path / "out", max_steps=100_000, checkpoint_every=100_000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings["mlflow"] = {"tracking_uri": uri, "experiment": "killed"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "components.train", "--params", str(params)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stderr:
            if "step 2/" in line:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    killed = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(uri)
    assert client.get_run(killed).info.status == "RUNNING"

    result = subprocess.run(command + ["-S", "train.max_steps=2"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert client.get_run(killed).info.status == "KILLED"
    assert json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"] != killed


# --- bad input found before anything starts ------------------------------------------------------------------------


def test_errors_found_at_start_create_no_mlflow_run_and_touch_no_output(cli, capsys):
    assert cli("-S", "train.batch_size=64") == 2
    assert "fewer than one global batch" in capsys.readouterr().err
    assert cli.runs() == [] and not (cli.out_dir / "config.yaml").exists()


def test_a_replaced_or_damaged_shard_is_named_before_training(cli, tmp_path, prepared, capsys):
    copy = shutil.copytree(prepared, tmp_path / "copy")
    other = write_prepared(tmp_path / "other", num_train=8, seed=1)
    shutil.copy(other / "train-00000.parquet", copy / "train-00000.parquet")  # a valid shard, other data
    settings = yaml.safe_load(cli.params.read_text())
    settings["dataset"]["prepared_dir"] = str(copy)
    cli.params.write_text(yaml.safe_dump(settings))
    assert cli() == 2
    error = capsys.readouterr().err
    assert f"shard {copy / 'train-00000.parquet'} has sha256" in error and "the manifest says" in error
    shard = copy / "train-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])  # damaged
    assert cli() == 2
    assert "train-00000.parquet has sha256" in capsys.readouterr().err
    assert cli.runs() == []
    with pytest.raises(DataError, match=r"train-00000\.parquet has sha256"):  # every reader: judge, evaluate, sweeps
        PairedDataset(copy, "train", crop_size=32)


def test_disk_full_while_checkpointing_is_one_clear_line_and_leaves_no_partial_file(tmp_path, prepared):
    out_dir = tmp_path / "small-disk"
    settings = tiny_settings(prepared, out_dir, max_steps=2, checkpoint_every=1)
    settings["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "full"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    result, left = run_on_small_disk(out_dir, "256k", [sys.executable, "-m", "components.train", "--params",
                                                        str(params)], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and "step-00000001.pt" in errors[0]
    assert "Traceback" not in result.stderr
    assert not [name for name in left if name.startswith("checkpoints/")]  # no checkpoint, no partial temporary
