"""The Kubeflow pipeline: prepare -> train_judge -> train -> evaluate -> register (behind the gate).

The same steps as ``dvc repro``, each a component of pipeline/kfp_components.py in the project image.
What a cluster provides is decided at compile time (:class:`pipeline.tasks.ClusterSettings`): the
image, the train step's GPUs / CPU / memory / shared memory, retries, the names of the secrets that
carry the MLflow tracking URI and the S3 credentials, an optional shared volume, and whether
training runs in the train step's own pod or as a Kubeflow Trainer TrainJob over several nodes.
pipeline/tasks.py applies them, and builds the prepare and train_judge tasks this pipeline shares
with the sweep (pipeline/tune_pipeline.py).
What a run chooses is a typed pipeline parameter (the run form's fields): the params file, the
dataset, the generator and discriminator families, the variant, the step and epoch counts, the
batch size, the loss weights, the nodes and GPUs per node, and free-form config overrides (``-S``
grammar) as the escape hatch. The first step, ``configure``, turns them into the overrides every
later step applies.

Caching, deliberately: prepare and train_judge are deterministic functions of the config, so a
rerun with the same inputs reuses them; train, evaluate and register write to MLflow and the
registry, so they always run.

No ``from __future__ import annotations``: KFP reads the parameter types from the annotations.
"""

from kfp import dsl
from kfp import kubernetes as k8s

from pipeline.kfp_components import build_components
from pipeline.launcher import POD_NAME_ENV
from pipeline.tasks import (
    IMAGE_PARAMS,
    ClusterSettings,
    prepare_and_judge,
    with_gpus,
    with_secrets,
    with_shared_volume,
    with_train_pod,
)

PIPELINE_NAME = "dagan"


def _steps(ops: dict, settings: ClusterSettings, params_file, overrides, num_nodes, gpus_per_node) -> None:
    """The DAG after configure: ``overrides`` is its output, ``num_nodes`` / ``gpus_per_node`` run parameters."""
    prepare, judge = prepare_and_judge(ops, settings, params_file, overrides)

    if settings.trainjob:
        train = ops["train_distributed"](
            params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
            image=settings.image, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
            resources={"cpu": settings.cpu, "memory": settings.memory, "shm": settings.shm_size},
            shared_pvc=settings.shared_pvc, shared_mount=settings.shared_mount, work_root=settings.work_root,
            secret_env=settings.secret_env(), timeout_s=settings.trainjob_timeout_s,
            grace_s=settings.trainjob_grace_s, scheduling=settings.scheduling.to_dict(),
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        train.set_cpu_request("1").set_memory_request("2Gi").set_memory_limit("4Gi")  # a launcher: it waits
        with_shared_volume(train, settings)
        k8s.use_field_path_as_env(train, POD_NAME_ENV, "metadata.name")  # the run's workflow owns the TrainJob
    else:
        train = ops["train"](params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
                             nproc=gpus_per_node, work_root=settings.work_root,
                             job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        with_train_pod(train, gpus_per_node, settings)
    train.set_display_name("train").set_caching_options(False)
    train.set_retry(settings.train_retries, backoff_duration="120s", backoff_factor=2.0)

    evaluate = ops["evaluate"](params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
                               judge=judge.outputs["judge"], model=train.outputs["model"])
    evaluate.set_display_name("evaluate").set_caching_options(False).set_retry(1, backoff_duration="60s")
    evaluate.set_cpu_request("4").set_memory_request("16Gi").set_memory_limit("32Gi")
    with_gpus(evaluate, min(settings.gpus, 1), settings)
    with_secrets(evaluate, settings)

    with dsl.If(evaluate.outputs["Output"] == "passed", name="registration-gate"):
        register = ops["register"](params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
                                   model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"])
        register.set_display_name("register").set_caching_options(False).set_retry(2, backoff_duration="30s")
        register.set_cpu_request("2").set_memory_request("8Gi").set_memory_limit("16Gi")
        with_secrets(register, settings)


def build_pipeline(settings: ClusterSettings = ClusterSettings()):  # noqa: B008 (frozen, immutable default)
    """The pipeline function for ``settings`` (compile it with kfp's Compiler or run it with kfp.local)."""
    ops = build_components(settings.image)
    description = "DAGAN: prepare, judge, train, evaluate, register (gated)" + (
        "; training as a Kubeflow Trainer TrainJob" if settings.trainjob else "")
    default_nodes = 2 if settings.trainjob else 1
    default_gpus = max(settings.gpus, 1) if settings.trainjob else settings.gpus

    @dsl.pipeline(name=PIPELINE_NAME, description=description)
    def dagan_pipeline(params_file: str = IMAGE_PARAMS, dataset: str = "", raw_dir: str = "", generator: str = "",
                       discriminator: str = "", variant: str = "", max_steps: int = -1, epochs: int = -1,
                       epochs_decay: int = -1, batch_size: int = -1, lambda_feat: float = -1.0,
                       lambda_vgg: float = -1.0,
                       overrides: list = [],  # noqa: B006 (a KFP default)
                       num_nodes: int = default_nodes, gpus_per_node: int = default_gpus):
        """Run parameters (the run form's fields; "" and -1 keep the params file's value).

        Args:
            params_file: params file inside the image (default: the one baked in at /app/params.yaml).
            dataset: dataset.name, e.g. cityscapes (then also raw_dir).
            raw_dir: dataset.raw_dir, the raw dataset's folder (e.g. on the shared volume).
            generator: model.generator: dagan (SPADE + SAM/CAM), ccfpse (CC-FPSE) or ca2sis (CA2SIS).
            discriminator: model.discriminator: multiscale (PatchGAN) or fpse (CC-FPSE's feature pyramid).
            variant: model.variant, B1..B6 (paper Table 4; the dagan generator only).
            max_steps: train.max_steps; 0 trains the whole schedule.
            epochs: train.epochs (constant learning rate).
            epochs_decay: train.epochs_decay (linear decay to zero).
            batch_size: train.batch_size, the global batch.
            lambda_feat: loss.lambda_feat, the feature-matching weight.
            lambda_vgg: loss.lambda_vgg, the VGG19 perceptual weight (needs the VGG19 weights).
            overrides: any other config values as KEY=VALUE strings (the -S grammar); they win over the fields.
            num_nodes: training nodes; more than 1 needs a pipeline compiled with --trainjob.
            gpus_per_node: GPUs of the train pod, or of each TrainJob node.
        """
        configure = ops["configure"](
            overrides=overrides, dataset=dataset, raw_dir=raw_dir, generator=generator, discriminator=discriminator,
            variant=variant, max_steps=max_steps,
            epochs=epochs, epochs_decay=epochs_decay, batch_size=batch_size, lambda_feat=lambda_feat,
            lambda_vgg=lambda_vgg, num_nodes=num_nodes, gpus_per_node=gpus_per_node, trainjob=settings.trainjob,
            cluster_gpus=settings.gpus)
        configure.set_display_name("configure").set_caching_options(True)
        configure.set_cpu_request("100m").set_memory_request("256Mi").set_memory_limit("1Gi")
        _steps(ops, settings, params_file, configure.output, num_nodes, gpus_per_node)

    return dagan_pipeline
