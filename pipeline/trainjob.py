"""Distributed training on the cluster's own engine: the Kubeflow Trainer TrainJob and the command of its nodes.

With ``--trainjob`` the pipeline's train step launches a TrainJob (Kubeflow Trainer v2,
``trainer.kubeflow.org/v1alpha1``) that trains over N nodes x G GPUs in the project image
(pipeline/launcher.py submits it and waits). This module is what the job is: its spec, and the
command every node runs, :func:`node_command`.

The node command is torch elastic's fault-tolerant launch: torchrun (through
:mod:`pipeline.elastic`) with the c10d rendezvous, a rendezvous id per job (the TrainJob's name)
and the rendezvous endpoint that the torch-distributed runtime injects into every node
(``PET_MASTER_ADDR``:``PET_MASTER_PORT``, node 0's address and port 29400; Kubernetes expands the
``$(VAR)`` references from the container's env). ``--nnodes`` is fixed: the job trains on all
its nodes or waits for them, never on fewer (docs/KUBEFLOW.md, "When things fail", says why).
``--max-restarts`` restarts a failed worker group on every node; each start of
``components.train`` resumes from the newest checkpoint in ``train.out_dir`` on the shared
ReadWriteMany volume (rank 0 writes it), and ``components.train`` records its exception into
torchrun's error file (``@record``), so the root cause of a failure is named in the log. The
same function builds the command of the two-node test on 127.0.0.1 (tests/test_train_elastic.py).

Preemption: the pods get ``terminationGracePeriodSeconds`` (a setting whose default comes from
the measured SIGTERM-to-checkpoint time, bench/preemption.py) and torchrun waits as long for its
workers after forwarding SIGTERM (``--shutdown-timeout``). The TrainJob gets
``activeDeadlineSeconds`` from the launcher's timeout, and the scheduling settings
(:mod:`pipeline.scheduling`: tolerations, node selector, Kueue queue).

Submission uses the kubernetes client's ``CustomObjectsApi`` (already pinned through kfp) rather
than the ``kubeflow`` SDK's TrainerClient: kubeflow 0.5 installs beside our pins, but its
container trainer cannot set the command, secret-backed env or volumes (``env`` takes plain
strings, which would put credentials into the spec), and its function trainer ships a function's
source instead of running our CLI. The spec below is plain data, so a test can check it exactly.

The PyTorchJob (training-operator v1, ``kubeflow.org/v1``) alternative for clusters still on the
training operator: :func:`pytorchjob_spec` (docs/KUBEFLOW.md).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.scheduling import Scheduling, add_scheduling_arguments, scheduling_from

TRAINER_GROUP, TRAINER_VERSION, TRAINJOB_PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
PYTORCHJOB_GROUP, PYTORCHJOB_VERSION = "kubeflow.org", "v1"
NODE = "node"  # replicated job and container name of the torch-distributed runtime
PATCH_MANAGER = "dagan.pipeline"
RUNTIME_RDZV_ENDPOINT = "$(PET_MASTER_ADDR):$(PET_MASTER_PORT)"  # Kubeflow Trainer's torch runtime: node 0
OPERATOR_RDZV_ENDPOINT = "$(MASTER_ADDR):$(MASTER_PORT)"  # the training operator's PyTorchJob: the Master
# terminationGracePeriodSeconds of the nodes: the measured SIGTERM-to-checkpoint time of the Cityscapes B6 model
# (bench/results/preemption.json) with a margin (docs/KUBEFLOW.md, "Preemption"; a test keeps the two in step).
DEFAULT_GRACE_S = 180
DEFAULT_JOIN_TIMEOUT_S = 600  # how long a node waits for the others (also for a lost node's replacement)


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


def node_command(train_args: Sequence[str], *, num_nodes: int, procs_per_node: int, rdzv_endpoint: str,
                 rdzv_id: str, max_restarts: int, join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S,
                 shutdown_timeout_s: int = DEFAULT_GRACE_S, python: str = "python") -> list[str]:
    """The command of one node: torchrun (:mod:`pipeline.elastic`) with the c10d rendezvous at ``rdzv_endpoint``
    (``HOST:PORT``) under ``rdzv_id``, running ``components.train`` with ``train_args``.

    ``join_timeout_s``: how long a node waits for all ``num_nodes`` (at the start, and after a restart for a
    lost node's replacement); ``shutdown_timeout_s``: how long torchrun lets its workers write their
    checkpoint after forwarding SIGTERM before it kills them.
    """
    return [python, "-m", "pipeline.elastic", "--nnodes", str(num_nodes), "--nproc-per-node", str(procs_per_node),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id,
            "--rdzv-conf", f"join_timeout={join_timeout_s}", "--max-restarts", str(max_restarts),
            "--shutdown-timeout", str(shutdown_timeout_s), "-m", "components.train", *train_args]


@dataclass(frozen=True)
class DistributedTraining:
    """What a distributed training needs: the job's shape, image, command arguments, storage and scheduling."""

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
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S
    grace_s: int = DEFAULT_GRACE_S  # terminationGracePeriodSeconds: SIGTERM to SIGKILL
    active_deadline_s: int | None = None  # activeDeadlineSeconds of the TrainJob (None: no deadline)
    scheduling: Scheduling = Scheduling()

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError(f"TrainJob {self.name!r}: num_nodes must be >= 1 and gpus_per_node >= 0, got "
                             f"num_nodes={self.num_nodes}, gpus_per_node={self.gpus_per_node}")
        if self.max_restarts < 0:
            raise ValueError(f"TrainJob {self.name!r}: max_restarts must be >= 0, got {self.max_restarts}")
        if self.grace_s < 1 or self.join_timeout_s < 1 or (self.active_deadline_s is not None
                                                          and self.active_deadline_s < 1):
            raise ValueError(f"TrainJob {self.name!r}: grace_s, join_timeout_s and active_deadline_s must be >= 1 s, "
                             f"got {self.grace_s}, {self.join_timeout_s} and {self.active_deadline_s}")
        if self.num_nodes > 1 and not self.shared_pvc:
            raise ValueError(f"TrainJob {self.name!r}: {self.num_nodes} nodes need a shared ReadWriteMany volume "
                             "for the data and checkpoints; pass shared_pvc (compile with --shared-pvc NAME)")

    @property
    def procs_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    def command(self, rdzv_endpoint: str = RUNTIME_RDZV_ENDPOINT, python: str = "python") -> list[str]:
        """:func:`node_command` for this job: rendezvous id = the job's name, at ``rdzv_endpoint`` (by default the
        one the torch-distributed runtime injects)."""
        return node_command(self.train_args, num_nodes=self.num_nodes, procs_per_node=self.procs_per_node,
                            rdzv_endpoint=rdzv_endpoint, rdzv_id=self.name, max_restarts=self.max_restarts,
                            join_timeout_s=self.join_timeout_s, shutdown_timeout_s=self.grace_s, python=python)

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

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "dagan", **self.scheduling.queue_labels(), **self.labels}}


def _security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False}


def trainjob_spec(job: DistributedTraining) -> dict[str, Any]:
    """The TrainJob custom object (Kubeflow Trainer v2.3 API) for ``job``."""
    volumes, mounts = job.volumes()
    pod_patch = {"volumes": volumes,
                 "containers": [{"name": NODE, "volumeMounts": mounts, "securityContext": _security_context()}],
                 "terminationGracePeriodSeconds": job.grace_s, **job.scheduling.pod_spec()}
    spec: dict[str, Any] = {
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
    }
    if job.active_deadline_s is not None:
        spec["activeDeadlineSeconds"] = job.active_deadline_s
    return {"apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": "TrainJob", "metadata": job.metadata(),
            "spec": spec}


def pytorchjob_spec(job: DistributedTraining) -> dict[str, Any]:
    """The same training as a PyTorchJob (training-operator v1): one Master and num_nodes - 1 Workers.

    The operator puts MASTER_ADDR and MASTER_PORT (the Master's service) into every container's env; Kubernetes
    expands the ``$(VAR)`` references of the command from it, so the c10d rendezvous runs at the Master.
    """
    volumes, mounts = job.volumes()
    container = {"name": "pytorch", "image": job.image, "command": job.command(OPERATOR_RDZV_ENDPOINT),
                 "env": job.env_vars(), "resources": job.resources(), "volumeMounts": mounts,
                 "securityContext": _security_context()}
    pod = {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": job.grace_s,
           **job.scheduling.pod_spec()}

    def replica(count: int) -> dict[str, Any]:
        return copy.deepcopy({"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": pod}})

    replicas = {"Master": replica(1)}
    if job.num_nodes > 1:
        replicas["Worker"] = replica(job.num_nodes - 1)
    spec: dict[str, Any] = {"nprocPerNode": str(job.procs_per_node), "pytorchReplicaSpecs": replicas}
    if job.active_deadline_s is not None:
        spec["runPolicy"] = {"activeDeadlineSeconds": job.active_deadline_s}
    return {"apiVersion": f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}", "kind": "PyTorchJob",
            "metadata": job.metadata(), "spec": spec}


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
    parser.add_argument("--grace-s", type=int, default=DEFAULT_GRACE_S,
                        help="terminationGracePeriodSeconds of the nodes (default %(default)s, docs/KUBEFLOW.md)")
    parser.add_argument("--deadline-s", type=int, default=None, help="activeDeadlineSeconds of the job (default: none)")
    add_scheduling_arguments(parser)
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
                                  shared_mount=args.shared_mount, secret_env=secrets, namespace=args.namespace,
                                  grace_s=args.grace_s, active_deadline_s=args.deadline_s,
                                  scheduling=scheduling_from(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    spec = trainjob_spec(job) if args.kind == "trainjob" else pytorchjob_spec(job)
    print(yaml.safe_dump(spec, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
