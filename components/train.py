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

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import numpy as np

from components.cli import entry, load, log, make_parser, run_main
from dagan.checkpoint import latest_checkpoint
from dagan.config import Config, save_config
from dagan.distributed import env_rank
from dagan.train import NonFiniteLossError, NullLogger, TrainResult, train

DESCRIPTION = """Train DAGAN on the prepared dataset, tracked in MLflow: one process, or every process under
torchrun (DDP). Resumes from the newest checkpoint in train.out_dir; SIGTERM writes a checkpoint and
exits 0. Writes checkpoints/, config.yaml, metrics.json, losses.tsv, samples/ and mlflow_run.json
into train.out_dir."""

RUN_FILE = "mlflow_run.json"
METRICS_FILE = "metrics.json"


def redact(uri: str) -> str:
    """The URI without user:password (MLflow params, tags and output files are not secret)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


class MlflowLogger(NullLogger):
    """:class:`dagan.train.TrainingLogger` writing to the active MLflow run."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics(dict(metrics), step=step, synchronous=False)

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        mlflow.log_image(image, artifact_file=f"{name}/step-{step:08d}.png")


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({err.__class__.__name__})"
    return result.stdout.strip() if result.returncode == 0 else "unavailable (not a git checkout)"


def data_checksum(prepared_dir: str | Path) -> str:
    """sha256 of the prepared manifest (which lists every shard's sha256)."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `python -m components.prepare` (dvc stage prepare) first")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_run(config: Config, out_dir: Path, tracking_uri: str, resuming: bool) -> mlflow.ActiveRun:
    mlflow.set_tracking_uri(tracking_uri)
    run_file = out_dir / RUN_FILE
    if resuming and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        log.info("continuing MLflow run %s", run_id)
        return mlflow.start_run(run_id=run_id, log_system_metrics=True)
    experiment = mlflow.set_experiment(config.mlflow.experiment)
    run = mlflow.start_run(experiment_id=experiment.experiment_id, log_system_metrics=True)
    params = config.flat()
    params["mlflow.tracking_uri"] = redact(str(params["mlflow.tracking_uri"]))
    mlflow.log_params(params)
    mlflow.set_tags({"git_commit": _git_commit(), "variant": config.model.variant, "dataset": config.dataset.name,
                     "data_sha256": data_checksum(config.dataset.prepared_dir)})
    with tempfile.TemporaryDirectory() as tmp:
        save_config(config, Path(tmp) / "config.yaml")
        mlflow.log_artifact(str(Path(tmp) / "config.yaml"))
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
        result = train(config, MlflowLogger(), resume)
    except NonFiniteLossError as err:
        mlflow.end_run(status="FAILED")
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    metrics = _final_metrics(result)
    _write_json(out_dir / METRICS_FILE, metrics)
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
    entry(main)
