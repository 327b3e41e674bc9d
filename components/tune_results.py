"""What a finished sweep leaves (components/tune.py): one row per trial, the best trial, the output files.

The best trial is the one with the best single report of ``tune.metric`` (Ray Tune's
``scope="all"``), not the best last report: a GAN's scores do not improve monotonically, a
trial's last evaluation can fall after a collapse, and ASHA ends trials at different steps. Every
report comes with a checkpoint and the sweep keeps each trial's best-scoring checkpoint (and its
latest, for restores), so the best report is a model that exists: ``best.json`` and the header of
``best_params.yaml`` name the trial, its MLflow run and that checkpoint. The value is a minimum
(maximum) over noisy evaluations, so it is optimistic; every trial is scored on the same images,
so the ranking is fair.

The MLflow runs of the trials are closed here with the status Ray Tune reports (FINISHED, KILLED
for a trial ASHA stopped, FAILED for one that failed more than ``tune.max_failures`` times): a
trial stopped inside ``tune.report`` or on a lost node cannot always close its own run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

from components.settings import TuneConfig, load_step_config
from components.tune_storage import SweepStorage
from components.tune_trial import PARENT_TAG, TRIAL_TAG
from dagan.atomic import atomic_write, atomic_write_text

SCORES = ("judge_miou", "judge_accuracy", "fd_judge")
MODES = {"judge_miou": "max", "fd_judge": "min"}
SCOPE = "all"  # a trial counts with its best report (Ray Tune's get_best_result scope)
RUN_STATUS = {"finished": "FINISHED", "stopped_early": "KILLED", "error": "FAILED"}


def best_report(reports: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The report with the best ``metric`` (the earliest of equal ones), or None when none has it."""
    scored = [report for report in reports if isinstance(report.get(metric), int | float)
              and math.isfinite(report[metric])]
    if not scored:
        return None
    sign = 1 if MODES[metric] == "min" else -1
    return min(scored, key=lambda report: (sign * report[metric], report.get("step", 0)))


def _reports(result) -> list[dict[str, Any]]:
    frame = result.metrics_dataframe
    return [] if frame is None else frame.to_dict("records")


def _checkpoint_at(result, step: int, storage: SweepStorage) -> str:
    """The kept checkpoint of the report at ``step`` (a URI on the sweep's storage), or ""."""
    for checkpoint, metrics in result.best_checkpoints or ():
        if metrics.get("step") == step:
            return storage.uri_of(checkpoint.path)
    return ""


def trial_rows(results, runs: Mapping[str, Any], opts: TuneConfig, keys: Sequence[str],
               storage: SweepStorage) -> list[dict[str, Any]]:
    """One row per trial: status, its last report, its best report and that report's checkpoint, its values."""
    rows = []
    for result in results:
        trial_id = result.metrics.get("trial_id") or (result.path or "").rsplit("/", 1)[-1]
        run = runs.get(trial_id)
        step = result.metrics.get("step", 0)
        budget = result.metrics.get("total_steps") or opts.max_steps  # fewer when the trial's epochs end first
        best = best_report(_reports(result), opts.metric)
        rows.append({
            "trial_id": trial_id, "mlflow_run_id": run.info.run_id if run else "",
            "status": "error" if result.error else ("stopped_early" if step < budget else "finished"),
            "step": step, **{name: result.metrics.get(name, "") for name in SCORES},
            "best_step": int(best["step"]) if best else "",
            f"best_{opts.metric}": float(best[opts.metric]) if best else "",
            "best_checkpoint": _checkpoint_at(result, int(best["step"]), storage) if best else "",
            **{key: result.config.get(key, "") for key in keys}})
    return rows


def trial_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> dict[str, Any]:
    """The sweep's trial runs by Ray trial id."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10_000)
    return {run.data.tags.get(TRIAL_TAG, ""): run for run in runs}


def close_trial_runs(client: MlflowClient, rows: Sequence[Mapping[str, Any]], runs: Mapping[str, Any]) -> None:
    """Give every trial's run the status Ray Tune reports; a run of no known trial left RUNNING becomes FAILED."""
    known = {row["mlflow_run_id"] for row in rows}
    for row in rows:
        if row["mlflow_run_id"]:
            if row["status"] == "stopped_early":
                client.set_tag(row["mlflow_run_id"], "tune.stopped_early", "true")
            if runs[row["trial_id"]].info.status != RUN_STATUS[row["status"]]:
                client.set_terminated(row["mlflow_run_id"], RUN_STATUS[row["status"]])
    for run in runs.values():
        if run.info.run_id not in known and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")


def pick_best(rows: Sequence[Mapping[str, Any]], metric: str) -> Mapping[str, Any] | None:
    """The row whose best report is the best (the first of equal ones), or None when no trial reported."""
    scored = [row for row in rows if isinstance(row[f"best_{metric}"], float)]
    if not scored:
        return None
    pick = min if MODES[metric] == "min" else max
    return pick(scored, key=lambda row: row[f"best_{metric}"])


def write_results_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())


def summary(best: Mapping[str, Any], metric: str, overrides: Mapping[str, Any], failed: list[str]) -> dict[str, Any]:
    """best.json: the best trial, its run, its best report and checkpoint, and how to train with its values."""
    return {"metric": metric, "mode": MODES[metric], "scope": SCOPE, "value": best[f"best_{metric}"],
            "step": best["best_step"], "trial_id": best["trial_id"], "mlflow_run_id": best["mlflow_run_id"],
            "checkpoint": best["best_checkpoint"], "overrides": dict(overrides),
            "set_args": [f"{key}={value}" for key, value in overrides.items()], "failed_trials": failed}


def write_best_params(path: Path, params: dict, best: Mapping[str, Any], metric: str, source: str) -> Path:
    """The params file with the best values (checked by loading it before it replaces the old one)."""
    header = (f"# Written by `python -m components.tune` from {source}: the best trial {best['trial_id']} "
              f"(MLflow run {best['mlflow_run_id']}),\n# {metric}={best[f'best_{metric}']:.6g} at step "
              f"{best['best_step']}, checkpoint {best['best_checkpoint'] or '(not kept)'}.\n"
              f"# Use: python -m components.train --params {path}\n")
    with atomic_write(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        load_step_config(tmp)
    return path
