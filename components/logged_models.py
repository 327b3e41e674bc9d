"""The logged models of a training run (MLflow 3's model-centred tracking).

* Every checkpoint a training keeps is a logged model of its run (:func:`log_checkpoint_model`):
  named after the file (``step-00000400``, ``final``), of type ``dagan-checkpoint``, tagged with the
  file's absolute path, sha256 and step, holding the training metrics of its step. Only
  ``checkpoint.json`` (path, sha256, bytes, step: under 1 KB) is uploaded; the checkpoint stays a
  local file. The models of checkpoints that ``train.keep_last`` deleted are deleted, so a run's
  checkpoint models are its kept checkpoints. components.evaluate links the metrics of a checkpoint
  it scores to that checkpoint's model (:func:`scored_checkpoint`), so the kept checkpoints of a run
  can be ranked with ``search_logged_models``.
* The registered model's logged model (components.register) is the run's output at the training's
  last step and holds that step's metrics, the ``eval/*`` ones on the dataset they were computed on
  (:func:`link_model_to_run`): what its page in the MLflow UI shows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

from dagan.data.shards import sha256_of

CHECKPOINT_MODEL_TYPE = "dagan-checkpoint"  # logged models of the checkpoints kept during training
CHECKPOINT_FILE_TAG = "dagan.checkpoint"  # the checkpoint's absolute local path (the file is not uploaded)
CHECKPOINT_SHA_TAG = "dagan.checkpoint_sha256"
STEP_TAG = "dagan.step"
CHECKPOINT_RECORD = "checkpoint.json"  # the one artifact of a checkpoint model: path, sha256, bytes, step


def log_checkpoint_model(client: MlflowClient, run_id: str, step: int, path: Path,
                         metrics: tuple[int, int, dict[str, float]] | None) -> str:
    """The checkpoint ``path`` as a logged model of the run (see the module docstring): its id, an existing one when
    the run has it already. ``metrics`` ((step, timestamp, values): the training's last logged metrics) are linked
    to it with their timestamp, so that the run's history gains no duplicate."""
    digest = sha256_of(path)
    experiment_id = client.get_run(run_id).info.experiment_id
    existing = checkpoint_model_id(client, experiment_id, run_id, digest)
    if existing is not None:
        return existing
    tags = {CHECKPOINT_FILE_TAG: str(path.resolve()), CHECKPOINT_SHA_TAG: digest, STEP_TAG: str(step)}
    model = client.create_logged_model(experiment_id, name=path.stem, source_run_id=run_id, tags=tags,
                                       model_type=CHECKPOINT_MODEL_TYPE)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / CHECKPOINT_RECORD
        record.write_text(json.dumps({"file": str(path.resolve()), "sha256": digest, "bytes": path.stat().st_size,
                                      "step": step}, indent=2) + "\n")
        client.log_model_artifact(model.model_id, str(record))
    if metrics is not None:
        metric_step, timestamp, values = metrics
        client.log_batch(run_id, metrics=[Metric(key, value, timestamp, metric_step, model_id=model.model_id)
                                          for key, value in values.items()], synchronous=True)
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    for other in _checkpoint_models(client, experiment_id, run_id):
        if not Path(other.tags.get(CHECKPOINT_FILE_TAG, "")).is_file():
            client.delete_logged_model(other.model_id)
    return model.model_id


def _checkpoint_models(client: MlflowClient, experiment_id: str, run_id: str, extra: str = "") -> list:
    found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}' AND "
                                                                       f"model_type = '{CHECKPOINT_MODEL_TYPE}'{extra}")
    return list(found)


def checkpoint_model_id(client: MlflowClient, experiment_id: str, run_id: str, digest: str) -> str | None:
    """The logged model of the run's checkpoint with sha256 ``digest``, None when there is none."""
    found = _checkpoint_models(client, experiment_id, run_id, f" AND tags.`{CHECKPOINT_SHA_TAG}` = '{digest}'")
    return found[0].model_id if found else None


def scored_checkpoint(client: MlflowClient, run_id: str, digest: str) -> tuple[str, int] | None:
    """(logged model id, training step) of the checkpoint with sha256 ``digest`` when the run logged it as a model."""
    model_id = checkpoint_model_id(client, client.get_run(run_id).info.experiment_id, run_id, digest)
    if model_id is None:
        return None
    return model_id, int(client.get_logged_model(model_id).tags[STEP_TAG])


def link_model_to_run(client: MlflowClient, run_id: str, model_id: str, step: int,
                      evaluation: tuple[str, str] | None) -> None:
    """Show the logged model as the run's output at ``step`` and give it the run's metrics of that step but the
    system metrics: the final losses and the ``eval/*`` metrics, those on ``evaluation`` ((name, digest) of the
    dataset they were computed on), so that the model page says what they were computed on. What ``log_model``
    inside the run does, but that copies no dataset."""
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
    dataset_name, dataset_digest = evaluation or (None, None)
    keys = sorted((key for key in client.get_run(run_id).data.metrics if not key.startswith("system/")),
                  key=lambda key: (not key.startswith("eval/"), key))  # the evaluation first, as the page lists them
    metrics = [Metric(key, point.value, point.timestamp, step, model_id=model_id,
                      dataset_name=dataset_name if key.startswith("eval/") else None,
                      dataset_digest=dataset_digest if key.startswith("eval/") else None)
               for key in keys for point in client.get_metric_history(run_id, key) if point.step == step]
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)
