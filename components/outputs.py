"""Where the stages find each other's outputs (docs/ARCHITECTURE.md), written atomically (:mod:`dagan.atomic`).

Shared by train, train_judge, evaluate, register and generate: the generator checkpoint (and the
identity of the one an evaluation scored, which register checks), the judge checkpoint, the
training's MLflow run and the tracking URI (``$MLFLOW_TRACKING_URI`` wins over
``mlflow.tracking_uri``), the files DVC shows as plots (the per-step loss table, the latest sample
grid, the per-class IoU table) and the evaluation's figures. :func:`connect_tracking`
keeps a URI's credentials out of every param, tag, artifact, file and log line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from components.settings import StepConfig, redact_uri
from dagan.atomic import atomic_write_bytes, atomic_write_text
from dagan.checkpoint import FINAL_NAME, checkpoint_dir
from dagan.config import Config
from dagan.data.png import encode_png
from dagan.data.shards import sha256_of

JUDGE_FILE = "judge.pt"
RUN_FILE = "mlflow_run.json"
TRAIN_METRICS_FILE = "metrics.json"  # in train.out_dir
LOSSES_FILE = "losses.tsv"  # in train.out_dir: step + losses every train.log_every steps (dvc plots)
# every loss the training steps return (dagan/train/steps.py): g_att for CA2SIS, g_kld for model.style=vae
LOSS_COLUMNS = ("g_total", "g_gan", "g_feat", "g_vgg", "g_att", "g_kld", "d_real", "d_fake")
SAMPLES_DIR = "samples"  # in train.out_dir: latest.png, the newest sample grid (a dvc image plot)
LATEST_SAMPLES = "latest.png"
PER_CLASS_IOU_TABLE = "per_class_iou.csv"  # in evaluate.out_dir: class, generated, real, baseline (dvc plots)
FIGURES_DIR = "figures"  # in evaluate.out_dir: samples.png, attention.png, per_class_iou.png
UNAVAILABLE_FILE = "unavailable.txt"  # in evaluate.out_dir: why FID / LPIPS were not computed
EVAL_METRICS_FILE = "metrics.json"  # in evaluate.out_dir: the metrics, and the checkpoint they belong to
SCORED_CHECKPOINT = "checkpoint"  # key of evaluate's metrics.json: {"path", "sha256"} of the checkpoint it scored


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 image as PNG atomically."""
    atomic_write_bytes(path, encode_png(image))
    return path


class LossTable:
    """``losses.tsv``: one row per logged step, the LOSS_COLUMNS (empty when a loss is off).

    A resumed run keeps the rows before its first new step and drops any later ones (written
    after the checkpoint it resumed from), so the table always matches the run's history.
    """

    def __init__(self, path: Path):
        self.path = path
        self.started = False

    def _keep_rows_before(self, step: int) -> None:
        header = "\t".join(("step", *LOSS_COLUMNS))
        rows = self.path.read_text().splitlines()[1:] if self.path.is_file() else []
        kept = [row for row in rows if row.split("\t", 1)[0].isdigit() and int(row.split("\t", 1)[0]) < step]
        if rows and self.path.read_text().splitlines()[0] != header:
            kept = []  # another layout (an older version): start over
        atomic_write_text(self.path, "\n".join([header, *kept]) + "\n")

    def append(self, step: int, losses: dict[str, float]) -> None:
        if not self.started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._keep_rows_before(step)
            self.started = True
        values = [f"{losses[name]:.6g}" if name in losses else "" for name in LOSS_COLUMNS]
        with self.path.open("a") as file:
            file.write("\t".join((str(step), *values)) + "\n")


def checkpoint_path(config: Config) -> Path:
    """``evaluate.checkpoint``, else the training's final checkpoint."""
    return Path(config.evaluate.checkpoint or checkpoint_dir(config.train.out_dir) / FINAL_NAME)


def checkpoint_identity(config: Config) -> dict[str, str]:
    """{"path", "sha256"} of the generator checkpoint (:func:`checkpoint_path`): the evaluation records the one it
    scored, and register registers a checkpoint only with the metrics of that very content."""
    path = checkpoint_path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the train stage first (or set evaluate.checkpoint)")
    return {"path": str(path), "sha256": sha256_of(path)}


def judge_path(config: Config) -> Path:
    return Path(config.evaluate.judge or Path(config.judge.out_dir) / JUDGE_FILE)


def tracking_uri(config: StepConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri


def sqlite_store(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (relative paths: to the working folder), else None."""
    return Path(unquote(urlsplit(uri).path).removeprefix("/")) if uri.startswith("sqlite:///") else None


def local_artifact_location(uri: str) -> str | None:
    """Where a new experiment of a sqlite tracking store keeps its artifacts: ``mlruns/`` beside the database
    (MLflow's default, ``./mlruns`` of the working folder, may be read-only, e.g. /app in the image); None
    for a tracking server, which decides itself."""
    database = sqlite_store(uri)
    return (database.absolute().parent / "mlruns").as_uri() if database is not None else None


def check_sqlite_store_writable(uri: str) -> None:
    """A sqlite store needs a folder this user can write (the database and its journal; MLflow creates missing
    folders): say so in one line."""
    database = sqlite_store(uri)
    if database is None:
        return
    folder = database.absolute().parent
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"MLflow tracking store {redact_uri(uri)}: {existing} is not a folder this user (uid "
                         f"{os.getuid()}) can write; set MLFLOW_TRACKING_URI (a tracking server, or "
                         "sqlite:////PATH/mlflow.db in a writable folder) or -S mlflow.tracking_uri=...")


def connect_tracking(uri: str) -> str:
    """Point MLflow at ``uri`` and return it without ``user:password@``.

    The credentials move to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (MLflow's
    basic auth; variables already set win) and ``$MLFLOW_TRACKING_URI`` becomes the bare URI, so
    neither MLflow (its "View run at" lines) nor a child process (Ray trials) ever sees them in a URI.
    A sqlite store in a folder this user cannot write is a ValueError (one line, before MLflow's traceback).
    """
    import mlflow

    check_sqlite_store_writable(uri)
    parts = urlsplit(uri)
    if parts.username is not None or parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    public = redact_uri(uri)
    if "MLFLOW_TRACKING_URI" in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = public
    mlflow.set_tracking_uri(public)
    return public


def training_step(config: Config) -> int:
    """The training's last step (``<train.out_dir>/metrics.json``), 0 when unknown: the step of eval metrics."""
    path = Path(config.train.out_dir) / TRAIN_METRICS_FILE
    return int(json.loads(path.read_text()).get("steps", 0)) if path.is_file() else 0


def training_run_id(config: Config) -> str:
    """The MLflow run of the training (``<train.out_dir>/mlflow_run.json``, written by components.train)."""
    path = Path(config.train.out_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the train stage (python -m components.train) first, "
                                "or point train.out_dir at the training's output folder")
    return json.loads(path.read_text())["run_id"]
