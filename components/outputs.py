"""Where the stages find each other's outputs (docs/ARCHITECTURE.md), and atomic JSON writes.

Shared by train_judge, evaluate, register and generate: the generator checkpoint, the judge
checkpoint, the training's MLflow run and the tracking URI (``$MLFLOW_TRACKING_URI`` wins
over ``mlflow.tracking_uri``). :func:`connect_tracking` keeps a URI's credentials out of
every param, tag, artifact, file and log line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dagan.checkpoint import FINAL_NAME, checkpoint_dir
from dagan.config import Config, redact_uri

JUDGE_FILE = "judge.pt"
RUN_FILE = "mlflow_run.json"


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def checkpoint_path(config: Config) -> Path:
    """``evaluate.checkpoint``, else the training's final checkpoint."""
    return Path(config.evaluate.checkpoint or checkpoint_dir(config.train.out_dir) / FINAL_NAME)


def judge_path(config: Config) -> Path:
    return Path(config.evaluate.judge or Path(config.judge.out_dir) / JUDGE_FILE)


def tracking_uri(config: Config) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri


def connect_tracking(uri: str) -> str:
    """Point MLflow at ``uri`` and return it without ``user:password@``.

    The credentials move to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's
    basic auth; variables already set win) and ``$MLFLOW_TRACKING_URI`` becomes the bare URI, so
    neither MLflow (its "View run at" lines) nor a child process (Ray trials) ever sees them in a URI.
    """
    import mlflow

    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    public = redact_uri(uri)
    if "MLFLOW_TRACKING_URI" in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = public
    mlflow.set_tracking_uri(public)
    return public


def training_run_id(config: Config) -> str:
    """The MLflow run of the training (``<train.out_dir>/mlflow_run.json``, written by components.train)."""
    path = Path(config.train.out_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the train stage (python -m components.train) first, "
                                "or point train.out_dir at the training's output folder")
    return json.loads(path.read_text())["run_id"]
