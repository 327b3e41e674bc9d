"""The distributed training job (pipeline/trainjob.py): the Kubeflow Trainer TrainJob spec for 2 nodes x 4 GPUs
(the torch-elastic node command with the c10d rendezvous, the grace period, the deadline, the scheduling), the
PyTorchJob alternative, the one-line failures of a node (pipeline/elastic.py) and the kubectl printer. The
launcher that submits the job: tests/test_pipeline_launcher.py; the node command running for real on two
"nodes": tests/test_train_elastic.py."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import yaml

from pipeline import elastic, trainjob
from pipeline.scheduling import Scheduling, Toleration, parse_node_selector
from pipeline.trainjob import DistributedTraining, SecretEnv

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
    assert trainer["command"] == [
        "python", "-m", "pipeline.elastic", "--nnodes", "2", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", "--rdzv-id", "dagan-abc",
        "--rdzv-conf", "join_timeout=600", "--max-restarts", "3", "--shutdown-timeout", str(trainjob.DEFAULT_GRACE_S),
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
    assert pod["terminationGracePeriodSeconds"] == trainjob.DEFAULT_GRACE_S
    assert "tolerations" not in pod and "nodeSelector" not in pod and "activeDeadlineSeconds" not in spec["spec"]
    assert spec["metadata"]["labels"] == {"app.kubernetes.io/part-of": "dagan"}
    yaml.safe_dump(spec)  # plain data: kubectl apply -f works on its dump


def test_the_node_command_is_one_builder_for_the_trainjob_and_a_local_run():
    """The TrainJob's nodes and the two-node test on 127.0.0.1 get their command from one function."""
    job = two_by_four(join_timeout_s=30, grace_s=45, max_restarts=1)
    local = trainjob.node_command(ARGS, num_nodes=2, procs_per_node=4, rdzv_endpoint="127.0.0.1:29400",
                                  rdzv_id="dagan-abc", max_restarts=1, join_timeout_s=30, shutdown_timeout_s=45)
    assert job.command("127.0.0.1:29400") == local
    assert trainjob.trainjob_spec(job)["spec"]["trainer"]["command"] == job.command()
    assert local[local.index("--rdzv-endpoint") + 1] == "127.0.0.1:29400"
    assert local[local.index("--rdzv-conf") + 1] == "join_timeout=30"
    assert local[local.index("--shutdown-timeout") + 1] == "45", "torchrun lets the workers use the grace period"
    assert trainjob.node_command(ARGS, num_nodes=1, procs_per_node=1, rdzv_endpoint="h:1", rdzv_id="x",
                                 max_restarts=0, python="/venv/bin/python")[0] == "/venv/bin/python"


def test_grace_period_deadline_and_scheduling_reach_the_trainjob():
    scheduling = Scheduling(tolerations=(Toleration("nvidia.com/gpu", "", "NoSchedule"),
                                         Toleration("dedicated", "ml", "")),
                            node_selector=(("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),), queue="gpu-queue")
    spec = trainjob.trainjob_spec(two_by_four(grace_s=150, active_deadline_s=3600, scheduling=scheduling))
    assert spec["spec"]["activeDeadlineSeconds"] == 3600
    assert spec["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    pod = spec["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 150
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "dedicated", "operator": "Equal", "value": "ml"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    command = spec["spec"]["trainer"]["command"]
    assert command[command.index("--shutdown-timeout") + 1] == "150"
    pytorchjob = trainjob.pytorchjob_spec(two_by_four(grace_s=150, active_deadline_s=3600, scheduling=scheduling))
    master = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["tolerations"] == pod["tolerations"] and master["terminationGracePeriodSeconds"] == 150
    assert pytorchjob["spec"]["runPolicy"] == {"activeDeadlineSeconds": 3600}


@pytest.mark.parametrize(("text", "expected"), [
    ("nvidia.com/gpu:NoSchedule", Toleration("nvidia.com/gpu", "", "NoSchedule")),
    ("dedicated=ml", Toleration("dedicated", "ml", "")),
    ("cloud.google.com/gke-spot=true:NoExecute", Toleration("cloud.google.com/gke-spot", "true", "NoExecute"))])
def test_tolerations_use_kubectl_taints_grammar(text, expected):
    assert Toleration.parse(text) == expected
    assert Scheduling.from_dict(Scheduling(tolerations=(expected,), queue="q").to_dict()) == \
        Scheduling(tolerations=(expected,), queue="q")


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Toleration.parse("gpu:Sometimes"), "effect 'Sometimes' is not one of NoSchedule"),
    (lambda: Toleration.parse("=x"), "toleration key '' is not a valid Kubernetes name"),
    (lambda: parse_node_selector(["gpu"]), "node selector 'gpu' is not KEY=VALUE"),
    (lambda: Scheduling(queue="GPU Queue"), "Kueue queue 'GPU Queue' is not a valid Kubernetes name")])
def test_bad_scheduling_settings_are_one_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_pytorchjob_alternative_for_two_nodes_of_four_gpus():
    spec = trainjob.pytorchjob_spec(two_by_four())
    assert spec["apiVersion"] == "kubeflow.org/v1" and spec["kind"] == "PyTorchJob"
    assert spec["spec"]["nprocPerNode"] == "4"
    replicas = spec["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    command = container["command"]
    assert command[command.index("--rdzv-endpoint") + 1] == "$(MASTER_ADDR):$(MASTER_PORT)", "the Master's service"
    assert command[command.index("--rdzv-id") + 1] == "dagan-abc" and command[-len(ARGS):] == list(ARGS)
    assert command[command.index("--max-restarts") + 1] == "3"
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
    with pytest.raises(ValueError, match="grace_s, join_timeout_s and active_deadline_s must be >= 1 s"):
        two_by_four(grace_s=0)


def test_a_node_that_cannot_go_on_says_why_in_one_line():
    """pipeline.elastic's lines for the rendezvous failures (the timeout also runs for real in test_train_elastic)."""
    from torch.distributed.elastic.rendezvous.api import (
        RendezvousClosedError,
        RendezvousConnectionError,
        RendezvousTimeoutError,
    )

    def line(err):
        return elastic.failure_line(err, "dagan-abc", "dagan-abc-node-0-0.dagan-abc:29400", "2", 600)

    assert line(RendezvousTimeoutError()).startswith(
        "error: fewer than 2 nodes joined the rendezvous 'dagan-abc' at dagan-abc-node-0-0.dagan-abc:29400 within "
        "600 s: a node was lost")
    assert "the node that serves it (node 0 of a TrainJob) is gone" in line(RendezvousConnectionError())
    assert "another node ended the job" in line(RendezvousClosedError())
    assert all("\n" not in line(err) and "submit the job again to resume" in line(err)
               for err in (RendezvousTimeoutError(), RendezvousConnectionError(), RendezvousClosedError()))
    assert line(RuntimeError("anything else")) is None, "other errors keep their traceback"
    assert elastic.join_timeout_s("join_timeout=30,close_timeout=5") == 30 and elastic.join_timeout_s("") == 600


@pytest.mark.parametrize(("kind", "api_version"), [("trainjob", "trainer.kubeflow.org/v1alpha1"),
                                                   ("pytorchjob", "kubeflow.org/v1")])
def test_print_a_job_for_kubectl(kind, api_version, capsys):
    code = trainjob.main(["--kind", kind, "--name", "dagan-b6", "--namespace", "team-a", "--image", IMAGE,
                          "--nodes", "2", "--gpus-per-node", "4", "--shared-pvc", "dagan-shared",
                          "--prepared-dir", "/mnt/shared/data/cityscapes", "--out-dir", "/mnt/shared/runs/b6",
                          "-S", "dataset.name=cityscapes", "--toleration", "nvidia.com/gpu:NoSchedule",
                          "--kueue-queue", "gpu-queue", "--grace-s", "200"])
    assert code == 0
    text = capsys.readouterr().out
    assert "&id" not in text, "plain YAML without anchors"
    spec = yaml.safe_load(text)
    assert spec["apiVersion"] == api_version and spec["metadata"]["namespace"] == "team-a"
    command = json.dumps(spec)
    for arg in ("dataset.name=cityscapes", "dataset.prepared_dir=/mnt/shared/data/cityscapes",
                "train.out_dir=/mnt/shared/runs/b6", '"terminationGracePeriodSeconds": 200',
                '{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}'):
        assert arg in command
    assert spec["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


@pytest.mark.parametrize(("flags", "message"), [(("--nodes", "0"), "num_nodes must be >= 1"),
                                               (("--toleration", "gpu:Always"), "toleration effect 'Always'")])
def test_print_refuses_a_bad_setting_in_one_line(flags, message, capsys):
    assert trainjob.main(["--name", "x", "--image", IMAGE, "--shared-pvc", "p", "--prepared-dir", "/d",
                          "--out-dir", "/o", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
