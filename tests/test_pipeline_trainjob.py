"""The distributed training launch (pipeline/trainjob.py): the Kubeflow Trainer TrainJob spec for
2 nodes x 4 GPUs, the PyTorchJob alternative, submit-and-wait against a fake Kubernetes API (the
one thing mocked: there is no cluster here), and the launcher step end to end, where the fake API
plays the cluster by running the spec's own command in-process on CPU; the nodes' logs copied into the
launcher's log; the KFP run id reaching the training's MLflow run."""

from __future__ import annotations

import json
import runpy
import sys
from types import SimpleNamespace

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from train_fixtures import tiny_settings, write_prepared

from pipeline import steps, trainjob
from pipeline.trainjob import DistributedTraining, SecretEnv, TrainJobError

IMAGE = "registry.example.com/dagan:1.2.3"
ARGS = ("--params", "params.yaml", "-S", "dataset.prepared_dir=/mnt/shared/run/data",
        "-S", "train.out_dir=/mnt/shared/run/train")
SECRETS = (SecretEnv("MLFLOW_TRACKING_URI", "dagan-mlflow", "MLFLOW_TRACKING_URI"),
           SecretEnv("AWS_ENDPOINT_URL", "dagan-s3", "AWS_ENDPOINT_URL", optional=True))


def two_by_four(**changes) -> DistributedTraining:
    settings = dict(name="dagan-abc", image=IMAGE, train_args=ARGS, num_nodes=2, gpus_per_node=4,
                    cpu_per_node="16", memory_per_node="128Gi", shm_size="32Gi", shared_pvc="dagan-shared",
                    secret_env=SECRETS, namespace="team-a")
    return DistributedTraining(**{**settings, **changes})


def test_trainjob_spec_for_two_nodes_of_four_gpus():
    spec = trainjob.trainjob_spec(two_by_four())
    assert spec["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and spec["kind"] == "TrainJob"
    assert spec["metadata"]["name"] == "dagan-abc" and spec["metadata"]["namespace"] == "team-a"
    assert spec["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                          "kind": "ClusterTrainingRuntime"}
    trainer = spec["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["image"] == IMAGE
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 4, "cpu": "16", "memory": "128Gi"}
    assert trainer["resourcesPerNode"]["requests"] == trainer["resourcesPerNode"]["limits"]
    assert trainer["command"] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--max-restarts", "3",
                                  "-m", "components.train", *ARGS]
    assert trainer["env"] == [
        {"name": "MLFLOW_TRACKING_URI",
         "valueFrom": {"secretKeyRef": {"name": "dagan-mlflow", "key": "MLFLOW_TRACKING_URI"}}},
        {"name": "AWS_ENDPOINT_URL",
         "valueFrom": {"secretKeyRef": {"name": "dagan-s3", "key": "AWS_ENDPOINT_URL", "optional": True}}}]
    (patch,) = spec["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
                              {"name": "shared", "persistentVolumeClaim": {"claimName": "dagan-shared"}}]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"},
                                         {"name": "shared", "mountPath": "/mnt/shared"}]
    assert container["securityContext"]["runAsNonRoot"] is True
    yaml.safe_dump(spec)  # plain data: kubectl apply -f works on its dump


def test_pytorchjob_alternative_for_two_nodes_of_four_gpus():
    spec = trainjob.pytorchjob_spec(two_by_four())
    assert spec["apiVersion"] == "kubeflow.org/v1" and spec["kind"] == "PyTorchJob"
    assert spec["spec"]["nprocPerNode"] == "4"
    replicas = spec["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["command"][:5] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "4"]
    assert "$(RANK)" in container["command"] and container["command"][-len(ARGS):] == list(ARGS)
    assert container["command"][container["command"].index("--max-restarts") + 1] == "3"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_plain_env_comes_before_the_secret_references_and_restarts_are_configurable():
    job = two_by_four(env=(("KFP_RUN_ID", "run-123"),), max_restarts=0)
    trainer = trainjob.trainjob_spec(job)["spec"]["trainer"]
    assert trainer["env"][0] == {"name": "KFP_RUN_ID", "value": "run-123"}
    assert all("valueFrom" in item for item in trainer["env"][1:]), "credentials only as secret references"
    assert trainer["command"][trainer["command"].index("--max-restarts") + 1] == "0"
    with pytest.raises(ValueError, match="max_restarts must be >= 0"):
        two_by_four(max_restarts=-1)


@pytest.mark.filterwarnings("ignore:'components.train' found in sys.modules")
def test_an_uncaught_error_of_the_training_lands_in_torchruns_error_file(tmp_path, monkeypatch):
    """``python -m components.train`` (what torchrun starts) records the exception (@record) for the summary."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def broken_load(args):
        raise RuntimeError("boom in the training")

    monkeypatch.setattr("components.cli.load", broken_load)
    monkeypatch.setattr(sys, "argv", ["components.train", "-q"])
    with pytest.raises(RuntimeError, match="boom in the training"):
        runpy.run_module("components.train", run_name="__main__")
    assert "boom in the training" in json.loads(error_file.read_text())["message"]["message"]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shared ReadWriteMany volume"):
        two_by_four(shared_pvc=None)
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        two_by_four(num_nodes=0)


class FakeCustomObjectsApi:
    """The Kubernetes API server for trainjobs: records calls, reports the statuses it is given.

    ``run_job`` (optional) plays the cluster: called with the spec when the job is first polled.
    """

    def __init__(self, statuses: list[dict], run_job=None, existing: bool = False):
        self.statuses, self.run_job, self.existing = list(statuses), run_job, existing
        self.created: list[tuple] = []
        self.polls = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.existing:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((group, version, namespace, plural, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.polls += 1
        if self.run_job is not None and self.polls == 1:
            self.run_job(self.created[0][4])
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"metadata": {"name": name, "namespace": namespace}, "status": status}


class FakeCoreV1Api:
    """Pods of the TrainJob and their logs (timestamped, as ``timestamps=True`` returns them); each read returns
    the lines logged so far, so the reader must skip what it printed before."""

    def __init__(self, logs: dict[str, list[str]], phases: dict[str, str] | None = None, forbidden: bool = False):
        self.logs, self.phases, self.forbidden = logs, phases or {}, forbidden
        self.reads: list[tuple[str, int | None]] = []
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace, label_selector):
        if self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        self.selectors.append(label_selector)
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=name),
                                                      status=SimpleNamespace(phase=self.phases.get(name, "Running")))
                                      for name in self.logs])

    def read_namespaced_pod_log(self, name, namespace, timestamps, since_seconds=None):
        assert timestamps is True
        self.reads.append((name, since_seconds))
        return "".join(f"2026-01-01T00:00:0{i}.000000000Z {line}\n" for i, line in enumerate(self.logs[name]))


def test_the_nodes_logs_reach_the_launchers_log_once_each(capsys):
    core = FakeCoreV1Api({"dagan-abc-node-0-0": ["step 1/4"], "dagan-abc-node-0-1": ["rank 4 ready"]},
                         phases={"dagan-abc-node-0-1": "Pending"})
    api = FakeCustomObjectsApi([RUNNING, RUNNING, COMPLETE])

    def progress(spec):  # the job logs more while it runs
        core.logs["dagan-abc-node-0-0"].append("step 2/4")
        core.phases["dagan-abc-node-0-1"] = "Running"

    api.run_job = progress
    trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=api, logs_api=core)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[dagan-abc-node-0-0] step 1/4", "[dagan-abc-node-0-0] step 2/4",
                       "[dagan-abc-node-0-1] rank 4 ready"]
    assert core.selectors[0] == "jobset.sigs.k8s.io/jobset-name=dagan-abc"
    first_node = [since for name, since in core.reads if name == "dagan-abc-node-0-0"]
    assert first_node[0] is None and all(since is not None for since in first_node[1:]), "then only recent lines"


def test_without_permission_for_logs_the_launcher_says_so_once_and_waits_on(caplog):
    api = FakeCustomObjectsApi([RUNNING, COMPLETE])
    trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=api, logs_api=FakeCoreV1Api({}, forbidden=True))
    warnings = [record.message for record in caplog.records if "node logs" in record.message]
    assert len(warnings) == 1 and "pods/log" in warnings[0] and api.polls == 2


RUNNING = {"conditions": [{"type": "Created", "status": "True"}]}
COMPLETE = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Complete", "status": "True"}]}
FAILED = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                          "message": "node-1 exited with 1"}]}


def test_submit_and_wait_until_complete():
    api = FakeCustomObjectsApi([RUNNING, RUNNING, COMPLETE])
    result = trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=api)
    assert _condition_types(result) == ["Created", "Complete"]
    ((group, version, namespace, plural, body),) = api.created
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs")
    assert body == trainjob.trainjob_spec(two_by_four())
    assert api.polls == 3


def _condition_types(obj: dict) -> list[str]:
    return [condition["type"] for condition in obj["status"]["conditions"]]


def test_a_failed_job_raises_with_its_reason():
    api = FakeCustomObjectsApi([RUNNING, FAILED])
    with pytest.raises(TrainJobError, match="team-a/dagan-abc failed: BackoffLimitExceeded node-1 exited with 1"):
        trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=api)


def test_a_retried_launcher_attaches_to_the_existing_job():
    api = FakeCustomObjectsApi([COMPLETE], existing=True)
    trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=api)
    assert api.created == [] and api.polls == 1


def test_other_api_errors_are_explained():
    class Forbidden(FakeCustomObjectsApi):
        def create_namespaced_custom_object(self, *args):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(TrainJobError, match="403 Forbidden.*service account may create trainjobs"):
        trainjob.run_trainjob(two_by_four(), timeout_s=60, poll_s=0, api=Forbidden([RUNNING]))


def test_waiting_past_the_timeout_raises():
    now = [0.0]
    api = FakeCustomObjectsApi([RUNNING])

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(TrainJobError, match="did not finish within 100 s"):
        trainjob.wait_for_trainjob(api, "dagan-abc", "team-a", timeout_s=100, poll_s=30, clock=lambda: now[0],
                                   sleep=sleep)
    assert api.polls == 5  # t = 0, 30, 60, 90, 120


def test_launcher_step_end_to_end_on_a_fake_cluster(tmp_path, monkeypatch):
    """steps.train_distributed: copies the data to the shared volume, submits the spec, waits, exports the model.

    The fake cluster runs the spec's command (minus torchrun, one CPU process) with the same
    arguments, so the paths and overrides in the spec are the ones that really train.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    prepared = write_prepared(tmp_path / "prepared", num_train=4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_settings(prepared, tmp_path / "unused", max_steps=2,
                                                     checkpoint_every=100, sample_every=100)))
    shared = tmp_path / "shared"

    def cluster_runs(spec):
        command = spec["spec"]["trainer"]["command"]
        assert command[:8] == ["torchrun", "--nnodes", "2", "--nproc_per_node", "4", "--max-restarts", "3", "-m"]
        from components import train

        for item in spec["spec"]["trainer"]["env"]:  # the nodes' plain env (the secrets are references)
            if "value" in item:
                monkeypatch.setenv(item["name"], item["value"])
        assert train.main(command[9:]) == 0

    api = FakeCustomObjectsApi([COMPLETE], run_job=cluster_runs)
    model_dir = tmp_path / "artifacts" / "model"
    metrics = steps.train_distributed(
        str(params), ["train.lr_g=2e-4"], str(prepared), str(model_dir), job_name="dagan-run1",
        work_dir=f"{shared}/run1", image=IMAGE, num_nodes=2, gpus_per_node=4,
        resources={"cpu": "16", "memory": "128Gi", "shm": "32Gi"}, shared_pvc="dagan-shared",
        shared_mount=str(shared), secret_env=[{"env": "MLFLOW_TRACKING_URI", "secret": "dagan-mlflow",
                                               "key": "MLFLOW_TRACKING_URI"}], timeout_s=600,
        kfp_run_id="kfp-run-7", api=api)
    args = api.created[0][4]["spec"]["trainer"]["command"]
    assert f"dataset.prepared_dir={shared}/run1/data" in args and f"train.out_dir={shared}/run1/train" in args
    assert args.index("train.lr_g=2e-4") < args.index(f"train.out_dir={shared}/run1/train"), "user overrides first"
    assert (shared / "run1" / "data" / "manifest.json").is_file()
    assert (model_dir / "checkpoints" / "final.pt").is_file()
    run_id = json.loads((model_dir / "mlflow_run.json").read_text())["run_id"]
    assert metrics["steps"] == 2.0
    from mlflow import MlflowClient

    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data.tags["kfp.run_id"] == "kfp-run-7"


def test_launcher_step_refuses_a_work_dir_off_the_shared_volume(tmp_path):
    with pytest.raises(ValueError, match="must lie on the shared volume mounted at /mnt/shared"):
        steps.train_distributed("params.yaml", [], str(tmp_path), str(tmp_path / "m"), job_name="x",
                                work_dir="/tmp/elsewhere", image=IMAGE, num_nodes=1, gpus_per_node=1,
                                resources={"cpu": "1", "memory": "1Gi", "shm": "1Gi"}, shared_pvc="p",
                                shared_mount="/mnt/shared", secret_env=[], timeout_s=1, api=object())


@pytest.mark.parametrize(("kind", "api_version"), [("trainjob", "trainer.kubeflow.org/v1alpha1"),
                                                   ("pytorchjob", "kubeflow.org/v1")])
def test_print_a_job_for_kubectl(kind, api_version, capsys):
    code = trainjob.main(["--kind", kind, "--name", "dagan-b6", "--namespace", "team-a", "--image", IMAGE,
                          "--nodes", "2", "--gpus-per-node", "4", "--shared-pvc", "dagan-shared",
                          "--prepared-dir", "/mnt/shared/data/cityscapes", "--out-dir", "/mnt/shared/runs/b6",
                          "-S", "dataset.name=cityscapes"])
    assert code == 0
    text = capsys.readouterr().out
    assert "&id" not in text, "plain YAML without anchors"
    spec = yaml.safe_load(text)
    assert spec["apiVersion"] == api_version and spec["metadata"]["namespace"] == "team-a"
    command = json.dumps(spec)
    for arg in ("dataset.name=cityscapes", "dataset.prepared_dir=/mnt/shared/data/cityscapes",
                "train.out_dir=/mnt/shared/runs/b6"):
        assert arg in command


def test_print_refuses_a_bad_shape(capsys):
    assert trainjob.main(["--name", "x", "--image", IMAGE, "--nodes", "0", "--shared-pvc", "p",
                          "--prepared-dir", "/d", "--out-dir", "/o"]) == 2
    assert "num_nodes must be >= 1" in capsys.readouterr().err
