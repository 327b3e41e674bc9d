"""No credential of the MLflow tracking URI in any file, artifact, param, tag or log line: a password planted
in ``mlflow.tracking_uri`` (training) and in ``$MLFLOW_TRACKING_URI`` (evaluation, registration) against a
real ``mlflow server`` on loopback is searched for in every output of the run and every line printed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_fixtures import NUM_CLASSES, tiny_config, write_prepared
from mlflow_fixtures import MlflowServer

from dagan.eval.judge import SegmentationNet, save_judge

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "pl4nted-S3cret"


@pytest.fixture
def mlflow_server(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    try:
        yield server
    finally:
        server.stop()


def run(step: str, params: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", f"components.{step}", "--params", str(params), *args], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{step}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def test_a_planted_password_appears_in_no_output_artifact_or_log_line(tmp_path, mlflow_server):
    outputs = tmp_path / "outputs"
    write_prepared(outputs / "prepared")
    url = mlflow_server.url()
    secret_uri = url.replace("http://", f"http://alice:{PASSWORD}@")
    config = tiny_config(outputs, train={"max_steps": 2, "checkpoint_every": 1, "sample_every": 1},
                         mlflow={"tracking_uri": secret_uri, "experiment": "secrets"})
    settings = dataclasses.asdict(config)  # every section, the planted password in mlflow.tracking_uri
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings))
    save_judge(outputs / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), config, NUM_CLASSES)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    printed = run("train", params, env)  # the URI from the params file
    env["MLFLOW_TRACKING_URI"] = secret_uri  # the URI from the environment
    printed += run("evaluate", params, env) + run("register", params, env)

    assert "View run" in printed and url in printed  # MLflow's own lines are there, without the password
    assert PASSWORD not in printed
    searched = [p for root in (outputs, tmp_path / "server") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "generator.pt" for p in searched) and any(p.name == "config.yaml" for p in searched)
    assert any(p.name == "server.db" for p in searched)  # params and tags live there
    leaking = [str(p) for p in searched if PASSWORD.encode() in p.read_bytes()]
    assert not leaking, f"the password is written in {leaking}"
    assert json.loads((outputs / "train" / "mlflow_run.json").read_text())["tracking_uri"] == url
