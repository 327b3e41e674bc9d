"""Distributed training on the cluster's own engine: a Kubeflow Trainer TrainJob running torchrun.

The train step of the pipeline either trains in its own pod (:func:`run_in_process`: one
process, or ``torchrun --standalone`` over the pod's GPUs; this is also the local mode) or
launches a TrainJob (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``) that runs
``torchrun -m components.train`` over N nodes x G GPUs in the project image and waits for it.
The torch-distributed runtime injects ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and
``PET_MASTER_PORT`` into every node; torchrun reads them. Data and checkpoints live on a shared
ReadWriteMany volume mounted on every node (rank 0 writes; a resubmitted job resumes from the
newest checkpoint there); MLflow and S3 settings come from Kubernetes secrets.

Submission uses the kubernetes client's ``CustomObjectsApi`` (already pinned through kfp) rather
than the ``kubeflow`` SDK's TrainerClient: kubeflow 0.5 installs beside our pins, but its
container trainer cannot set the command, secret-backed env or volumes (``env`` takes plain
strings, which would put credentials into the spec), and its function trainer ships a function's
source instead of running our CLI. The spec below is plain data, so a test can check it exactly.

torchrun runs with ``--max-restarts`` (default 3): a failed worker group restarts and, as every
start of ``components.train`` does, resumes from the newest checkpoint in ``train.out_dir``;
``components.train`` records its exception into torchrun's error file (``@record``), so the root
cause of a failure is named in the log. While waiting, the launcher copies the nodes' logs into
its own (:class:`pipeline.node_logs.NodeLogs`), so they appear in the Kubeflow step's log.

The PyTorchJob (training-operator v1, ``kubeflow.org/v1``) alternative for clusters still on the
training operator: :func:`pytorchjob_spec` (docs/KUBEFLOW.md).
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.node_logs import NodeLogs

log = logging.getLogger("pipeline.trainjob")

TRAINER_GROUP, TRAINER_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION = "kubeflow.org", "v1"
NODE = "node"  # replicated job and container name of the torch-distributed runtime
PATCH_MANAGER = "dagan.pipeline"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(RuntimeError):
    """The TrainJob failed, timed out, or could not be submitted."""


@dataclass(frozen=True)
class SecretEnv:
    """An environment variable taken from a key of a Kubernetes secret (never a literal value)."""

    env: str
    secret: str
    key: str
    optional: bool = False

    def to_env_var(self) -> dict[str, Any]:
        ref = {"name": self.secret, "key": self.key, **({"optional": True} if self.optional else {})}
        return {"name": self.env, "valueFrom": {"secretKeyRef": ref}}


@dataclass(frozen=True)
class DistributedTraining:
    """What a distributed training needs: the job's shape, image, command arguments and storage."""

    name: str
    image: str
    train_args: tuple[str, ...]  # components.train argv: --params FILE -S key=value ...
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_per_node: str = "8"
    memory_per_node: str = "64Gi"
    shm_size: str = "16Gi"  # memory-backed /dev/shm for NCCL and DataLoader workers
    shared_pvc: str | None = None  # ReadWriteMany claim with the prepared data and train.out_dir
    shared_mount: str = "/mnt/shared"
    secret_env: tuple[SecretEnv, ...] = ()
    runtime: str = "torch-distributed"
    namespace: str = "kubeflow"
    labels: dict[str, str] = field(default_factory=dict)
    env: tuple[tuple[str, str], ...] = ()  # plain (name, value) variables that are not secret, e.g. KFP_RUN_ID
    max_restarts: int = 3  # torchrun restarts of a failed worker group; each resumes from the newest checkpoint

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError(f"TrainJob {self.name!r}: num_nodes must be >= 1 and gpus_per_node >= 0, got "
                             f"num_nodes={self.num_nodes}, gpus_per_node={self.gpus_per_node}")
        if self.max_restarts < 0:
            raise ValueError(f"TrainJob {self.name!r}: max_restarts must be >= 0, got {self.max_restarts}")
        if self.num_nodes > 1 and not self.shared_pvc:
            raise ValueError(f"TrainJob {self.name!r}: {self.num_nodes} nodes need a shared ReadWriteMany volume "
                             "for the data and checkpoints; pass shared_pvc (compile with --shared-pvc NAME)")

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    def command(self) -> list[str]:
        """torchrun over all nodes; the rendezvous (rank, master) comes from the runtime's PET_* env."""
        return ["torchrun", "--nnodes", str(self.num_nodes), "--nproc_per_node", str(self.procs_per_node),
                "--max-restarts", str(self.max_restarts), "-m", "components.train", *self.train_args]

    def env_vars(self) -> list[dict[str, Any]]:
        """The containers' env: the plain variables, then the secret references."""
        return [{"name": name, "value": value} for name, value in self.env] + \
            [secret.to_env_var() for secret in self.secret_env]

    def resources(self) -> dict[str, dict[str, Any]]:
        amounts: dict[str, Any] = {"cpu": self.cpu_per_node, "memory": self.memory_per_node}
        if self.gpus_per_node:
            amounts["nvidia.com/gpu"] = self.gpus_per_node
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def volumes(self) -> tuple[list[dict], list[dict]]:
        volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": self.shm_size}}]
        mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
        if self.shared_pvc:
            volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": self.shared_pvc}})
            mounts.append({"name": "shared", "mountPath": self.shared_mount})
        return volumes, mounts


def _security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False}


def trainjob_spec(job: DistributedTraining) -> dict[str, Any]:
    """The TrainJob custom object (Kubeflow Trainer v2.3 API) for ``job``."""
    volumes, mounts = job.volumes()
    pod_patch = {"volumes": volumes,
                 "containers": [{"name": NODE, "volumeMounts": mounts, "securityContext": _security_context()}]}
    return {
        "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": job.name, "namespace": job.namespace,
                     "labels": {"app.kubernetes.io/part-of": "dagan", **job.labels}},
        "spec": {
            "runtimeRef": {"name": job.runtime, "apiGroup": TRAINER_GROUP, "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": job.image,
                "command": job.command(),
                "numNodes": job.num_nodes,
                "numProcPerNode": job.procs_per_node,
                "resourcesPerNode": job.resources(),
                "env": job.env_vars(),
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": NODE, "template": {"spec": {"template": {"spec": pod_patch}}},
                }]}}},
            }],
        },
    }


def pytorchjob_spec(job: DistributedTraining) -> dict[str, Any]:
    """The same training as a PyTorchJob (training-operator v1): one Master and num_nodes - 1 Workers.

    The operator puts MASTER_ADDR, MASTER_PORT and RANK (the replica's node rank) into every
    container's env; Kubernetes expands the ``$(VAR)`` references of the command from it.
    """
    volumes, mounts = job.volumes()
    command = ["torchrun", "--nnodes", str(job.num_nodes), "--nproc_per_node", str(job.procs_per_node),
               "--node_rank", "$(RANK)", "--master_addr", "$(MASTER_ADDR)", "--master_port", "$(MASTER_PORT)",
               "--max-restarts", str(job.max_restarts), "-m", "components.train", *job.train_args]
    env = job.env_vars()
    container = {"name": "pytorch", "image": job.image, "command": command, "env": env,
                 "resources": job.resources(), "volumeMounts": mounts, "securityContext": _security_context()}

    def replica(count: int) -> dict[str, Any]:
        return copy.deepcopy({"replicas": count, "restartPolicy": "OnFailure",
                              "template": {"spec": {"containers": [container], "volumes": volumes}}})

    replicas = {"Master": replica(1)}
    if job.num_nodes > 1:
        replicas["Worker"] = replica(job.num_nodes - 1)
    return {
        "apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": job.name, "namespace": job.namespace,
                     "labels": {"app.kubernetes.io/part-of": "dagan", **job.labels}},
        "spec": {"nprocPerNode": str(job.procs_per_node), "pytorchReplicaSpecs": replicas},
    }


def current_namespace(default: str = "kubeflow") -> str:
    """The pod's own namespace inside a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def _load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def custom_objects_api():
    """A CustomObjectsApi with the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client

    _load_kube_config()
    return client.CustomObjectsApi()


def core_v1_api():
    """A CoreV1Api (pods and their logs) with the same credentials as :func:`custom_objects_api`."""
    from kubernetes import client

    _load_kube_config()
    return client.CoreV1Api()


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def submit_trainjob(api, spec: dict[str, Any]) -> str:
    """Create the TrainJob; one that already exists (a retried launcher) is attached to, not duplicated."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = spec["metadata"]["name"], spec["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, namespace, TRAINJOB_PLURAL, spec)
        log.info("created TrainJob %s/%s", namespace, name)
    except ApiException as err:
        if err.status != 409:
            raise TrainJobError(f"could not create TrainJob {namespace}/{name}: {err.status} {err.reason}; "
                                "check that Kubeflow Trainer is installed and the pipeline's service account "
                                "may create trainjobs (docs/KUBEFLOW.md)") from err
        log.info("TrainJob %s/%s exists already (retried step): waiting for it", namespace, name)
    return name


def wait_for_trainjob(api, name: str, namespace: str, timeout_s: float, poll_s: float = 30.0,
                      clock=time.monotonic, sleep=time.sleep, logs: NodeLogs | None = None) -> dict[str, Any]:
    """Poll until the TrainJob is Complete (returned) or Failed / past ``timeout_s`` (TrainJobError), copying the
    nodes' new log lines at every poll when ``logs`` is given."""
    deadline = clock() + timeout_s
    while True:
        obj = api.get_namespaced_custom_object(TRAINER_GROUP, TRAINER_VERSION, namespace, TRAINJOB_PLURAL, name)
        if logs is not None:
            logs.pump()
        if _condition(obj, "Complete"):
            log.info("TrainJob %s/%s complete", namespace, name)
            return obj
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {failed.get('reason', '')} "
                                f"{failed.get('message', '')}".rstrip())
        if clock() >= deadline:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f} s; it is left "
                                "running: inspect it with kubectl, delete it or run the step again to wait on")
        sleep(poll_s)


def run_trainjob(job: DistributedTraining, timeout_s: float, poll_s: float = 30.0, api=None,
                 logs_api=None) -> dict[str, Any]:
    """Submit the TrainJob for ``job`` and wait for it to complete, printing its nodes' logs.

    ``api`` / ``logs_api``: a CustomObjectsApi and a CoreV1Api (default: the cluster's; with an
    ``api`` given and no ``logs_api``, no logs are read).
    """
    if api is None:
        api, logs_api = custom_objects_api(), logs_api or core_v1_api()
    name = submit_trainjob(api, trainjob_spec(job))
    logs = NodeLogs(logs_api, name, job.namespace, poll_s) if logs_api is not None else None
    return wait_for_trainjob(api, name, job.namespace, timeout_s, poll_s, logs=logs)


def run_in_process(train_args: Sequence[str], nproc: int = 1) -> None:
    """The local mode: ``components.train`` in this process, or torchrun over ``nproc`` local processes."""
    if nproc <= 1:
        from components import train

        code = train.main(list(train_args))
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(nproc), "-m", "components.train", *train_args]
        code = subprocess.run(command, check=False, env=os.environ.copy()).returncode
    if code != 0:
        raise TrainJobError(f"components.train exited with status {code} (args: {' '.join(train_args)})")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.trainjob``: print a TrainJob (or PyTorchJob) for ``kubectl apply -f -``."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m pipeline.trainjob",
                                     description="Print the distributed training job as YAML (kubectl apply -f -).")
    parser.add_argument("--kind", choices=("trainjob", "pytorchjob"), default="trainjob")
    parser.add_argument("--name", required=True, help="job name (DNS-1123)")
    parser.add_argument("--namespace", default="kubeflow")
    parser.add_argument("--image", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpu", default="8")
    parser.add_argument("--memory", default="64Gi")
    parser.add_argument("--shm-size", default="16Gi")
    parser.add_argument("--shared-pvc", required=True, help="ReadWriteMany claim holding the prepared data")
    parser.add_argument("--shared-mount", default="/mnt/shared")
    parser.add_argument("--prepared-dir", required=True, help="prepared dataset on the shared volume")
    parser.add_argument("--out-dir", required=True, help="train.out_dir on the shared volume (checkpoints)")
    parser.add_argument("--mlflow-secret", default="dagan-mlflow")
    parser.add_argument("--s3-secret", default="dagan-s3")
    parser.add_argument("--params", default="params.yaml", help="params file inside the image")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    train_args = ["--params", args.params]
    for item in [*args.overrides, f"dataset.prepared_dir={args.prepared_dir}", f"train.out_dir={args.out_dir}"]:
        train_args += ["-S", item]
    secrets = (SecretEnv("MLFLOW_TRACKING_URI", args.mlflow_secret, "MLFLOW_TRACKING_URI"),
               SecretEnv("AWS_ACCESS_KEY_ID", args.s3_secret, "AWS_ACCESS_KEY_ID"),
               SecretEnv("AWS_SECRET_ACCESS_KEY", args.s3_secret, "AWS_SECRET_ACCESS_KEY"),
               SecretEnv("MLFLOW_S3_ENDPOINT_URL", args.s3_secret, "MLFLOW_S3_ENDPOINT_URL", optional=True))
    try:
        job = DistributedTraining(name=args.name, image=args.image, train_args=tuple(train_args),
                                  num_nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpu_per_node=args.cpu,
                                  memory_per_node=args.memory, shm_size=args.shm_size, shared_pvc=args.shared_pvc,
                                  shared_mount=args.shared_mount, secret_env=secrets, namespace=args.namespace)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = trainjob_spec(job) if args.kind == "trainjob" else pytorchjob_spec(job)
    print(yaml.safe_dump(spec, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
