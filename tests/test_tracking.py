"""How runs look in MLflow (components/tracking.py): resolved params, names, descriptions, the commit."""

from __future__ import annotations

import os
import subprocess

from train_fixtures import tiny_config, tiny_settings, write_prepared

from components import tracking
from dagan.config import config_from_dict
from dagan.data import read_manifest


def test_params_describe_the_training_with_resolved_values(tmp_path):
    config = tiny_config(write_prepared(tmp_path / "prepared", num_train=8), tmp_path / "out", max_steps=0)
    params = tracking.training_params(config, steps=8, device="cpu", processes=2)
    assert params["model.use_sam"] is True and params["model.cam"] == "II"  # B6, not None
    assert params["train.total_steps"] == 8 and params["train.processes"] == 2 and params["train.device"] == "cpu"
    assert params["dataset.crop_size"] == 32 and params["model.ngf"] == 8  # preset nulls resolved
    assert not {"train.max_steps", "train.out_dir", "train.log_every", "dataset.prepared_dir"} & set(params)
    assert {key.split(".")[0] for key in params} == {"dataset", "model", "loss", "train"}
    custom = config_from_dict({"model": {"variant": "custom", "use_sam": False, "cam": "I"}}).resolved()
    assert tracking.training_params(custom, 1, "cpu", 1)["model.cam"] == "I"


def test_planned_steps_are_the_loops(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", num_train=9)  # 4 batches of 2 per epoch, 1 dropped
    manifest = read_manifest(prepared)
    assert tracking.planned_steps(tiny_config(prepared, tmp_path / "o"), manifest) == (1 + 1) * 4
    assert tracking.planned_steps(tiny_config(prepared, tmp_path / "o", max_steps=3), manifest) == 3


def test_run_name_and_description(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", num_train=8)
    config = tiny_config(prepared, tmp_path / "out")
    assert tracking.run_name(config, 8, "0123456789abcdef") == "B6-synthetic-8steps-0123456"
    assert tracking.run_name(config, 8, None) == "B6-synthetic-8steps-nogit"
    text = tracking.describe_run(config, 8, read_manifest(prepared), "0123456789abcdef")
    assert text == ("DAGAN B6 (SAM + CAM-II) on synthetic: 8 training images at 32x32, 8 steps (1 + 1 decay epochs, "
                    "global batch 2), lr G 0.0001 / D 0.0004, lambda feat 10 / vgg 0; commit 0123456")
    assert "\n" not in text
    vae = config_from_dict({"model": {"style": "vae", "spap": "both"}}).resolved()  # runs that differ, named apart
    assert tracking.run_name(vae, 8, None) == "B6+vae+spap-both-synthetic-8steps-nogit"
    assert tracking.model_phrase(vae) == "DAGAN B6 (SAM + CAM-II) + style encoder + SPAP in both"
    fpse = config_from_dict({"model": {"generator": "ccfpse", "discriminator": "fpse"}}).resolved()
    assert tracking.run_name(fpse, 8, None) == "ccfpse+fpse-synthetic-8steps-nogit"
    ccfpse_vae = config_from_dict({"model": {"generator": "ccfpse", "discriminator": "fpse",
                                             "style": "vae"}}).resolved()
    assert tracking.run_name(ccfpse_vae, 8, None) == "ccfpse+vae+fpse-synthetic-8steps-nogit"
    assert tracking.model_phrase(ccfpse_vae) == "CC-FPSE generator + style encoder + fpse discriminator"


def test_commit_from_the_checkout_else_from_the_image(monkeypatch, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=tracking.__file__.rsplit("/", 2)[0]).stdout.strip()
    assert tracking.git_commit() == head
    monkeypatch.setenv("PATH", str(tmp_path))  # no git: the container image
    monkeypatch.setenv(tracking.COMMIT_ENV, "feedbeef")
    assert tracking.git_commit() == "feedbeef"
    monkeypatch.setenv(tracking.COMMIT_ENV, "unknown")  # docker build without --build-arg GIT_COMMIT
    assert tracking.git_commit() is None


def test_kfp_run_tag_and_ui_links(monkeypatch):
    monkeypatch.delenv(tracking.KFP_RUN_ENV, raising=False)
    assert tracking.pipeline_tags() == {}
    monkeypatch.setenv(tracking.KFP_RUN_ENV, "run-9")
    assert tracking.pipeline_tags() == {"kfp.run_id": "run-9"}
    assert tracking.run_url("http://127.0.0.1:5001/", "1", "abc") == "http://127.0.0.1:5001/#/experiments/1/runs/abc"
    assert tracking.run_url("sqlite:///mlflow.db", "1", "abc") is None


def test_evaluation_summary_replaces_an_earlier_one():
    metrics = {"judge_miou_generated": 0.5, "judge_miou_real": 0.7, "judge_miou_baseline": 0.6,
               "fd_judge_generated": 0.04, "fd_judge_baseline": 0.05}
    once = tracking.evaluated_note("DAGAN B6 on synthetic", metrics)
    assert once == ("DAGAN B6 on synthetic | evaluated: judge mIoU generated 0.500 (real 0.700, baseline 0.600), "
                    "judge FD 0.0400 (baseline 0.0500)")
    assert tracking.evaluated_note(once, {**metrics, "judge_miou_generated": 0.55}).count("evaluated:") == 1


class _RacingClient:
    """Stands in for the MLflow server's answer when another run created the same dataset a moment earlier."""

    def __init__(self, message: str):
        self.message, self.calls = message, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.message)


def test_a_dataset_created_by_a_parallel_run_is_logged_again(tmp_path):
    """Parallel sweep trials log the same dataset; the one that loses the server's get-or-create race retries."""
    import pytest
    from mlflow.exceptions import MlflowException

    prepared = write_prepared(tmp_path / "prepared", num_train=4)
    racing = _RacingClient("BAD_REQUEST: (sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
    tracking.log_dataset(racing, "run", prepared, "train", "training")
    assert racing.calls == 2
    other = _RacingClient("RESOURCE_DOES_NOT_EXIST: run 'run' not found")
    with pytest.raises(MlflowException, match="not found"):
        tracking.log_dataset(other, "run", prepared, "train", "training")
    assert other.calls == 1


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database_whatever_the_working_folder(tmp_path, monkeypatch):
    """In the image the working folder (/app) is read-only: MLflow's default ./mlruns cannot be the artifact root."""
    from mlflow import MlflowClient

    from components.outputs import connect_tracking

    store = tmp_path / "store"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    connect_tracking(f"sqlite:///{store / 'mlflow.db'}")
    experiment_id = tracking.model_development_experiment(MlflowClient(), "dagan")
    assert MlflowClient().get_experiment(experiment_id).artifact_location == (store / "mlruns").as_uri()


def test_a_sqlite_store_where_no_folder_can_be_written_is_one_line(tmp_path, capsys):
    """Here a file stands where the folder should be (as root, every folder is writable); uid 1000 in the
    image's read-only /app: tests/test_containers_image.py."""
    import yaml

    from components import train

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_settings(write_prepared(tmp_path / "prepared", num_train=4),
                                                   tmp_path / "out", max_steps=1)))
    (tmp_path / "runs").write_text("not a folder")
    database = tmp_path / "runs" / "mlflow.db"
    assert train.main(["--params", str(params), "-S", f"mlflow.tracking_uri=sqlite:///{database}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: MLflow tracking store sqlite:///{database}: {database.parent} is not a folder this user (uid "
        f"{os.getuid()}) can write; set MLFLOW_TRACKING_URI (a tracking server, or sqlite:////PATH/mlflow.db in a "
        "writable folder) or -S mlflow.tracking_uri=..."]
    assert not (tmp_path / "out" / "checkpoints").exists()
