"""``python -m components.register``: register the generator in the MLflow model registry, behind a gate.

    python -m components.register [--params FILE] [-S key=value ...]

Logs the pyfunc model (components/pyfunc_model.py) into the training's MLflow run and registers
it as ``register.model_name`` (default ``dagan-<dataset>``). The new version always gets the
alias ``candidate``. It gets ``champion`` only when the gate passes (judge mIoU on generated
images >= ``gate_miou_ratio`` x judge mIoU on real images; fd_judge below the mean-colour
baseline's when ``gate_fd_beats_baseline``) AND it beats the current champion on
``register.metric``. A champion is never demoted or replaced by a worse version. The decision
and its reasons are tags on the version and ``<register.out_dir>/registration.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import dagan
from components.cli import entry, load, log, make_parser, run_main
from components.import_official import origin_tags
from components.outputs import checkpoint_path, tracking_uri, training_run_id, write_json
from components.pyfunc_model import SIGNATURE
from dagan.checkpoint import load_checkpoint, load_generator
from dagan.config import Config, RegisterConfig
from dagan.data.manifest import read_manifest
from dagan.generate import LabelLayout, encode_png, export_generator

DESCRIPTION = """Register the trained generator in the MLflow model registry as register.model_name (default
dagan-<dataset>): alias candidate always, champion only when the quality gate passes and it beats
the current champion. Writes registration.json into register.out_dir."""

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "pyyaml", "pyarrow")


@dataclass
class Decision:
    gate_passed: bool
    beats_champion: bool
    promote: bool
    reasons: list[str] = field(default_factory=list)


def pyfunc_model_arguments(exported_generator: Path) -> dict:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` that define the registered model."""
    return {"python_model": str(PYFUNC_FILE), "artifacts": {"generator": str(exported_generator)},
            "code_paths": [str(Path(dagan.__file__).parent)], "signature": SIGNATURE}


def _metric(metrics: dict, key: str, source: str) -> float:
    if not isinstance(metrics.get(key), (int, float)):
        raise ValueError(f"{source}: metric {key!r} is missing or not a number; run the evaluate stage first or "
                         "set register.metric to a key of that file")
    return float(metrics[key])


def decide(metrics: dict, gate: RegisterConfig, champion_value: float | None, source: str = "metrics") -> Decision:
    """The registration decision for a version with ``metrics`` against a champion's metric value.

    ``champion_value`` None means there is no champion (or it lacks the metric: see reasons).
    """
    reasons = []
    generated = _metric(metrics, "judge_miou_generated", source)
    real = _metric(metrics, "judge_miou_real", source)
    passed = generated >= gate.gate_miou_ratio * real
    reasons.append(f"judge mIoU generated {generated:.4f} {'>=' if passed else '<'} {gate.gate_miou_ratio} x real "
                   f"{real:.4f} = {gate.gate_miou_ratio * real:.4f}")
    if gate.gate_fd_beats_baseline:
        fd, fd_base = _metric(metrics, "fd_judge_generated", source), _metric(metrics, "fd_judge_baseline", source)
        fd_ok = fd < fd_base
        passed = passed and fd_ok
        reasons.append(f"fd_judge generated {fd:.4f} {'<' if fd_ok else '>='} mean-colour baseline {fd_base:.4f}")
    value = _metric(metrics, gate.metric, source)
    if champion_value is None:
        beats = True
        reasons.append(f"no current champion to beat ({gate.metric} = {value:.4f})")
    else:
        beats = value > champion_value if gate.greater_is_better else value < champion_value
        reasons.append(f"{gate.metric} {value:.4f} {'beats' if beats else 'does not beat'} champion's "
                       f"{champion_value:.4f} ({'higher' if gate.greater_is_better else 'lower'} is better)")
    return Decision(passed, beats, passed and beats, reasons)


def model_name(config: Config) -> str:
    return config.register.model_name or f"dagan-{config.dataset.name}"


def current_champion(client: MlflowClient, name: str, metric: str) -> tuple[str | None, float | None, str | None]:
    """(version, its value of ``metric``, a note) of the version holding alias ``champion``."""
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None, None
    raw = champion.tags.get(f"eval.{metric}")
    if raw is None:
        return str(champion.version), float("nan"), f"champion v{champion.version} has no tag eval.{metric}"
    return str(champion.version), float(raw), None


def _input_example(layout: LabelLayout, size: tuple[int, int]):
    """One label map of horizontal stripes, one per class."""
    label = np.arange(size[0] * size[1]).reshape(size) * layout.num_classes // (size[0] * size[1])
    frame = pd.DataFrame({"label": [encode_png(label.astype(np.uint8))]})
    return (frame, {"edges_from_labels": True}) if layout.has_instance else frame


def _run(config: Config) -> int:
    out_dir = Path(config.register.out_dir)
    metrics_file = Path(config.evaluate.out_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} does not exist; run the evaluate stage first")
    metrics = json.loads(metrics_file.read_text())
    run_id = training_run_id(config)
    name = model_name(config)
    layout = LabelLayout.from_manifest(read_manifest(config.dataset.prepared_dir))
    generator, train_config, _ = load_generator(checkpoint_path(config), use_ema=config.evaluate.use_ema)
    origin = load_checkpoint(checkpoint_path(config)).get("origin")  # imported official models say where from
    height = round(train_config.dataset.crop_size / train_config.dataset.aspect_ratio)

    mlflow.set_tracking_uri(tracking_uri(config))
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        exported = export_generator(Path(tmp) / "generator.pt", generator, train_config, layout)
        info = mlflow.pyfunc.log_model(
            name="model", **pyfunc_model_arguments(exported),
            input_example=_input_example(layout, (height, train_config.dataset.crop_size)),
            pip_requirements=[f"{p}=={package_version(p)}" for p in REQUIREMENTS], registered_model_name=name,
        )
    version = str(info.registered_model_version)
    champion_version, champion_value, note = current_champion(client, name, config.register.metric)
    if note:  # a champion we cannot compare with is kept
        decision = decide(metrics, config.register, None, str(metrics_file))
        decision.beats_champion, decision.promote = False, False
        decision.reasons.append(f"{note}: cannot compare, champion kept")
    else:
        decision = decide(metrics, config.register, champion_value, str(metrics_file))
    client.set_registered_model_alias(name, "candidate", version)
    if decision.promote:
        client.set_registered_model_alias(name, "champion", version)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    tags = {**{f"eval.{k}": str(v) for k, v in numeric.items()}, "gate_passed": str(decision.gate_passed),
            "champion_decision": "promoted" if decision.promote else "not promoted",
            "decision_reasons": "; ".join(decision.reasons), "source_run_id": run_id,
            **(origin_tags(origin) if origin else {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    aliases = ["candidate"] + (["champion"] if decision.promote else [])
    record = {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}", "aliases": aliases,
              "previous_champion": champion_version, "metric": config.register.metric, **asdict(decision)}
    write_json(out_dir / "registration.json", record)
    log.info("registered %s version %s (%s): %s", name, version, ", ".join(aliases), "; ".join(decision.reasons))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser("components.register", DESCRIPTION).parse_args(argv)
    return run_main(args, lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
