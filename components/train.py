"""``python -m components.train``: train DAGAN, tracked in MLflow.

    python -m components.train [--params FILE] [-S key=value ...] [--resume PATH]
    torchrun --nproc_per_node N -m components.train ...      (DDP; rank 0 alone talks to MLflow)

Resumes from the newest checkpoint in ``train.out_dir`` (continuing the same MLflow run) unless
``--resume`` names one. Writes into ``train.out_dir``: ``checkpoints/``, ``config.yaml``,
``metrics.json`` and ``mlflow_run.json`` (docs/ARCHITECTURE.md, "Training outputs").
The tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri``.
SIGTERM writes a checkpoint and exits 0; a NaN/Inf loss exits 1 naming the step.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np
from torch.distributed.elastic.multiprocessing.errors import record

from components.cli import entry, load, log, make_parser, run_main
from components.outputs import (
    LATEST_SAMPLES,
    LOSSES_FILE,
    RUN_FILE,
    SAMPLES_DIR,
    TRAIN_METRICS_FILE,
    LossTable,
    write_png,
)
from components.tracking import (
    activate_experiment,
    data_checksum,
    describe_run,
    git_commit,
    log_dataset,
    planned_steps,
    run_name,
    run_tags,
    run_url,
    training_params,
)
from dagan.checkpoint import latest_checkpoint
from dagan.config import Config, save_config
from dagan.data import read_manifest
from dagan.distributed import env_rank, resolve_device
from dagan.train import NonFiniteLossError, NullLogger, TrainResult, train

DESCRIPTION = """Train DAGAN on the prepared dataset, tracked in MLflow: one process, or every process under
torchrun (DDP). Resumes from the newest checkpoint in train.out_dir; SIGTERM writes a checkpoint and
exits 0. Writes checkpoints/, config.yaml, metrics.json, losses.tsv, samples/ and mlflow_run.json
into train.out_dir."""



def redact(uri: str) -> str:
    """The URI without user:password (MLflow params, tags and output files are not secret)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


class MlflowLogger(NullLogger):
    """:class:`dagan.train.TrainingLogger` writing to the active MLflow run and to the DVC plots files of
    ``out_dir``: ``losses.tsv`` and ``samples/latest.png``."""

    def __init__(self, out_dir: Path):
        self.losses = LossTable(out_dir / LOSSES_FILE)
        self.samples_dir = out_dir / SAMPLES_DIR

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics(dict(metrics), step=step, synchronous=False)
        self.losses.append(step, {key.removeprefix("loss/"): value for key, value in metrics.items()
                                  if key.startswith("loss/")})

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        mlflow.log_image(image, key=name, step=step)  # the run's Images panel, paired by key across runs
        latest = write_png(self.samples_dir / LATEST_SAMPLES, image)
        mlflow.log_artifact(str(latest), artifact_path=name)  # a stable name: <name>/latest.png


def _start_run(config: Config, out_dir: Path, tracking_uri: str, resuming: bool) -> mlflow.ActiveRun:
    mlflow.set_tracking_uri(tracking_uri)
    run_file = out_dir / RUN_FILE
    if resuming and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        log.info("continuing MLflow run %s", run_id)
        return mlflow.start_run(run_id=run_id, log_system_metrics=True)
    client = mlflow.MlflowClient()
    experiment_id = activate_experiment(config.mlflow.experiment)
    manifest = read_manifest(config.dataset.prepared_dir)
    steps, commit = planned_steps(config, manifest), git_commit()
    tags = run_tags(config, redact(tracking_uri), commit, data_checksum(config.dataset.prepared_dir),
                    describe_run(config, steps, manifest, commit))
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(config, steps, commit), tags=tags,
                           log_system_metrics=True)
    mlflow.log_params(training_params(config, steps, resolve_device(config.train.device).type,
                                      int(os.environ.get("WORLD_SIZE", "1"))))
    log_dataset(client, run.info.run_id, config.dataset.prepared_dir, "train", "training")
    with tempfile.TemporaryDirectory() as tmp:
        save_config(config, Path(tmp) / "config.yaml")
        mlflow.log_artifact(str(Path(tmp) / "config.yaml"))
    page = run_url(redact(tracking_uri), experiment_id, run.info.run_id) or \
        f"#/experiments/{experiment_id}/runs/{run.info.run_id} in the MLflow UI"
    log.info("MLflow run %s in experiment %s (id %s): %s", run.info.run_name, config.mlflow.experiment, experiment_id,
             page)
    return run


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def _final_metrics(result: TrainResult) -> dict:
    return {"steps": result.step, "total_steps": result.total_steps, "stopped_early": result.stopped_early,
            **{key: round(value, 6) for key, value in result.metrics.items()}}


def _run(config: Config, resume: str | None) -> int:
    out_dir = Path(config.train.out_dir)
    if env_rank() != 0:  # DDP workers: train only; rank 0 tracks and writes
        try:
            train(config, None, resume)
        except NonFiniteLossError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri
    resuming = resume is not None or latest_checkpoint(out_dir) is not None
    run = _start_run(config, out_dir, tracking_uri, resuming)
    _write_json(out_dir / RUN_FILE, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                                     "tracking_uri": redact(tracking_uri)})
    try:
        result = train(config, MlflowLogger(out_dir), resume)
    except NonFiniteLossError as err:
        mlflow.end_run(status="FAILED")
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    metrics = _final_metrics(result)
    _write_json(out_dir / TRAIN_METRICS_FILE, metrics)
    mlflow.flush_async_logging()
    if result.stopped_early:
        mlflow.end_run(status="KILLED")
        print(f"stopped at step {result.step}/{result.total_steps} (SIGTERM or stop request); checkpoint "
              f"{result.checkpoint}; run the same command again to resume")
        return 0
    mlflow.end_run()
    log.info("trained %d steps; final checkpoint %s; MLflow run %s", result.step, result.checkpoint, run.info.run_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.train", DESCRIPTION)
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint to resume from (default: the newest in train.out_dir, if any)")
    args = parser.parse_args(argv)
    return run_main(args, lambda: _run(load(args), args.resume))


if __name__ == "__main__":
    entry(record(main))  # under torchrun: an uncaught exception goes into the worker's error file, named in its summary
