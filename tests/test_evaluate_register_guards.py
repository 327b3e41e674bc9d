"""No stale verdict, no half-written evaluation, no orphan in the registry:

* an evaluation names the checkpoint it scored (path and sha256, in metrics.json and on the MLflow run), and register
  refuses to register another checkpoint with it, in one line naming both, before anything is created;
* a bad register setting or input is refused before anything is created;
* a register killed part-way (real processes, SIGKILL at known points) leaves what it created tagged
  ``dagan.registration=incomplete``, and the next register deletes or completes it;
* an evaluation on a full disk (a real tiny tmpfs) leaves the previous outputs whole and names the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from disk_fixtures import run_on_small_disk
from eval_fixtures import (
    GOOD_METRICS,
    start_training_run,
    tiny_config,
    write_checkpoint,
    write_judge,
    write_metrics,
    write_params,
    write_prepared,
)
from mlflow import MlflowClient

from components.evaluate import main as evaluate
from components.register import main as register
from components.registration_marks import INCOMPLETE, REGISTRATION_TAG
from dagan.data.shards import sha256_of

NAME = "dagan-synthetic"


def _setup(root: Path, **sections: dict):
    """Prepared data, a checkpoint, a finished training run and a judge; the config and its params file."""
    config = tiny_config(root, **sections)
    write_prepared(root / "prepared")
    write_checkpoint(config, Path(config.train.out_dir) / "checkpoints" / "final.pt")
    start_training_run(config, steps=5)
    write_judge(config)
    return config, write_params(config, root)


def _nothing_registered(config) -> bool:
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    return not client.search_registered_models() and not client.search_logged_models([experiment.experiment_id])


def test_register_refuses_the_metrics_of_another_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, params = _setup(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "notes.txt").write_text("mine")
    assert evaluate(["--params", str(params)]) == 2  # the evaluation replaces its folder whole: not this one
    assert "eval holds notes.txt, which no evaluation wrote" in capsys.readouterr().err
    (tmp_path / "eval" / "notes.txt").unlink()
    (tmp_path / "eval" / ".gitignore").write_text("/config.yaml\n/figures\n")  # as dvc writes it there
    assert evaluate(["--params", str(params)]) == 0
    assert (tmp_path / "eval" / ".gitignore").read_text() == "/config.yaml\n/figures\n"  # hidden files are kept
    checkpoint = Path(config.train.out_dir) / "checkpoints" / "final.pt"
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"]
    assert scored == {"path": str(checkpoint), "sha256": sha256_of(checkpoint)}
    run_id = json.loads((Path(config.train.out_dir) / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(config.mlflow.tracking_uri).get_run(run_id).data.tags
    assert tags["eval/checkpoint_sha256"] == scored["sha256"] and tags["eval/checkpoint"] == str(checkpoint)

    # a hand-run training into another out_dir, then register: the evaluation in outputs/eval is not of its model
    other = tiny_config(tmp_path, train={"out_dir": str(tmp_path / "other")})
    other_checkpoint = write_checkpoint(other, tmp_path / "other" / "checkpoints" / "final.pt", seed=1)
    start_training_run(other, steps=5)
    capsys.readouterr()
    assert register(["--params", str(write_params(other, tmp_path))]) == 2
    error = capsys.readouterr().err
    assert error == (f"error: {tmp_path / 'eval' / 'metrics.json'} holds the metrics of {checkpoint} (sha256 "
                     f"{scored['sha256'][:12]}), not of {other_checkpoint} (sha256 {sha256_of(other_checkpoint)[:12]}) "
                     "that would be registered; run the evaluate stage for this checkpoint first\n")
    assert _nothing_registered(config)

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    del metrics["checkpoint"]  # written by an evaluate that did not record it
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    assert register(["--params", str(params)]) == 2
    assert "does not name the checkpoint it scored" in capsys.readouterr().err and _nothing_registered(config)


@pytest.mark.parametrize(("sections", "message"), [
    ({"register": {"metric": "fid_generated"}}, "metric 'fid_generated' is missing or not a number"),
    ({"register": {"out_dir": "registration-is-a-file"}}, "registration-is-a-file"),
])
def test_a_bad_register_setting_is_refused_before_anything_is_created(tmp_path, capsys, monkeypatch, sections,
                                                                        message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "registration-is-a-file").write_text("not a folder")
    config, params = _setup(tmp_path, **sections)
    write_metrics(config, GOOD_METRICS)
    capsys.readouterr()
    assert register(["--params", str(params)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error, error
    assert _nothing_registered(config)


KILLER = """
import os, signal, sys
import mlflow
import mlflow.tracking._model_registry.fluent as registry

def kill_after(owner, name):  # SIGKILL right after the call returns: no clean-up code of any kind runs
    original = getattr(owner, name)
    def call(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, call)

point, params = sys.argv[1], sys.argv[2]
owner, name = {"log_model": (mlflow.MlflowClient, "log_model_artifacts"), "version": (registry, "_register_model"),
               "aliases": (mlflow.MlflowClient, "set_registered_model_alias")}[point]
kill_after(owner, name)
from components.register import main
sys.exit(main(["--params", params]))
"""


def test_a_register_killed_part_way_is_cleaned_up_by_the_next(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, params = _setup(tmp_path)
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment_id = client.get_experiment_by_name(config.mlflow.experiment).experiment_id
    write_metrics(config, {**GOOD_METRICS, "judge_miou_generated": 0.45})
    assert register(["--params", str(params)]) == 0  # v1: candidate and champion
    write_metrics(config, GOOD_METRICS)  # better: each registration below would promote its version

    def killed_at(point: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        result = subprocess.run([sys.executable, "-c", KILLER, point, str(params)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == -9, result.stderr[-3000:]

    def versions() -> dict[str, dict]:
        holders = client.get_registered_model(NAME).aliases
        return {str(v.version): {"aliases": sorted(a for a, holder in holders.items() if str(holder) == str(v.version)),
                                 "incomplete": REGISTRATION_TAG in v.tags}
                for v in client.search_model_versions(f"name = '{NAME}'")}

    def logged_models() -> list:
        return list(client.search_logged_models([experiment_id]))

    killed_at("log_model")  # the logged model's files are uploaded, it is not finalised nor registered
    assert versions() == {"1": {"aliases": ["candidate", "champion"], "incomplete": False}}
    orphan = next(model for model in logged_models() if model.tags.get(REGISTRATION_TAG) == INCOMPLETE)
    assert str(orphan.status) == "PENDING"

    killed_at("version")  # the next one deletes that orphan first, then is killed once its version exists
    assert orphan.model_id not in {model.model_id for model in logged_models()}
    assert versions() == {"1": {"aliases": ["candidate", "champion"], "incomplete": False},
                          "2": {"aliases": [], "incomplete": True}}

    killed_at("aliases")  # deletes version 2; is killed once its version 3 got the candidate alias
    assert versions() == {"1": {"aliases": ["champion"], "incomplete": False},
                          "3": {"aliases": ["candidate"], "incomplete": True}}

    assert register(["--params", str(params)]) == 0  # completes version 3 (it holds an alias), then registers v4
    assert versions() == {"1": {"aliases": [], "incomplete": False}, "3": {"aliases": [], "incomplete": False},
                          "4": {"aliases": ["candidate", "champion"], "incomplete": False}}
    sources = {v.source for v in client.search_model_versions(f"name = '{NAME}'")}
    remaining = logged_models()
    assert {f"models:/{model.model_id}" for model in remaining} == sources  # every logged model is a version's
    assert all(REGISTRATION_TAG not in model.tags and str(model.status) == "READY" for model in remaining)
    assert json.loads((tmp_path / "register" / "registration.json").read_text())["version"] == "4"


def test_an_evaluation_on_a_full_disk_leaves_the_previous_outputs_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, params = _setup(tmp_path)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / ".gitignore").write_text("/figures\n")  # dvc's: kept through every evaluation
    assert evaluate(["--params", str(params)]) == 0  # the previous evaluation, copied onto the small disk below
    previous = {path.relative_to(tmp_path / "eval"): sha256_of(path) for path in (tmp_path / "eval").rglob("*")
                if path.is_file()}
    disk = tmp_path / "small-disk"
    out_dir = disk / "eval"
    script = (f"cp -r {tmp_path / 'eval'} {out_dir} && (dd if=/dev/zero of={disk / 'filler'} bs=4k 2>/dev/null; "
              f"true) && {sys.executable} -m components.evaluate --params {params} -S evaluate.out_dir={out_dir}; "
              f"code=$?; echo '== top'; ls -A {disk}; echo '== files'; cd {out_dir} && find . -type f -exec "
              "sha256sum {} +; echo '== end'; exit $code")
    result, _ = run_on_small_disk(disk, "2m", ["sh", "-c", script], tmp_path)
    top, files = result.stdout.split("== top\n")[1].split("== files\n")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith(f"error: no space left on the device writing {out_dir} ") and \
        f"{out_dir} was left as it was" in errors[0], errors[0]
    after = {Path(path): digest for digest, path in (line.split() for line in files.split("== end")[0].splitlines())}
    assert after == previous  # every file of the previous evaluation, unchanged, and nothing else
    assert top.split() == ["eval", "filler"]  # no staging folder left
    shutil.rmtree(tmp_path / "eval")
