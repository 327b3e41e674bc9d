"""``python -m components.train``: train DAGAN, tracked in MLflow.

    python -m components.train [--params FILE] [-S key=value ...] [--resume PATH] [--force-new-run]
    torchrun --nproc_per_node N -m components.train ...      (DDP; rank 0 alone talks to MLflow)

Resumes from the newest checkpoint in ``train.out_dir`` (continuing the same MLflow run) unless
``--resume`` names one; the config may change only as ``dagan.train.resume`` allows (else an
error naming the keys). ``--force-new-run`` moves the previous run's files aside to
``<out_dir>.superseded-<time>/`` and starts afresh. Nothing reaches MLflow or ``train.out_dir``
before the config, the data and the checkpoint are checked. Writes into ``train.out_dir``:
``checkpoints/``, ``config.yaml``, ``metrics.json``, ``mlflow_run.json`` and the DVC plots files
``losses.tsv`` and ``samples/latest.png`` (docs/ARCHITECTURE.md, "Training outputs"). The
tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri``; its credentials
never reach a param, file or log line.
SIGTERM writes a checkpoint and exits 0, SIGINT (Ctrl-C) writes one and exits 130; a NaN/Inf
loss or weight exits 1 naming the step and the last good checkpoint. A training owns ``train.out_dir``
while it runs (a lock that dies with the process, :mod:`dagan.train.folder_lock`): a second training
into it stops at once, naming the process that holds it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
from torch.distributed.elastic.multiprocessing.errors import record

from components.cli import SIGINT_EXIT, entry, load, log, make_parser, run_main
from components.outputs import (
    LATEST_SAMPLES,
    LOSSES_FILE,
    RUN_FILE,
    SAMPLES_DIR,
    TRAIN_METRICS_FILE,
    LossTable,
    connect_tracking,
    tracking_uri,
    write_json,
    write_png,
)
from components.settings import StepConfig
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
from dagan.config import save_config
from dagan.data import read_manifest
from dagan.distributed import env_rank, resolve_device
from dagan.train import NonFiniteError, NullLogger, StartReport, TrainResult, train
from dagan.train.folder_lock import hold_folder

DESCRIPTION = """Train the model on the prepared dataset, tracked in MLflow: one process, or every process under
torchrun (DDP). Resumes from the newest checkpoint in train.out_dir (the config may change only as
docs/RELIABILITY.md lists); SIGTERM writes a checkpoint and exits 0, Ctrl-C writes one and exits 130.
Writes checkpoints/, config.yaml, metrics.json, losses.tsv, samples/ and mlflow_run.json into
train.out_dir."""
# what --force-new-run moves aside
RUN_FILES = ("checkpoints", "config.yaml", TRAIN_METRICS_FILE, RUN_FILE, LOSSES_FILE, SAMPLES_DIR)
OUT_DIR_TAG = "dagan.out_dir"
# Under torchrun, a process that stopped because another rank got SIGTERM (its node is being preempted or deleted)
# exits with this status (EX_TEMPFAIL): its torchrun counts a failure and restarts this node's workers, which wait in
# the rendezvous for the lost node's replacement and resume from the checkpoint just written (docs/KUBEFLOW.md,
# "When things fail"). Exiting 0 would end this node for good, and the replacement could never rejoin.
REMOTE_STOP_EXIT = 75
REMOTE_STOP = "signal (another rank)"  # TrainResult.stop_reason of such a stop (dagan/train/loop.py)
HOST_TAG = "dagan.host"  # the machine of the training process (which runs of an out_dir may be left by killed ones)


class MlflowLogger(NullLogger):
    """:class:`dagan.train.TrainingLogger` writing to an MLflow run that it opens in :meth:`on_start`, and
    to the DVC plots files of ``train.out_dir``: ``losses.tsv`` and ``samples/latest.png``."""

    def __init__(self, config: StepConfig):
        self.config = config
        self.run: mlflow.ActiveRun | None = None
        out_dir = Path(config.train.out_dir)
        self.losses = LossTable(out_dir / LOSSES_FILE)
        self.samples_dir = out_dir / SAMPLES_DIR

    def on_start(self, report: StartReport) -> None:
        self.run = _start_run(self.config, Path(self.config.train.out_dir), report)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        mlflow.log_metrics(dict(metrics), step=step, synchronous=False)
        self.losses.append(step, {key.removeprefix("loss/"): value for key, value in metrics.items()
                                  if key.startswith("loss/")})

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        mlflow.log_image(image, key=name, step=step)  # the run's Images panel, paired by key across runs
        latest = write_png(self.samples_dir / LATEST_SAMPLES, image)
        mlflow.log_artifact(str(latest), artifact_path=name)  # a stable name: <name>/latest.png

    def end(self, status: str) -> None:
        if self.run is not None:
            mlflow.flush_async_logging()
            mlflow.end_run(status=status)


def _close_stale_runs(client: mlflow.MlflowClient, experiment_id: str, out_dir: Path) -> None:
    """Runs of this out_dir still RUNNING belong to processes killed outright (SIGKILL, OOM): mark them KILLED.

    This process holds the folder's lock (dagan.train.folder_lock), so no live training on this machine writes into
    it; nor does the one whose run the folder names (mlflow_run.json). A run of the same path on another machine
    (another pod with its own disk) may be alive: it is left alone."""
    if "'" in str(out_dir.resolve()):  # not expressible in an MLflow filter string
        return
    stale = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{OUT_DIR_TAG}` = "
                               f"'{out_dir.resolve()}'")
    run_file = out_dir / RUN_FILE
    recorded = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    for run in stale:
        if run.info.run_id != recorded and run.data.tags.get(HOST_TAG) != socket.gethostname():
            continue
        client.set_tag(run.info.run_id, "dagan.stop_reason", "process killed (a new run started in its out_dir)")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s of %s was left RUNNING by a killed process; marked KILLED", run.info.run_id,
                    out_dir)


def _start_run(config: StepConfig, out_dir: Path, report: StartReport) -> mlflow.ActiveRun:
    """Open the run (continued when resuming), then write config.yaml and mlflow_run.json."""
    uri = connect_tracking(tracking_uri(config))
    run_file = out_dir / RUN_FILE
    if report.resumed_from is not None and run_file.is_file():
        run_id = json.loads(run_file.read_text())["run_id"]
        log.info("continuing MLflow run %s", run_id)
        run = mlflow.start_run(run_id=run_id, log_system_metrics=True)
        if report.changes:
            mlflow.set_tag(f"dagan.resumed_at_step_{report.step}", "; ".join(report.changes))
    else:
        run = _new_run(config, out_dir, uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    write_json(run_file, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": uri})
    return run


def _new_run(config: StepConfig, out_dir: Path, uri: str) -> mlflow.ActiveRun:
    """A new run in the model-development experiment: name, description, tags, resolved params, dataset."""
    client = mlflow.MlflowClient()
    experiment_id = activate_experiment(config.mlflow.experiment)
    _close_stale_runs(client, experiment_id, out_dir)
    manifest = read_manifest(config.dataset.prepared_dir)
    steps, commit = planned_steps(config, manifest), git_commit()
    tags = run_tags(config, uri, commit, data_checksum(config.dataset.prepared_dir),
                    describe_run(config, steps, manifest, commit))
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(config, steps, commit),
                           tags={**tags, OUT_DIR_TAG: str(out_dir.resolve()), HOST_TAG: socket.gethostname()},
                           log_system_metrics=True)
    mlflow.log_params(training_params(config, steps, resolve_device(config.train.device).type,
                                      int(os.environ.get("WORLD_SIZE", "1"))))
    log_dataset(client, run.info.run_id, config.dataset.prepared_dir, "train", "training")
    with tempfile.TemporaryDirectory() as tmp:
        save_config(config, Path(tmp) / "config.yaml")
        mlflow.log_artifact(str(Path(tmp) / "config.yaml"))
    page = run_url(uri, experiment_id, run.info.run_id) or \
        f"#/experiments/{experiment_id}/runs/{run.info.run_id} in the MLflow UI"
    log.info("MLflow run %s in experiment %s (id %s): %s", run.info.run_name, config.mlflow.experiment, experiment_id,
             page)
    return run


def set_aside(out_dir: Path) -> Path | None:
    """Move the previous run's files out of ``out_dir`` into ``<out_dir>.superseded-<time>/`` (never deleted)."""
    present = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out_dir.with_name(f"{out_dir.name}.superseded-{stamp}")
    for number in range(2, 100):
        if not target.exists():
            break
        target = out_dir.with_name(f"{out_dir.name}.superseded-{stamp}-{number}")
    target.mkdir(parents=True)
    for name in present:
        (out_dir / name).rename(target / name)
    log.warning("--force-new-run: moved %s of the previous run to %s", ", ".join(present), target)
    return target


def _final_metrics(result: TrainResult) -> dict:
    return {"steps": result.step, "total_steps": result.total_steps, "stopped_early": result.stopped_early,
            **{key: round(value, 6) for key, value in result.metrics.items()}}


def _run(config: StepConfig, resume: str | None, force_new_run: bool) -> int:
    out_dir = Path(config.train.out_dir)
    if force_new_run and resume is not None:
        raise ValueError("--force-new-run starts afresh; it cannot be combined with --resume PATH")
    if env_rank() != 0:  # DDP workers: train only; rank 0 tracks and writes
        try:
            result = train(config, None, resume)
        except NonFiniteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return REMOTE_STOP_EXIT if result.stop_reason == REMOTE_STOP else 0
    if force_new_run:
        set_aside(out_dir)
    logger = MlflowLogger(config)
    try:
        result = train(config, logger, resume)
    except NonFiniteError as err:
        logger.end("FAILED")
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-step
        logger.end("KILLED")
        raise
    except BaseException:
        logger.end("FAILED")
        raise
    write_json(out_dir / TRAIN_METRICS_FILE, _final_metrics(result))
    if result.stopped_early:
        mlflow.set_tag("dagan.stop_reason", result.stop_reason)
        logger.end("KILLED")
        print(f"stopped at step {result.step}/{result.total_steps} ({result.stop_reason}); checkpoint "
              f"{result.checkpoint}; run the same command again to resume")
        return {"SIGINT": SIGINT_EXIT, REMOTE_STOP: REMOTE_STOP_EXIT}.get(result.stop_reason or "", 0)
    logger.end("FINISHED")
    log.info("trained %d steps; final checkpoint %s; MLflow run %s", result.step, result.checkpoint,
             logger.run.info.run_id if logger.run else "-")
    return 0


def _run_owning_the_folder(config: StepConfig, resume: str | None, force_new_run: bool) -> int:
    """The run, with train.out_dir locked for its whole length (a second training into it stops at once).

    Under torchrun rank 0 alone writes into the folder (checkpoints, files, --force-new-run) and holds the lock; when
    it refuses, torchrun ends the other ranks."""
    if env_rank() != 0:
        return _run(config, resume, force_new_run)
    with hold_folder(config.train.out_dir):
        return _run(config, resume, force_new_run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.train", DESCRIPTION)
    parser.add_argument("--resume", metavar="PATH",
                        help="checkpoint to resume from (default: the newest in train.out_dir, if any)")
    parser.add_argument("--force-new-run", action="store_true",
                        help="start a new run in train.out_dir: the previous run's " + ", ".join(RUN_FILES) +
                             " move to <out_dir>.superseded-<time>/ (nothing is deleted)")
    args = parser.parse_args(argv)
    return run_main(args, lambda: _run_owning_the_folder(load(args), args.resume, args.force_new_run))


if __name__ == "__main__":
    entry(record(main))  # under torchrun: an uncaught exception goes into the worker's error file, named in its summary
