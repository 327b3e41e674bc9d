"""``python -m pipeline.submit`` against a fake kfp.Client (no Kubeflow cluster here): the package is
uploaded as a pipeline version and run with the -S overrides as the run's parameters (docs/KUBEFLOW.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline import compile as compile_cli
from pipeline import submit


class FakeClient:
    """Records what submit asks of the Kubeflow Pipelines API; checks the package it uploads."""

    instances: list[FakeClient] = []
    existing_pipeline: str | None = None
    final_state = "SUCCEEDED"

    def __init__(self, host, namespace="kubeflow", existing_token=None, **kwargs):
        self.host, self.namespace, self.token = host, namespace, existing_token
        self.calls: list[tuple] = []
        self.uploaded: list[dict] = []
        FakeClient.instances.append(self)

    def _read(self, path):
        self.uploaded.append(next(yaml.safe_load_all(Path(path).read_text())))

    def create_experiment(self, name, namespace=None):
        self.calls.append(("create_experiment", name, namespace))
        return SimpleNamespace(experiment_id="exp-1")

    def get_pipeline_id(self, name):
        self.calls.append(("get_pipeline_id", name))
        return self.existing_pipeline

    def upload_pipeline(self, path, pipeline_name=None, namespace=None):
        self._read(path)
        self.calls.append(("upload_pipeline", pipeline_name, namespace))
        return SimpleNamespace(pipeline_id="pipe-new")

    def list_pipeline_versions(self, pipeline_id, page_size=10, sort_by=""):
        self.calls.append(("list_pipeline_versions", pipeline_id))
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id="ver-first")])

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id=None):
        self._read(path)
        self.calls.append(("upload_pipeline_version", pipeline_version_name, pipeline_id))
        return SimpleNamespace(pipeline_version_id="ver-next")

    def run_pipeline(self, **kwargs):
        self.calls.append(("run_pipeline", kwargs))
        return SimpleNamespace(run_id="run-42")

    def wait_for_run_completion(self, run_id, timeout):
        self.calls.append(("wait_for_run_completion", run_id, timeout))
        return SimpleNamespace(state=self.final_state)


@pytest.fixture
def client(monkeypatch):
    FakeClient.instances = []
    FakeClient.existing_pipeline = None
    FakeClient.final_state = "SUCCEEDED"
    monkeypatch.setattr(submit.kfp, "Client", FakeClient)
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    return FakeClient


def calls_named(fake: FakeClient, name: str) -> list[tuple]:
    return [call for call in fake.calls if call[0] == name]


def test_first_submit_uploads_the_pipeline_and_runs_it_with_the_overrides(client, capsys):
    code = submit.main(["--host", "http://kfp.test", "--experiment", "sweeps", "--image", "reg.test/dagan:7",
                        "-S", "train.lr_g=2e-4", "-S", "model.variant=B1", "--run-name", "b1-run"])
    assert code == 0
    (fake,) = client.instances
    assert fake.host == "http://kfp.test" and fake.token is None
    assert calls_named(fake, "create_experiment") == [("create_experiment", "sweeps", None)]
    assert calls_named(fake, "upload_pipeline") == [("upload_pipeline", "dagan", None)]
    ((_, run),) = calls_named(fake, "run_pipeline")
    assert run == {"experiment_id": "exp-1", "job_name": "b1-run", "pipeline_id": "pipe-new", "version_id": "ver-first",
                   "params": {"params_file": "/app/params.yaml", "overrides": ["train.lr_g=2e-4", "model.variant=B1"]},
                   "enable_caching": None}
    (package,) = fake.uploaded  # compiled now, from the cluster flags
    images = {e["container"]["image"] for e in package["deploymentSpec"]["executors"].values()}
    assert images == {"reg.test/dagan:7"}
    assert "run-42" in capsys.readouterr().out
    assert calls_named(fake, "wait_for_run_completion") == []


def test_later_submits_add_a_version_and_can_skip_the_cache(client, tmp_path):
    client.existing_pipeline = "pipe-old"
    package = tmp_path / "dagan-trainjob.yaml"
    assert compile_cli.main(["--output", str(package), "--trainjob", "--shared-pvc", "shared", "--gpus", "8"]) == 0
    code = submit.main(["--host", "http://kfp.test", "--package", str(package), "--no-cache", "--namespace", "team-a",
                        "--num-nodes", "4", "--gpus-per-node", "8", "-S", "train.epochs=3"])
    assert code == 0
    (fake,) = client.instances
    assert fake.namespace == "team-a"
    ((_, version_name, pipeline_id),) = calls_named(fake, "upload_pipeline_version")
    assert pipeline_id == "pipe-old" and version_name.startswith("dagan-")
    assert calls_named(fake, "upload_pipeline") == []
    ((_, run),) = calls_named(fake, "run_pipeline")
    assert run["version_id"] == "ver-next" and run["enable_caching"] is False
    assert run["params"] == {"params_file": "/app/params.yaml", "overrides": ["train.epochs=3"], "num_nodes": 4,
                             "gpus_per_node": 8}


def test_several_nodes_for_a_pipeline_without_trainjob_are_refused(client, tmp_path, capsys):
    package = tmp_path / "dagan.yaml"
    assert compile_cli.main(["--output", str(package)]) == 0
    assert submit.main(["--host", "http://kfp.test", "--package", str(package), "--num-nodes", "2"]) == 2
    assert "num_nodes=2: training on several nodes needs the pipeline compiled with --trainjob" in \
        capsys.readouterr().err
    assert submit.main(["--host", "http://kfp.test", "--package", str(package), "--gpus-per-node", "2"]) == 0
    assert client.instances[0].calls[-1][1]["params"]["gpus_per_node"] == 2  # the train pod's GPUs, per run
    cpu_package = tmp_path / "dagan-cpu.yaml"
    assert compile_cli.main(["--output", str(cpu_package), "--gpus", "0"]) == 0
    assert submit.main(["--host", "http://kfp.test", "--package", str(cpu_package), "--gpus-per-node", "1"]) == 2
    assert "compiled for CPU (--gpus 0)" in capsys.readouterr().err
    assert len(client.instances) == 1, "refused before talking to the cluster"


@pytest.mark.parametrize(("state", "code"), [("SUCCEEDED", 0), ("FAILED", 1)])
def test_wait_reports_the_final_state(client, state, code, monkeypatch):
    client.final_state = state
    monkeypatch.setenv("KFP_TOKEN", "token-from-env")
    assert submit.main(["--host", "http://kfp.test", "--wait", "--timeout", "600"]) == code
    (fake,) = client.instances
    assert fake.token == "token-from-env"
    assert calls_named(fake, "wait_for_run_completion") == [("wait_for_run_completion", "run-42", 600)]


def test_malformed_override_and_missing_package_are_clear_errors(client, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit.main(["--host", "http://kfp.test", "-S", "train.lr_g"])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert submit.main(["--host", "http://kfp.test", "--package", str(tmp_path / "nope.yaml")]) == 2
    assert "python -m pipeline.compile" in capsys.readouterr().err
