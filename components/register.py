"""``python -m components.register``: register the generator in the MLflow model registry, behind a gate.

    python -m components.register [--params FILE] [-S key=value ...]

Logs the pyfunc model (components/pyfunc_model.py) as the training run's logged model
``dagan-generator``, its output at the training's last step (so the logged model carries the final
losses and the eval metrics, on the evaluation split), and registers it as ``register.model_name``
(default ``dagan-<dataset>``). The new version always gets the alias ``candidate``. It gets
``champion`` only when the gate passes (judge mIoU on generated images >= ``gate_miou_ratio`` x judge
mIoU on real images; fd_judge below the mean-colour baseline's when ``gate_fd_beats_baseline``) AND it
beats the current champion on ``register.metric`` (the champion's model metric ``eval/<metric>``; its
version tag for versions registered before models carried metrics). A champion is never demoted or
replaced by a worse version. The version's
description states the model (as the training run's description names it), the steps, the key
metrics, the decision and every check as PASS or FAIL; its tags are few (variant: the model label of
the run name, e.g. ``B6`` or ``ccfpse+fpse``; gate_passed, champion_decision, source_run_id and
``eval.<register.metric>``); ``<register.out_dir>/registration.json`` records the same.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import dagan
from components.cli import entry, load, log, make_parser, run_main
from components.connection import store_lock
from components.import_official import origin_tags
from components.logged_models import link_model_to_run
from components.outputs import (
    checkpoint_path,
    connect_tracking,
    tracking_uri,
    training_run_id,
    training_step,
    write_json,
)
from components.pyfunc_model import SIGNATURE
from components.settings import RegisterConfig, StepConfig
from components.tracking import model_label, model_phrase, split_dataset
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


def current_champion(client: MlflowClient, name: str, metric: str,
                     dataset: str | None = None) -> tuple[str | None, float | None, str | None]:
    """(version, its value of ``metric``, a note) of the version holding alias ``champion``.

    The value is the champion's model metric ``eval/<metric>`` (its logged model's metrics, as the model page
    shows them; on ``dataset`` when it has it there), else its version tag ``eval.<metric>`` (versions
    registered before their models carried metrics). The note says why the champion cannot be compared with
    (its value is then None).
    """
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None, None
    value = champion_metric(client, champion, metric, dataset)
    if value is None:
        return str(champion.version), None, (f"champion v{champion.version} has neither the model metric "
                                             f"eval/{metric} nor the tag eval.{metric}")
    return str(champion.version), value, None


def logged_model_id(source: str | None) -> str | None:
    """The logged model a version was registered from, by its source ``models:/<model id>`` (stores that do not
    fill the version's ``model_id``); None for other sources."""
    model_id = (source or "").removeprefix("models:/")
    return model_id if source and source.startswith("models:/") and model_id and "/" not in model_id else None


def champion_metric(client: MlflowClient, version, metric: str, dataset: str | None) -> float | None:
    """``eval/<metric>`` of the version's logged model (the newest step; ``dataset``'s value first), else the
    version's tag ``eval.<metric>``, else None."""
    model_id = version.model_id or logged_model_id(version.source)
    if model_id:
        found = [point for point in client.get_logged_model(model_id).metrics or [] if point.key == f"eval/{metric}"]
        if found:
            best = max(found, key=lambda point: (point.dataset_name == dataset, point.step, point.timestamp))
            return float(best.value)
    raw = version.tags.get(f"eval.{metric}")
    return float(raw) if raw is not None else None


def _input_example(layout: LabelLayout, size: tuple[int, int]):
    """One label map of horizontal stripes, one per class."""
    label = np.arange(size[0] * size[1]).reshape(size) * layout.num_classes // (size[0] * size[1])
    frame = pd.DataFrame({"label": [encode_png(label.astype(np.uint8))]})
    return (frame, {"edges_from_labels": True}) if layout.has_instance else frame


def _log_model(config: StepConfig, run_id: str, name: str):
    """Log the pyfunc as the training run's model at its last step, and register it as ``name``."""
    layout = LabelLayout.from_manifest(read_manifest(config.dataset.prepared_dir))
    generator, train_config, _ = load_generator(checkpoint_path(config), use_ema=config.evaluate.use_ema)
    height, width = train_config.image_size()
    model_id = _new_model(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_generator(Path(tmp) / "generator.pt", generator, train_config, layout)
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL_NAME, model_id=model_id, **pyfunc_model_arguments(exported, config.register),
            input_example=_input_example(layout, (height, width)),
            pip_requirements=[f"{p}=={package_version(p)}" for p in REQUIREMENTS], registered_model_name=name,
        )
    evaluation = split_dataset(config.dataset.prepared_dir, config.evaluate.split)
    link_model_to_run(MlflowClient(), run_id, model_id, training_step(config), (evaluation.name, evaluation.digest))
    return info, train_config


def _new_model(run_id: str) -> str:
    """The id of a new logged model ``dagan-generator`` of the run, with the run's params (as ``log_model`` inside
    the run would make it; made here so that its metrics are linked by :func:`link_model_to_run`)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    return client.create_logged_model(run.info.experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id,
                                      params=run.data.params).model_id


def _run(config: StepConfig) -> int:
    out_dir = Path(config.register.out_dir)
    metrics_file = Path(config.evaluate.out_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist; run the evaluate stage first")
    metrics = json.loads(metrics_file.read_text())
    run_id, name = training_run_id(config), model_name(config)
    connect_tracking(tracking_uri(config))
    client = MlflowClient()
    info, train_config = _log_model(config, run_id, name)
    origin = load_checkpoint(checkpoint_path(config)).get("origin")  # imported official models say where from
    version = str(info.registered_model_version)
    with store_lock(mlflow.get_tracking_uri()):  # parallel registers into one local store decide one at a time
        champion_version, champion_value, champion_note = current_champion(
            client, name, config.register.metric, f"{read_manifest(config.dataset.prepared_dir).dataset}-"
                                                  f"{config.evaluate.split}")
        decision = decide(metrics, config.register, champion_value, str(metrics_file), champion_note)
        client.set_registered_model_alias(name, "candidate", version)
        if decision.promote:
            client.set_registered_model_alias(name, "champion", version)
    aliases = ["candidate"] + (["champion"] if decision.promote else [])
    ranking = metrics.get(config.register.metric)
    tags = {"variant": model_label(train_config), "gate_passed": str(decision.gate_passed),
            "champion_decision": "promoted" if decision.promote else "not promoted", "source_run_id": run_id,
            **({f"eval.{config.register.metric}": str(ranking)} if isinstance(ranking, int | float) else {}),
            **(origin_tags(origin) if origin else {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=version_description(
        train_config, training_step(config), client.get_run(run_id).info.run_name, metrics, decision, aliases))
    record = {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "aliases": aliases,
              "previous_champion": champion_version, "metric": config.register.metric, **decision.record()}
    write_json(out_dir / "registration.json", record)
    log.info("registered %s version %s (%s): %s", name, version, ", ".join(aliases), "; ".join(decision.reasons))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser("components.register", DESCRIPTION).parse_args(argv)
    return run_main(args, lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
