"""``python -m components.register``: register the generator in the MLflow model registry, behind a gate.

    python -m components.register [--params FILE] [-S key=value ...]

Logs the pyfunc model (components/pyfunc_model.py) into the training's MLflow run as
``dagan-generator``, at the training's last step (so the logged model carries the final losses and
the eval metrics), and registers it as ``register.model_name`` (default ``dagan-<dataset>``). The
new version always gets the alias ``candidate``. It gets ``champion`` only when the gate passes
(judge mIoU on generated images >= ``gate_miou_ratio`` x judge mIoU on real images; fd_judge below
the mean-colour baseline's when ``gate_fd_beats_baseline``) AND it beats the current champion on
``register.metric``. A champion is never demoted or replaced by a worse version. The version's
description states the model (as the training run's description names it), the steps, the key
metrics, the decision and every check as PASS or FAIL; its tags are few (variant: the model label of
the run name, e.g. ``B6`` or ``ccfpse+fpse``; gate_passed, champion_decision, source_run_id and
``eval.<register.metric>``); ``<register.out_dir>/registration.json`` records the same.

Everything is checked before anything is created: the evaluation's ``metrics.json`` must name the
very checkpoint being registered (its sha256; a stale evaluation of another model is refused), the
checkpoint loads with finite weights, the training's run exists, the verdict can be reached
(``register.metric`` is in the metrics) and ``register.out_dir`` is writable. What a registration
creates (the logged model, the version) carries the tag ``dagan.registration=incomplete`` until the
version has its tags, description and aliases; the next registration deletes what an interrupted or
failed one left (or completes a version that already got its aliases): components/registration_marks.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

import dagan
from components.cli import entry, load, log, make_parser, run_main
from components.import_official import origin_tags
from components.outputs import (
    EVAL_METRICS_FILE,
    SCORED_CHECKPOINT,
    checkpoint_identity,
    checkpoint_path,
    connect_tracking,
    tracking_uri,
    training_run_id,
    training_step,
    write_json,
)
from components.pyfunc_model import SIGNATURE
from components.registration_marks import INCOMPLETE_MARK, clean_up_incomplete, mark_complete
from components.settings import RegisterConfig, StepConfig
from components.tracking import model_label, model_phrase
from dagan.checkpoint import load_checkpoint, load_generator
from dagan.config import Config
from dagan.data.manifest import read_manifest
from dagan.data.png import encode_png
from dagan.inference import LabelLayout, export_generator

DESCRIPTION = """Register the trained generator in the MLflow model registry as register.model_name (default
dagan-<dataset>): alias candidate always, champion only when the quality gate passes and it beats
the current champion. Writes registration.json into register.out_dir."""

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "pyyaml", "pyarrow")
LOGGED_MODEL_NAME = "dagan-generator"  # runs:/<run id>/dagan-generator
KEY_METRICS = ("judge_miou_generated", "judge_miou_real", "judge_miou_baseline", "judge_miou_ratio",
               "fd_judge_generated", "fd_judge_baseline", "fid_generated", "lpips_generated")


@dataclass(frozen=True)
class Decision:
    """The registration verdict: the quality gate's checks and the comparison with the champion.

    Every check is one line, ``PASS ...`` or ``FAIL ...`` with the rule it checks.
    """

    gate_passed: bool
    gate_checks: tuple[str, ...]  # one line per gate rule (judge mIoU, judge Fréchet distance)
    beats_champion: bool
    champion_check: str  # the comparison with the current champion (or why there is none to beat)

    @property
    def promote(self) -> bool:
        return self.gate_passed and self.beats_champion

    @property
    def reasons(self) -> list[str]:
        """Every check: the gate's, then the champion's."""
        return [*self.gate_checks, self.champion_check]

    def record(self) -> dict:
        """The decision's fields of registration.json."""
        return {"gate_passed": self.gate_passed, "beats_champion": self.beats_champion, "promote": self.promote,
                "reasons": self.reasons}


def pyfunc_model_arguments(exported_generator: Path, limits: RegisterConfig) -> dict:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` that define the registered model
    (``limits``: its ``serve_max_*_pixels``)."""
    return {"python_model": str(PYFUNC_FILE), "artifacts": {"generator": str(exported_generator)},
            "code_paths": [str(Path(dagan.__file__).parent)], "signature": SIGNATURE,
            "model_config": {"max_image_pixels": limits.serve_max_image_pixels,
                             "max_request_pixels": limits.serve_max_request_pixels}}


def _metric(metrics: dict, key: str, source: str) -> float:
    if not isinstance(metrics.get(key), (int, float)):
        raise ValueError(f"{source}: metric {key!r} is missing or not a number; run the evaluate stage first or "
                         "set register.metric to a key of that file")
    return float(metrics[key])


def _check(passed: bool, text: str) -> str:
    return f"{'PASS' if passed else 'FAIL'} {text}"


def decide(metrics: dict, gate: RegisterConfig, champion_value: float | None, source: str = "metrics",
           champion_note: str | None = None) -> Decision:
    """The registration verdict for a version with ``metrics`` against the current champion.

    ``champion_value``: the champion's value of ``gate.metric``, None when there is no champion.
    ``champion_note``: why a champion cannot be compared with (it lacks the metric); it is then
    kept, and the version is not promoted whatever its metrics.
    """
    gate_passed, gate_checks = _gate(metrics, gate, source)
    value = _metric(metrics, gate.metric, source)
    if champion_note:
        beats, champion_check = False, f"FAIL {champion_note}: cannot compare, champion kept"
    elif champion_value is None:
        beats, champion_check = True, _check(True, f"no current champion to beat ({gate.metric} = {value:.4f})")
    else:
        beats = value > champion_value if gate.greater_is_better else value < champion_value
        champion_check = _check(beats, f"beat the champion: {gate.metric} {value:.4f} must be "
                                       f"{'>' if gate.greater_is_better else '<'} the champion's {champion_value:.4f}")
    return Decision(gate_passed, gate_checks, beats, champion_check)


def _gate(metrics: dict, gate: RegisterConfig, source: str) -> tuple[bool, tuple[str, ...]]:
    """The quality gate: (passed, one check per rule)."""
    generated = _metric(metrics, "judge_miou_generated", source)
    real = _metric(metrics, "judge_miou_real", source)
    passed = generated >= gate.gate_miou_ratio * real
    checks = [_check(passed, f"judge mIoU: generated {generated:.4f} must be >= {gate.gate_miou_ratio} x real "
                             f"{real:.4f} = {gate.gate_miou_ratio * real:.4f}")]
    if gate.gate_fd_beats_baseline:
        fd, fd_base = _metric(metrics, "fd_judge_generated", source), _metric(metrics, "fd_judge_baseline", source)
        passed = passed and fd < fd_base
        checks.append(_check(fd < fd_base, f"judge Fréchet distance: generated {fd:.4f} must be < mean-colour "
                                           f"baseline {fd_base:.4f}"))
    return passed, tuple(checks)


def version_description(config: Config, steps: int, run_name: str, metrics: dict, decision: Decision,
                        aliases: list[str]) -> str:
    """The model version's description (Markdown): what was trained, the key metrics, the decision and its checks."""
    numbers = ", ".join(f"{key} {metrics[key]:.4g}" for key in KEY_METRICS if isinstance(metrics.get(key), int | float))
    verdict = "promoted to champion" if decision.promote else "candidate only"
    return "\n".join([
        f"{model_phrase(config)} on {config.dataset.name}, {steps} training steps "
        f"(run {run_name}).", "", f"Eval: {numbers}.", "",
        f"Decision: {verdict} (aliases: {', '.join(aliases)}; gate {'PASS' if decision.gate_passed else 'FAIL'}).",
        *[f"- {reason}" for reason in decision.reasons]])


def model_name(config: StepConfig) -> str:
    return config.register.model_name or f"dagan-{config.dataset.name}"


def current_champion(client: MlflowClient, name: str, metric: str) -> tuple[str | None, float | None, str | None]:
    """(version, its value of ``metric``, a note) of the version holding alias ``champion``.

    The note says why the champion cannot be compared with (its value is then None).
    """
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None, None
    raw = champion.tags.get(f"eval.{metric}")
    if raw is None:
        return str(champion.version), None, f"champion v{champion.version} has no tag eval.{metric}"
    return str(champion.version), float(raw), None


def _input_example(layout: LabelLayout, size: tuple[int, int]):
    """One label map of horizontal stripes, one per class."""
    label = np.arange(size[0] * size[1]).reshape(size) * layout.num_classes // (size[0] * size[1])
    frame = pd.DataFrame({"label": [encode_png(label.astype(np.uint8))]})
    return (frame, {"edges_from_labels": True}) if layout.has_instance else frame


@dataclass(frozen=True)
class _Checked:
    """Everything a registration needs, checked before anything is created (:func:`_check_everything`)."""

    name: str  # the registered model
    run: Run  # the training's MLflow run
    metrics: dict
    decision: Decision
    champion_version: str | None
    generator: nn.Module
    train_config: Config
    layout: LabelLayout
    origin: dict | None  # an imported official model's provenance


def _read_metrics(metrics_file: Path, checkpoint: dict[str, str]) -> dict:
    """The evaluation's metrics, refused unless they are the metrics of ``checkpoint`` (the same content)."""
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_file} is not valid JSON ({err}); run the evaluate stage again") from None
    scored = metrics.get(SCORED_CHECKPOINT) if isinstance(metrics, dict) else None
    if not isinstance(scored, dict) or not isinstance(scored.get("sha256"), str):
        raise ValueError(f"{metrics_file} does not name the checkpoint it scored (an older evaluate wrote it); run "
                         f"the evaluate stage again for {checkpoint['path']}")
    if scored["sha256"] != checkpoint["sha256"]:
        raise ValueError(f"{metrics_file} holds the metrics of {scored.get('path')} (sha256 {scored['sha256'][:12]}), "
                         f"not of {checkpoint['path']} (sha256 {checkpoint['sha256'][:12]}) that would be registered; "
                         "run the evaluate stage for this checkpoint first")
    return metrics


def _check_writable(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"register.out_dir {out_dir} is not writable; registration.json goes there")


def _check_everything(config: StepConfig) -> _Checked:
    """Every input and setting, before anything is created: the metrics belong to the checkpoint, the checkpoint
    loads (finite weights), the training run exists, the verdict can be reached, register.out_dir is writable."""
    metrics_file = Path(config.evaluate.out_dir) / EVAL_METRICS_FILE
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist; run the evaluate stage first")
    checkpoint = checkpoint_identity(config)
    metrics = _read_metrics(metrics_file, checkpoint)
    layout = LabelLayout.from_manifest(read_manifest(config.dataset.prepared_dir))
    generator, train_config, _ = load_generator(checkpoint_path(config), use_ema=config.evaluate.use_ema)
    origin = load_checkpoint(checkpoint_path(config)).get("origin")  # imported official models say where from
    if checkpoint_identity(config) != checkpoint:
        raise ValueError(f"{checkpoint['path']} was replaced while it was read (a training still writing it?); "
                         "nothing was registered: run the evaluate stage, then register, once it is final")
    _check_writable(Path(config.register.out_dir))
    run_id, name = training_run_id(config), model_name(config)
    connect_tracking(tracking_uri(config))
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"the training's MLflow run {run_id} ({Path(config.train.out_dir) / 'mlflow_run.json'}) "
                         f"cannot be read from {mlflow.get_tracking_uri()}: {err.message}") from None
    champion_version, champion_value, champion_note = current_champion(client, name, config.register.metric)
    decision = decide(metrics, config.register, champion_value, str(metrics_file), champion_note)
    return _Checked(name, run, metrics, decision, champion_version, generator, train_config, layout, origin)


def _log_model(config: StepConfig, checked: _Checked):
    """Log the pyfunc into the training's run, at its last step, and register it as a new version; both carry the tag
    ``dagan.registration=incomplete`` until :func:`_complete` is done with them."""
    height, width = checked.train_config.image_size()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=checked.run.info.run_id):
        exported = export_generator(Path(tmp) / "generator.pt", checked.generator, checked.train_config,
                                    checked.layout)
        # step: the logged model takes the run's metrics of that step: the final losses and the eval/*
        # metrics (evaluate logs them there), not the system metrics of the first sampling steps.
        return mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, **pyfunc_model_arguments(exported, config.register),
            input_example=_input_example(checked.layout, (height, width)),
            pip_requirements=[f"{p}=={package_version(p)}" for p in REQUIREMENTS],
            registered_model_name=checked.name, step=training_step(config), tags=INCOMPLETE_MARK,
        )


def _complete(client: MlflowClient, config: StepConfig, checked: _Checked, version: str, model_id: str) -> list[str]:
    """The new version's tags, description and aliases, then the incomplete marks removed; returns the aliases."""
    name, decision, run_id = checked.name, checked.decision, checked.run.info.run_id
    aliases = ["candidate"] + (["champion"] if decision.promote else [])
    ranking = checked.metrics.get(config.register.metric)
    tags = {"variant": model_label(checked.train_config), "gate_passed": str(decision.gate_passed),
            "champion_decision": "promoted" if decision.promote else "not promoted", "source_run_id": run_id,
            **({f"eval.{config.register.metric}": str(ranking)} if isinstance(ranking, int | float) else {}),
            **(origin_tags(checked.origin) if checked.origin else {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=version_description(
        checked.train_config, training_step(config), checked.run.info.run_name, checked.metrics, decision, aliases))
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    mark_complete(client, name, version, model_id)
    return aliases


def _run(config: StepConfig) -> int:
    checked = _check_everything(config)
    client = MlflowClient()
    clean_up_incomplete(client, checked.name, checked.run.info.experiment_id)
    info = _log_model(config, checked)
    version = str(info.registered_model_version)
    aliases = _complete(client, config, checked, version, info.model_id)
    name, decision = checked.name, checked.decision
    record = {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "aliases": aliases,
              "previous_champion": checked.champion_version, "metric": config.register.metric, **decision.record()}
    write_json(Path(config.register.out_dir) / "registration.json", record)
    log.info("registered %s version %s (%s): %s", name, version, ", ".join(aliases), "; ".join(decision.reasons))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser("components.register", DESCRIPTION).parse_args(argv)
    return run_main(args, lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
