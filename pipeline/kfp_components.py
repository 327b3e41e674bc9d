"""Kubeflow components: lightweight Python components that run the pipeline steps in the project image.

Every function below is shipped as source to a container of the project image (``base_image``)
and runs there. It only imports :mod:`pipeline.steps` (installed in the image) and moves between
KFP artifacts and the step's files: the work is the same ``components.<step>.main`` that DVC runs.
The image already pins kfp (requirements.lock), so nothing is pip-installed at run time
(``install_kfp_package=False``): pods need no network access to a package index.

Lightweight rather than container components: kfp.local's SubprocessRunner runs these, so the
whole pipeline runs locally in a test; it cannot run container components.

No ``from __future__ import annotations`` here: KFP reads the artifact types from the annotations.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def configure(overrides: list, dataset: str, raw_dir: str, generator: str, discriminator: str, variant: str,
              max_steps: int, epochs: int, epochs_decay: int, batch_size: int, lambda_feat: float, lambda_vgg: float,
              num_nodes: int, gpus_per_node: int, trainjob: bool, cluster_gpus: int) -> list:
    """The run's config overrides: its typed fields that are set ("" and -1 keep the params file's value), then
    the free-form overrides; refuses a node/GPU shape the compiled pipeline cannot run."""
    from pipeline import steps

    steps.check_shape(num_nodes, gpus_per_node, trainjob, cluster_gpus)
    fields = {"dataset": dataset, "raw_dir": raw_dir, "generator": generator, "discriminator": discriminator,
              "variant": variant, "max_steps": max_steps, "epochs": epochs, "epochs_decay": epochs_decay,
              "batch_size": batch_size, "lambda_feat": lambda_feat, "lambda_vgg": lambda_vgg}
    return steps.run_overrides(fields, overrides)


def prepare(params_file: str, overrides: list, prepared: Output[Dataset], metrics: Output[Metrics]):
    """Raw data (the synthetic set is generated first) -> Parquet shards + manifest.json."""
    from pipeline import steps

    for name, value in steps.prepare(params_file, overrides, prepared.path).items():
        metrics.log_metric(name, value)


def train_judge(params_file: str, overrides: list, prepared: Input[Dataset], judge: Output[Model],
                metrics: Output[Metrics]):
    """Train the segmentation judge on the real training images; score it on the real val images."""
    from pipeline import steps

    for name, value in steps.train_judge(params_file, overrides, prepared.path, judge.path).items():
        metrics.log_metric(name, value)


def train(params_file: str, overrides: list, prepared: Input[Dataset], nproc: int, work_root: str, job_id: str,
          model: Output[Model], metrics: Output[Metrics]):
    """Train DAGAN in this pod: one process, or torchrun over ``nproc`` GPUs. With ``work_root`` (a shared
    volume) checkpoints live there and a retried step resumes."""
    from pipeline import steps

    work_dir = f"{work_root}/{job_id}/train" if work_root else ""
    for name, value in steps.train(params_file, overrides, prepared.path, model.path, nproc, work_dir,
                                   kfp_run_id=job_id).items():
        metrics.log_metric(name, value)


def train_distributed(params_file: str, overrides: list, prepared: Input[Dataset], image: str, num_nodes: int,
                      gpus_per_node: int, resources: dict, shared_pvc: str, shared_mount: str, work_root: str,
                      secret_env: list, timeout_s: float, grace_s: int, scheduling: dict, job_id: str,
                      model: Output[Model], metrics: Output[Metrics]):
    """Launch a Kubeflow Trainer TrainJob (torchrun over num_nodes x gpus_per_node), or recover the one an earlier
    attempt of this step launched, and wait for it; SIGTERM or the timeout deletes it."""
    from pipeline import steps

    values = steps.train_distributed(
        params_file, overrides, prepared.path, model.path, job_name=f"dagan-{job_id.replace('-', '')[:20]}",
        work_dir=f"{work_root}/{job_id}", image=image, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        resources=resources, shared_pvc=shared_pvc, shared_mount=shared_mount, secret_env=secret_env,
        timeout_s=timeout_s, grace_s=grace_s, scheduling=scheduling, kfp_run_id=job_id)
    for name, value in values.items():
        metrics.log_metric(name, value)


def evaluate(params_file: str, overrides: list, prepared: Input[Dataset], judge: Input[Model],
             model: Input[Model], evaluation: Output[Artifact], metrics: Output[Metrics], samples: Output[HTML],
             report: Output[Markdown]) -> str:
    """Score the generator (judge mIoU, Fréchet distances, baseline); return the registration gate's verdict,
    "passed" or "failed" (a single return value: kfp.local resolves conditions on it, not on NamedTuple fields)."""
    from pipeline import steps

    values, passed, reasons = steps.evaluate(params_file, overrides, prepared.path, judge.path, model.path,
                                             evaluation.path)
    for name, value in values.items():
        metrics.log_metric(name, value)
    gate = "passed" if passed else "failed"
    with open(samples.path, "w", encoding="utf-8") as file:
        file.write(steps.images_html(evaluation.path, "DAGAN evaluation: samples and attention maps"))
    with open(report.path, "w", encoding="utf-8") as file:
        file.write(steps.metrics_markdown(f"Evaluation (registration gate {gate})", values, reasons))
    return gate


def register(params_file: str, overrides: list, prepared: Input[Dataset], model: Input[Model],
             evaluation: Input[Artifact], registration: Output[Artifact], report: Output[Markdown]):
    """Register the generator in the MLflow registry (candidate; champion when it beats the current one)."""
    from pipeline import steps

    record = steps.register(params_file, overrides, prepared.path, model.path, evaluation.path, registration.path)
    registration.metadata.update({key: record[key] for key in ("model_name", "version", "model_uri", "aliases")})
    notes = [f"model `{record['model_uri']}`, aliases: {', '.join(record['aliases'])}", *record["reasons"]]
    with open(report.path, "w", encoding="utf-8") as file:
        file.write(steps.metrics_markdown("Registration", {}, notes))


STEP_FUNCTIONS = (configure, prepare, train_judge, train, train_distributed, evaluate, register)


def build_components(image: str) -> dict[str, dsl.component]:
    """The KFP components of every step, running in ``image``."""
    return {func.__name__: dsl.component(func, base_image=image, install_kfp_package=False)
            for func in STEP_FUNCTIONS}
