"""The cluster's side of both Kubeflow pipelines: the compile-time settings and the task setup that applies them.

:class:`ClusterSettings` is what a cluster provides, decided at compile time (``python -m
pipeline.compile`` / ``python -m pipeline.tune_pipeline`` flags): the image, the train pod's
GPUs / CPU / memory / shared memory, retries, the names of the secrets that carry the MLflow
tracking URI and the S3 credentials, an optional shared volume, whether training runs in its
own pod or as a Kubeflow Trainer TrainJob (with its timeout and its nodes' grace period), and
where GPU pods may run (:class:`pipeline.scheduling.Scheduling`: tolerations, node selector,
Kueue queue).

The functions below set a task up for the cluster: ``with_secrets`` / ``with_shared_volume`` /
``with_gpus`` (GPUs, /dev/shm and the scheduling) apply one setting; :func:`prepare_and_judge`
builds the two first steps both pipelines share (the main pipeline of pipeline/pipeline.py and the sweep of
pipeline/tune_pipeline.py) with their resources, caching and retries; :func:`with_train_pod`
gives a task the train pod's resources (the in-pod train step and the sweep's tune step).
One home, so the two pipelines cannot drift apart (``tests/test_pipeline_compile.py`` compares them).
"""

from dataclasses import dataclass

from kfp import dsl
from kfp import kubernetes as k8s
from kfp.dsl.pipeline_channel import PipelineChannel

from pipeline.scheduling import Scheduling
from pipeline.trainjob import DEFAULT_GRACE_S

DEFAULT_IMAGE = "dagan:0.1.0"
IMAGE_PARAMS = "/app/params.yaml"  # the params file baked into the image (Dockerfile: WORKDIR /app)
GPU = "nvidia.com/gpu"

# Kubernetes secret name -> {secret key: environment variable}, required and optional keys.
MLFLOW_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
MLFLOW_OPTIONAL_KEYS = {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
S3_OPTIONAL_KEYS = {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"}


@dataclass(frozen=True)
class ClusterSettings:
    image: str = DEFAULT_IMAGE
    gpus: int = 1  # per train pod (in-pod training) and per node (TrainJob default)
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"
    train_retries: int = 2
    mlflow_secret: str = "dagan-mlflow"
    s3_secret: str = "dagan-s3"
    shared_pvc: str | None = None  # ReadWriteMany claim: raw data, TrainJob data and checkpoints
    shared_mount: str = "/mnt/shared"
    trainjob: bool = False  # train as a Kubeflow Trainer TrainJob (needs shared_pvc)
    trainjob_timeout_s: float = 7 * 24 * 3600.0  # the launcher's wait and the TrainJob's activeDeadlineSeconds
    trainjob_grace_s: int = DEFAULT_GRACE_S  # terminationGracePeriodSeconds of the TrainJob's nodes
    scheduling: Scheduling = Scheduling()  # of every GPU pod: train, train_judge, evaluate, tune, TrainJob nodes

    def __post_init__(self) -> None:
        if self.trainjob and not self.shared_pvc:
            raise ValueError("a TrainJob needs a shared ReadWriteMany volume for data and checkpoints: "
                             "compile with --shared-pvc NAME (docs/KUBEFLOW.md)")
        if self.gpus < 0 or self.train_retries < 0:
            raise ValueError(f"gpus and train_retries must be >= 0, got {self.gpus} and {self.train_retries}")
        if self.trainjob_timeout_s < 1 or self.trainjob_grace_s < 1:
            raise ValueError(f"--trainjob-timeout-s and --trainjob-grace-s must be >= 1 s, got "
                             f"{self.trainjob_timeout_s:g} and {self.trainjob_grace_s}")

    @property
    def work_root(self) -> str:
        return f"{self.shared_mount}/dagan-runs" if self.shared_pvc else ""

    def secret_env(self) -> list[dict]:
        """The TrainJob's env entries (secret references only, never values)."""
        return [{"env": env, "secret": secret, "key": key, "optional": optional}
                for secret, keys, optional in ((self.mlflow_secret, MLFLOW_KEYS, False),
                                               (self.mlflow_secret, MLFLOW_OPTIONAL_KEYS, True),
                                               (self.s3_secret, S3_KEYS, False),
                                               (self.s3_secret, S3_OPTIONAL_KEYS, True))
                for key, env in keys.items()]


def with_secrets(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    """The MLflow and S3 secrets as environment variables (for the steps that talk to MLflow)."""
    k8s.use_secret_as_env(task, settings.mlflow_secret, MLFLOW_KEYS)
    k8s.use_secret_as_env(task, settings.mlflow_secret, MLFLOW_OPTIONAL_KEYS, optional=True)
    k8s.use_secret_as_env(task, settings.s3_secret, S3_KEYS)
    k8s.use_secret_as_env(task, settings.s3_secret, S3_OPTIONAL_KEYS, optional=True)
    return task


def with_shared_volume(task: dsl.PipelineTask, settings: ClusterSettings) -> dsl.PipelineTask:
    """The shared ReadWriteMany volume at ``settings.shared_mount``, when the pipeline is compiled with one."""
    if settings.shared_pvc:
        k8s.mount_pvc(task, pvc_name=settings.shared_pvc, mount_path=settings.shared_mount)
    return task


def with_gpus(task: dsl.PipelineTask, gpus, settings: ClusterSettings) -> dsl.PipelineTask:
    """``gpus`` GPUs (a number, or a run parameter) and the GPU pods' scheduling when the pipeline is compiled for
    GPUs; /dev/shm always."""
    if settings.gpus > 0 and (isinstance(gpus, PipelineChannel) or gpus > 0):
        task.set_accelerator_type(GPU).set_accelerator_limit(gpus)
        with_scheduling(task, settings.scheduling)
    k8s.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                        size_limit=settings.shm_size)
    return task


def with_scheduling(task: dsl.PipelineTask, scheduling: Scheduling) -> dsl.PipelineTask:
    """The tolerations, node selector and Kueue queue label of a GPU pod."""
    for toleration in scheduling.tolerations:
        k8s.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value or None,
                           effect=toleration.effect or None)
    for key, value in scheduling.node_selector:
        k8s.add_node_selector(task, label_key=key, label_value=value)
    for key, value in scheduling.queue_labels().items():
        k8s.add_pod_label(task, label_key=key, label_value=value)
    return task


def with_train_pod(task: dsl.PipelineTask, gpus, settings: ClusterSettings) -> dsl.PipelineTask:
    """The train pod's resources (``--cpu`` / ``--memory`` as request and limit, ``gpus`` GPUs, /dev/shm), the
    shared volume and the secrets: the in-pod train step, and the sweep's tune step that trains inside Ray."""
    task.set_cpu_request(settings.cpu).set_cpu_limit(settings.cpu)
    task.set_memory_request(settings.memory).set_memory_limit(settings.memory)
    with_gpus(task, gpus, settings)
    with_shared_volume(task, settings)
    return with_secrets(task, settings)


def prepare_and_judge(ops: dict, settings: ClusterSettings, params_file, overrides
                      ) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """The prepare and train_judge tasks of both pipelines. Both are cached: deterministic functions of the
    params file and overrides. ``ops`` are the components of ``pipeline.kfp_components.build_components``."""
    prepare = ops["prepare"](params_file=params_file, overrides=overrides)
    prepare.set_display_name("prepare").set_caching_options(True)
    prepare.set_cpu_request("2").set_cpu_limit("4").set_memory_request("8Gi").set_memory_limit("16Gi")
    with_shared_volume(prepare, settings)  # raw datasets may live on the shared volume

    judge = ops["train_judge"](params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"])
    judge.set_display_name("train_judge").set_caching_options(True).set_retry(1, backoff_duration="60s")
    judge.set_cpu_request("4").set_memory_request("16Gi").set_memory_limit("32Gi")
    with_gpus(judge, min(settings.gpus, 1), settings)
    return prepare, judge
