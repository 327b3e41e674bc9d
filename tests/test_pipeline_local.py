"""The whole Kubeflow pipeline run locally with kfp.local's SubprocessRunner on tiny synthetic data:
prepare -> train_judge -> train -> evaluate -> register, each step its real component, ending with a
model version in the MLflow registry (a sqlite store in tmp_path)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("components.synthesize", "components.prepare", "components.train_judge", "components.train",
         "components.evaluate", "components.register")
MISSING = [module for module in STEPS if importlib.util.find_spec(module) is None]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the local pipeline run needs {', '.join(MISSING)}, "
                                                      "which has not landed yet")

TINY = [
    "synthetic.num_train=16", "synthetic.num_val=8", "synthetic.size=32",
    "dataset.load_size=32", "dataset.crop_size=32", "dataset.aspect_ratio=1.0", "dataset.num_workers=0",
    "model.ngf=8", "model.ndf=8", "model.num_upsampling_layers=normal", "loss.lambda_vgg=0.0",
    "train.batch_size=4", "train.epochs=1", "train.epochs_decay=0", "train.device=cpu",
    "train.checkpoint_every=100", "train.sample_every=100", "train.log_every=1",
    "judge.epochs=1", "judge.width=8", "judge.batch_size=8", "judge.device=cpu",
    "evaluate.device=cpu", "evaluate.fid='off'", "evaluate.lpips='off'", "evaluate.download_weights=false",
    "evaluate.num_grid_samples=2", "evaluate.num_attention_samples=1",
    # two training steps cannot pass the quality gate; open it so the registration branch runs
    "register.gate_miou_ratio=0.0", "register.gate_fd_beats_baseline=false",
]


def test_whole_pipeline_runs_locally_and_registers_the_model(tmp_path, monkeypatch):
    from kfp import local
    from mlflow.tracking import MlflowClient

    from pipeline.pipeline import build_pipeline
    from pipeline.tasks import ClusterSettings

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # the components' subprocesses inherit it
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout
    pipeline_root = tmp_path / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))

    dagan_pipeline = build_pipeline(ClusterSettings(gpus=0))  # CPU: train in-process
    dagan_pipeline(params_file=str(ROOT / "params.yaml"), overrides=TINY, variant="B2", max_steps=2)  # typed fields

    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("dagan-synthetic", "candidate")
    assert client.get_model_version_by_alias("dagan-synthetic", "champion").version == version.version
    training_run = client.get_run(version.run_id)
    assert training_run.data.params["model.ngf"] == "8"
    assert training_run.data.params["train.total_steps"] == "2"
    assert training_run.data.params["model.variant"] == "B2" and training_run.data.params["model.use_sam"] == "True"
    assert training_run.info.run_name.startswith("B2-synthetic-2steps-")
    assert training_run.data.tags["kfp.run_id"], "the KFP run id on the MLflow run the pipeline created"
    assert "eval/judge_miou_generated" in training_run.data.metrics
    assert version.tags["gate_passed"] == "True"

    registrations = list(pipeline_root.rglob("registration/registration.json"))
    assert len(registrations) == 1
    record = json.loads(registrations[0].read_text())
    assert record["model_uri"] == f"models:/dagan-synthetic/{version.version}"
    assert set(record["aliases"]) == {"candidate", "champion"}
    (samples,) = pipeline_root.rglob("evaluate/samples")
    assert "data:image/png;base64," in samples.read_text()
    (report,) = pipeline_root.rglob("evaluate/report")
    assert "registration gate passed" in report.read_text()
    assert not list(tmp_path.glob("outputs")), "every step wrote into its artifacts, not default paths"
