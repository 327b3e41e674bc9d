"""One Ray Tune trial of a sweep (components/tune.py): train with the sampled overrides, report to ASHA.

Runs in a Ray worker process. The trial trains with :func:`dagan.train.train`, the same function
as ``components.train``, on the sweep's params plus its sampled values. Its logger
(:class:`TrialReporter`, the :class:`dagan.train.TrainingLogger` protocol) sends losses and sample
grids to the trial's nested MLflow run, and at every checkpoint (``train.checkpoint_every`` is
``tune.eval_every`` in a sweep) scores the generator with the judge (:class:`dagan.eval.judge_probe.JudgeProbe`)
and reports the scores to Ray Tune together with the checkpoint, so ASHA can stop the trial there
and a restored trial resumes from it. A Ray Tune checkpoint is a folder with our checkpoint
(``dagan.pt``) and the trial's MLflow run id (``mlflow_run.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from torch.utils.data import DataLoader

from components.settings import StepConfig, redact_uri, step_config_from_dict
from components.tracking import (
    data_checksum,
    describe_run,
    git_commit,
    log_dataset,
    planned_steps,
    run_tags,
    training_params,
)
from dagan.config import Config, resolved_value
from dagan.data import PairedDataset, read_manifest
from dagan.distributed import resolve_device
from dagan.eval.judge import load_judge
from dagan.eval.judge_probe import JudgeProbe
from dagan.overrides import merge_overrides
from dagan.train import NullLogger, StepReport, train

CHECKPOINT_FILE = "dagan.pt"
RUN_FILE = "mlflow_run.json"
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares (sent to the workers by ``tune.with_parameters``)."""

    base: dict[str, Any]  # params dict: the file, -S overrides and the sweep's fixed keys
    source: str  # the params file, for error messages
    keys: tuple[str, ...]  # the swept dotted keys
    judge_path: str
    tracking_uri: str  # no credentials: they travel as MLFLOW_TRACKING_USERNAME/PASSWORD (outputs.connect_tracking)
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    scratch_dir: str  # trials' training folders (one per trial id), removed when the sweep ends
    tags: dict[str, str]  # tags of every trial run set by the driver (kfp.run_id): workers may lack its env


def trial_config(setup: TrialSetup, sampled: Mapping[str, Any], out_dir: Path) -> StepConfig:
    return step_config_from_dict(merge_overrides(setup.base, {**sampled, "train.out_dir": str(out_dir)}),
                                 setup.source).resolved()


def build_probe(config: StepConfig, judge_path: str) -> JudgeProbe:
    """The judge on the first ``tune.eval_batches`` batches of ``evaluate.split`` (the same for every trial)."""
    manifest = read_manifest(config.dataset.prepared_dir)
    dataset = PairedDataset(config.dataset.prepared_dir, config.evaluate.split,
                            crop_size=resolved_value(config.dataset.crop_size),
                            aspect_ratio=resolved_value(config.dataset.aspect_ratio), train=False, flip=False)
    loader = DataLoader(dataset, batch_size=config.evaluate.batch_size, shuffle=False, num_workers=0)
    batches = [batch for _, batch in zip(range(config.tune.eval_batches), loader, strict=False)]
    return JudgeProbe(load_judge(judge_path, config), batches, num_classes=manifest.num_classes,
                      num_label_channels=manifest.num_label_channels, device=resolve_device(config.train.device),
                      style_from=config.evaluate.style_from)


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrialReporter(NullLogger):
    """Losses and grids to the trial's MLflow run; judge scores and checkpoints to Ray Tune."""

    def __init__(self, client: MlflowClient, run_id: str, probe: JudgeProbe, staging_dir: Path):
        self.client = client
        self.run_id = run_id
        self.probe = probe
        self.staging_dir = staging_dir
        self.last_report: StepReport | None = None

    def _log(self, step: int, metrics: Mapping[str, float]) -> None:
        stamp = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._log(step, metrics)

    def log_images(self, step: int, name: str, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"{name}/step-{step:08d}.png")

    def should_stop(self, report: StepReport) -> bool:
        self.last_report = report  # evaluated at the checkpoint that follows; Ray Tune stops trials itself
        return False

    def on_checkpoint(self, step: int, path: Path) -> None:
        from ray import tune

        report = self.last_report
        if report is None or report.step != step:
            raise RuntimeError(f"checkpoint at step {step} without the generator of that step to evaluate")
        scores = self.probe(report.generator)
        self._log(step, {f"eval/{name}": value for name, value in scores.items()})
        folder = self.staging_dir / f"step-{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _link_or_copy(path, folder / CHECKPOINT_FILE)
            (folder / RUN_FILE).write_text(json.dumps({"run_id": self.run_id}))
            # Blocks until Ray Tune has persisted the checkpoint; raises SystemExit when ASHA stops the trial.
            tune.report({**scores, "step": step, "epoch": report.epoch},
                        checkpoint=tune.Checkpoint.from_directory(str(folder)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem: a copy holds the same bytes
        shutil.copy2(source, target)


def _restore(work_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint and MLflow run of a restored trial (copied out of Ray's checkpoint), else (None, None)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, None
    work_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as directory:
        resume = work_dir / "resumed.pt"
        shutil.copy2(Path(directory) / CHECKPOINT_FILE, resume)
        run_id = json.loads((Path(directory) / RUN_FILE).read_text())["run_id"]
    return resume, run_id


def _start_run(client: MlflowClient, setup: TrialSetup, config: Config, sampled: Mapping[str, Any],
               trial_id: str, trial_name: str) -> str:
    """The trial's nested run: Ray's trial name, the training's description, params and tags."""
    manifest = read_manifest(config.dataset.prepared_dir)
    steps, commit = planned_steps(config, manifest), git_commit()
    swept = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in sampled.items())
    description = f"Ray Tune trial {trial_name} of sweep {setup.sweep_name} ({swept}). " + \
        describe_run(config, steps, manifest, commit)
    tags = {**run_tags(config, redact_uri(setup.tracking_uri), commit, data_checksum(config.dataset.prepared_dir),
                       description),
            **setup.tags, PARENT_TAG: setup.parent_run_id, "ray.trial_id": trial_id,
            "ray.experiment": setup.sweep_name, "tune.swept": ",".join(setup.keys)}
    run = client.create_run(setup.experiment_id, run_name=trial_name, tags=tags)
    params = training_params(config, steps, resolve_device(config.train.device).type, 1)
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start:start + 100])
    log_dataset(client, run.info.run_id, config.dataset.prepared_dir, "train", "training")
    client.log_dict(run.info.run_id, dict(sampled), "sampled.json")
    return run.info.run_id


def run_trial(sampled: dict[str, Any], setup: TrialSetup) -> None:
    """The Ray Tune trainable: ``sampled`` maps the swept dotted keys to this trial's values.

    The trial trains in ``<setup.scratch_dir>/<trial id>`` on its node, not in its Ray trial folder:
    Ray copies the trial folder to the storage with the experiment state, which would upload every
    training checkpoint and race with their pruning (a failed "Saving experiment state" when a file
    vanished mid-copy). What must survive goes to the storage as ``tune.report`` checkpoints; the
    sweep removes the scratch folder when it ends.
    """
    from ray import tune

    context = tune.get_context()
    work_dir = Path(setup.scratch_dir) / context.get_trial_id()
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        _run_trial(sampled, setup, context, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _run_trial(sampled: dict[str, Any], setup: TrialSetup, context, work_dir: Path) -> None:
    config = trial_config(setup, sampled, work_dir)
    client = MlflowClient(setup.tracking_uri)
    resume, run_id = _restore(work_dir)
    if run_id is None:
        run_id = _start_run(client, setup, config, sampled, context.get_trial_id(), context.get_trial_name())
    probe = build_probe(config, setup.judge_path)
    mlflow.set_tracking_uri(setup.tracking_uri)
    # this thread's active run (RUNNING again when restored), with system/* metrics as a training records them
    mlflow.start_run(run_id=run_id, log_system_metrics=True)
    try:
        train(config, TrialReporter(client, run_id, probe, work_dir / "report"), resume)
    except SystemExit:  # the scheduler stopped the trial inside tune.report: Ray ends this process right away
        mlflow.end_run("KILLED")  # what components.tune marks a stopped trial's run
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
