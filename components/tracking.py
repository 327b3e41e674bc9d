"""How the runs look in MLflow: experiment kind, run names, descriptions, params, tags, the dataset.

Shared by components.train (one run per training), the sweep's parent run and its trials
(components.tune, components.tune_trial). The conventions follow MLflow's own:

* the experiment is marked as model development (tag ``mlflow.experimentKind``), so the UI opens
  on its runs, not on the GenAI overview;
* a run is named ``<model>-<dataset>-<steps>steps-<short commit>`` (``<model>``: :func:`model_label`,
  e.g. ``B6``, ``B6+vae``, ``ccfpse+fpse``, ``B1+spap-both``) and described in one line (``mlflow.note.content``,
  the run page's description, which names the model as :func:`model_phrase` does);
* params describe the training with resolved values: the variant's real SAM/CAM, the preset's
  sizes, the real total steps, the device and the process count; where things are written
  (``train.out_dir``) and tracked (the tracking URI, credentials removed) are tags;
* the commit is the standard ``mlflow.source.git.commit`` tag; a Kubeflow run adds ``kfp.run_id``;
* ``evaluated`` is ``no`` until components.evaluate scores the run (``yes``, and the description
  gains the key scores): runs without eval metrics show NaN in the compare view, so filter with
  ``tags.evaluated = 'yes'`` first;
* the prepared dataset is a run input (the runs table's Dataset column), named by the dataset,
  with the manifest's sha256 as digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException

from components.outputs import local_artifact_location
from dagan.config import Config, resolved_value
from dagan.data import read_manifest
from dagan.data.manifest import Manifest
from dagan.schedule import steps_per_epoch, total_steps

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
COMMIT_TAG = "mlflow.source.git.commit"
KFP_RUN_TAG = "kfp.run_id"
EVALUATED_TAG = "evaluated"  # "no" until components.evaluate scores the run ("yes"): filter before comparing
EVAL_NOTE = " | evaluated: "  # evaluate appends its summary to the description after this marker
KFP_RUN_ENV = "KFP_RUN_ID"  # set by the Kubeflow steps (pipeline/steps.py) and the TrainJob's nodes
COMMIT_ENV = "DAGAN_GIT_COMMIT"  # the image's commit (Dockerfile), where there is no .git
# train keys that say where and how often to write, not what is trained: tags or nothing
TRAIN_RUN_KEYS = ("out_dir", "checkpoint_every", "keep_last", "log_every", "sample_every", "heap_reuse",
                  "max_steps", "device")
DATASET_KEYS = ("name", "load_size", "crop_size", "aspect_ratio", "flip")
CAM_NAMES = {"off": "no CAM", "I": "CAM-I", "II": "CAM-II"}
STYLE_PHRASES = {"off": "", "vae": " + style encoder", "noise3d": " + 3D noise"}  # model.style (docs/MULTIMODAL.md)


def git_commit() -> str | None:
    """The checkout's commit, else the image's (``$DAGAN_GIT_COMMIT``), else None."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    commit = os.environ.get(COMMIT_ENV, "").strip()
    return commit if commit and commit != "unknown" else None


def data_checksum(prepared_dir: str | Path) -> str:
    """sha256 of the prepared manifest (which lists every shard's sha256)."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m components.prepare` (dvc stage prepare) first")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def planned_steps(config: Config, manifest: Manifest) -> int:
    """The run's total optimiser steps, as the training loop counts them."""
    train = config.train
    per_epoch = steps_per_epoch(manifest.splits.get("train", 0), resolved_value(train.batch_size))
    return total_steps(per_epoch, resolved_value(train.epochs), resolved_value(train.epochs_decay), train.max_steps)


def training_params(config: Config, steps: int, device: str, processes: int) -> dict[str, Any]:
    """Flat params that describe the training, resolved (see the module docstring)."""
    use_sam, cam = config.model.attention()
    data = dataclasses.asdict(config.dataset)
    train = {key: value for key, value in dataclasses.asdict(config.train).items() if key not in TRAIN_RUN_KEYS}
    sections = {
        "dataset": {key: data[key] for key in DATASET_KEYS},
        "model": {**dataclasses.asdict(config.model), "use_sam": use_sam, "cam": cam},
        "loss": dataclasses.asdict(config.loss),
        "train": {**train, "total_steps": steps, "device": device, "processes": processes},
    }
    return {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}


def model_label(config: Config) -> str:
    """The model in a few characters: the DAGAN variant (with its latent, model.style) or the generator, then a
    non-default D and SPAP."""
    model = config.model
    label: str = model.variant if model.generator == "dagan" else model.generator
    label += f"+{model.style}" if model.style != "off" else ""
    label += f"+{model.discriminator}" if model.discriminator != "multiscale" else ""
    return label + (f"+spap-{model.spap}" if model.spap != "off" else "")


def run_name(config: Config, steps: int, commit: str | None) -> str:
    return f"{model_label(config)}-{config.dataset.name}-{steps}steps-{(commit or 'nogit')[:7]}"


def model_phrase(config: Config) -> str:
    """E.g. "DAGAN B6 (SAM + CAM-II)", "CC-FPSE generator + style encoder + fpse discriminator"."""
    model = config.model
    if model.generator == "dagan":
        use_sam, cam = model.attention()
        modules = " + ".join([*(["SAM"] if use_sam else []), *([CAM_NAMES[cam]] if cam != "off" else [])]) or "SPADE"
        phrase = f"DAGAN {model.variant} ({modules})" + STYLE_PHRASES[model.style]
    else:
        phrase = {"ccfpse": "CC-FPSE", "ca2sis": "CA2SIS"}[model.generator] + " generator" + STYLE_PHRASES[model.style]
    if model.discriminator != "multiscale":
        phrase += f" + {model.discriminator} discriminator"
    return phrase + (f" + SPAP in {model.spap}" if model.spap != "off" else "")


def describe_run(config: Config, steps: int, manifest: Manifest, commit: str | None) -> str:
    """The one-line description of a training run."""
    train = config.train
    height, _ = config.image_size()
    return (f"{model_phrase(config)} on {config.dataset.name}: "
            f"{manifest.splits.get('train', 0)} training images at {config.dataset.crop_size}x{height}, "
            f"{steps} steps ({train.epochs} + {train.epochs_decay} decay epochs, global batch {train.batch_size}), "
            f"lr G {train.lr_g:g} / D {train.lr_d:g}, lambda feat {config.loss.lambda_feat:g} / vgg "
            f"{config.loss.lambda_vgg:g}; commit {(commit or 'unknown')[:7]}")


def run_tags(config: Config, tracking_uri: str, commit: str | None, data_sha256: str, description: str) -> dict:
    """The tags of a training run; ``tracking_uri`` must already be redacted."""
    tags = {NOTE_TAG: description, **config.model.labels(), "dataset": config.dataset.name,
            "data_sha256": data_sha256, "tracking_uri": tracking_uri, "out_dir": config.train.out_dir,
            EVALUATED_TAG: "no", **pipeline_tags()}
    if commit:
        tags[COMMIT_TAG] = commit
    return tags


def pipeline_tags() -> dict[str, str]:
    """``kfp.run_id`` when a Kubeflow step runs this process."""
    run_id = os.environ.get(KFP_RUN_ENV, "").strip()
    return {KFP_RUN_TAG: run_id} if run_id else {}


def model_development_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name`` (created when missing; a sqlite store's artifacts beside its database),
    marked as model development unless it has a kind."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        name, artifact_location=local_artifact_location(mlflow.get_tracking_uri()))
    if experiment is None or EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment_id


def activate_experiment(name: str) -> str:
    """:func:`model_development_experiment` on the current tracking URI, made the active experiment of
    ``mlflow.start_run`` (so a later ``start_run(run_id=...)`` in this process agrees with it)."""
    experiment_id = model_development_experiment(MlflowClient(), name)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_dataset(client: MlflowClient, run_id: str, prepared_dir: str | Path, split: str, context: str) -> None:
    """Log the prepared dataset as an input of the run (name: the dataset, digest: the manifest's sha256)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    manifest = read_manifest(prepared_dir)
    with warnings.catch_warnings():  # MLflow registers the local source twice and warns that it is ambiguous
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(Path(prepared_dir).resolve()))
    schema = Schema([ColSpec("string", "id"), ColSpec("binary", "image", required=False), ColSpec("binary", "label"),
                     ColSpec("binary", "instance", required=False), ColSpec("integer", "height"),
                     ColSpec("integer", "width")])
    # mlflow's Dataset marks profile abstract but is no ABC, and MetaDataset leaves it out: it is concrete at run time
    dataset = MetaDataset(  # type: ignore[abstract]
        source, name=manifest.dataset, digest=data_checksum(prepared_dir)[:12], schema=schema)
    tags = {"mlflow.data.context": context, "split": split, "rows": str(manifest.splits.get(split, 0)),
            "classes": str(manifest.num_classes)}
    inputs = [DatasetInput(dataset._to_mlflow_entity(), [InputTag(key, value) for key, value in tags.items()])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as err:
        # The server creates an experiment's dataset on first use; two runs logging it at once (a sweep's parallel
        # trials) race, and the loser gets a UNIQUE-constraint error. The dataset exists now: log again.
        if "UNIQUE constraint" not in str(err) and "Duplicate entry" not in str(err):
            raise
        client.log_inputs(run_id, datasets=inputs)


def evaluated_note(note: str, metrics: dict[str, float]) -> str:
    """The run description with the evaluation's summary (replacing an earlier one)."""
    summary = (f"judge mIoU generated {metrics['judge_miou_generated']:.3f} (real {metrics['judge_miou_real']:.3f}, "
               f"baseline {metrics['judge_miou_baseline']:.3f}), judge FD {metrics['fd_judge_generated']:.4f} "
               f"(baseline {metrics['fd_judge_baseline']:.4f})")
    return note.split(EVAL_NOTE, 1)[0] + EVAL_NOTE + summary


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the tracking URI is the server's address."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
