"""Queued DVC experiments keep their MLflow history in the project's own store.

A throwaway git + DVC repository holds the project's dvc.yaml, its code and a tiny params.yaml (the default
``mlflow.tracking_uri: sqlite:///mlflow.db``, relative). The data and the judge are reproduced once and
committed; then two ``dvc exp run --queue`` experiments are run by two workers (``dvc queue start -j 2``),
each in DVC's temporary copy of the repository. Both runs land in the repository's ``mlflow.db`` (not in the
copies), tagged with their experiment's name and baseline revision, both are evaluated on the validation
split, and the register gate of the one that registered second compares it against the first (the champion).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {  # section -> keys set over params.yaml: the whole pipeline in seconds per stage
    "synthetic": {"num_train": 8, "num_val": 8, "size": 32},
    "dataset": {"load_size": 32, "crop_size": 32, "aspect_ratio": 1.0},
    "model": {"ngf": 8, "ndf": 8},
    "train": {"batch_size": 4, "epochs": 1, "epochs_decay": 0, "max_steps": 2, "device": "cpu", "checkpoint_every": 2,
              "sample_every": 2, "log_every": 1, "ema_bn_batches": 1},
    "judge": {"width": 8, "levels": 2, "epochs": 1, "batch_size": 4, "device": "cpu"},
    "evaluate": {"batch_size": 4, "device": "cpu", "num_grid_samples": 2, "num_attention_samples": 2, "fid": "off",
                 "lpips": "off", "download_weights": False},
    "register": {"gate_miou_ratio": 0.0, "gate_fd_beats_baseline": False},  # every version passes: a champion to beat
}


def _repository(root: Path) -> Path:
    """The project's pipeline (dvc.yaml, the code its stages run, tiny params) in a fresh git + DVC repository."""
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for package in ("components", "dagan"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _run(*command: str, cwd: Path, env: dict, timeout: float = 600) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _wait_for_the_queue(repo: Path, env: dict, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = _run("dvc", "queue", "status", cwd=repo, env=env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, f"the queue did not finish:\n{status}"
        time.sleep(5)


def test_two_queued_experiments_run_by_two_workers_track_into_the_projects_store(tmp_path):
    repo = _repository(tmp_path / "project")
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
                "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.com"})
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"],
                    ["dvc", "repro", "-q", "train_judge"], ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        _run(*command, cwd=repo, env=env)
    baseline = _run("git", "rev-parse", "HEAD", cwd=repo, env=env).strip()
    for name, seed in (("first", 1), ("second", 2)):
        _run("dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.seed={seed}", cwd=repo, env=env)
    try:
        _run("dvc", "queue", "start", "-j", "2", cwd=repo, env=env)
        status = _wait_for_the_queue(repo, env, timeout=1500)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=120)
    assert status.count("Success") == 2, status

    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db")), "a store inside DVC's temporary copies"
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dagan").experiment_id])
    assert sorted(run.data.tags["dvc.experiment"] for run in runs) == ["first", "second"]
    for run in runs:
        assert run.data.tags["dvc.baseline_rev"] == baseline and run.data.tags["evaluated"] == "yes"
        assert run.info.status == "FINISHED" and "eval/judge_miou_generated" in run.data.metrics
        assert {item.dataset.name for item in run.inputs.dataset_inputs} == {"synthetic-train", "synthetic-val"}
        assert run.info.artifact_uri.startswith((repo / "mlruns").as_uri())  # beside the store, not in a copy

    versions = {str(version.version): client.get_model_version("dagan-synthetic", str(version.version))
                for version in client.search_model_versions("name = 'dagan-synthetic'")}
    # one champion: the first, or the second when it beat the first (which seed wins is the models' business)
    assert sorted(versions) == ["1", "2"] and sum("champion" in v.aliases for v in versions.values()) == 1
    first = client.get_run(versions["1"].run_id).data.metrics["eval/judge_miou_generated"]
    second_checks = versions["2"].description.splitlines()
    assert second_checks[-1].endswith(f"must be > the champion's {first:.4f}"), second_checks  # compared with v1
