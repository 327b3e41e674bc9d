"""The bodies of the Kubeflow components: run one pipeline step on the component's artifacts.

Each KFP component (pipeline/kfp_components.py) is a thin shim that imports this module in the
project image and calls one function here. A function maps the component's artifact paths onto
config overrides (``-S dataset.prepared_dir=...``), runs the same ``components.<step>.main`` that
DVC runs, and returns what the component logs (metrics, HTML/Markdown reports). The user's
overrides come first; the artifact paths come last, so they win.
"""

from __future__ import annotations

import base64
import html
import importlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.settings import load_step_config
from components.tracking import KFP_RUN_ENV
from dagan.checkpoint import FINAL_NAME, checkpoint_dir
from pipeline.launcher import current_namespace, run_in_process, run_trainjob
from pipeline.scheduling import Scheduling
from pipeline.trainjob import DistributedTraining, SecretEnv


class StepError(RuntimeError):
    """A pipeline step exited with an error or left an unusable result."""


def component_argv(params_file: str, overrides: Sequence[str], paths: Mapping[str, str | Path]) -> list[str]:
    """``--params FILE -S key=value ...``: the user's overrides, then the artifact paths."""
    argv = ["--params", params_file]
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"config override {item!r} is not KEY=VALUE (e.g. train.lr_g=2e-4)")
        argv += ["-S", item]
    for key, value in paths.items():
        argv += ["-S", f"{key}={value}"]
    return argv


# The typed run parameters of the pipeline (the KFP run form's fields) and the config key each sets.
# "" (text) and -1 (numbers) leave the params file's value.
RUN_FIELDS = {"dataset": "dataset.name", "raw_dir": "dataset.raw_dir", "generator": "model.generator",
              "discriminator": "model.discriminator", "variant": "model.variant", "max_steps": "train.max_steps",
              "epochs": "train.epochs", "epochs_decay": "train.epochs_decay", "batch_size": "train.batch_size",
              "lambda_feat": "loss.lambda_feat", "lambda_vgg": "loss.lambda_vgg"}


def run_overrides(fields: Mapping[str, Any], overrides: Sequence[str]) -> list[str]:
    """``key=value`` for every typed run field that is set, then the free-form overrides (which win)."""
    unknown = sorted(set(fields) - set(RUN_FIELDS))
    if unknown:
        raise ValueError(f"unknown run field(s) {', '.join(unknown)}; known: {', '.join(RUN_FIELDS)}")
    chosen = [f"{RUN_FIELDS[name]}={value}" for name, value in fields.items()
              if not (value == "" or (isinstance(value, int | float) and not isinstance(value, bool) and value < 0))]
    return chosen + [str(item) for item in overrides]


def check_shape(num_nodes: int, gpus_per_node: int, trainjob: bool, cluster_gpus: int) -> None:
    """Refuse a run shape the compiled pipeline cannot give (several nodes without a TrainJob, GPUs on a CPU build)."""
    if num_nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"num_nodes must be >= 1 and gpus_per_node >= 0, got {num_nodes} and {gpus_per_node}")
    if num_nodes > 1 and not trainjob:
        raise ValueError(f"num_nodes={num_nodes}: training on several nodes needs the pipeline compiled with "
                         "--trainjob --shared-pvc NAME (docs/KUBEFLOW.md)")
    if gpus_per_node > 0 and cluster_gpus == 0:
        raise ValueError(f"gpus_per_node={gpus_per_node} but the pipeline was compiled for CPU (--gpus 0); "
                         "compile with --gpus N")


def run_component(step: str, argv: Sequence[str]) -> None:
    """``python -m components.<step> ARGV`` in this process; a non-zero status raises StepError."""
    module = importlib.import_module(f"components.{step}")
    code = module.main(list(argv))
    if code != 0:
        raise StepError(f"python -m components.{step} {shlex.join(argv)} exited with status {code}")


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise StepError(f"{path} does not exist: the step did not write its result")
    return json.loads(path.read_text())


def numeric(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) metrics dict, as flat dotted names (booleans left out)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(numeric(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def prepare(params_file: str, overrides: Sequence[str], prepared_dir: str) -> dict[str, float]:
    """Raw data (generated first for the synthetic dataset) -> Parquet shards + manifest in ``prepared_dir``."""
    config = load_step_config(params_file, list(overrides))
    with tempfile.TemporaryDirectory(prefix="dagan-raw-") as scratch:
        paths: dict[str, str] = {}
        if config.dataset.name == "synthetic":  # generated raw data only lives until it is sharded
            paths["dataset.raw_dir"] = scratch
            run_component("synthesize", component_argv(params_file, overrides, paths))
        run_component("prepare", component_argv(params_file, overrides,
                                                {**paths, "dataset.prepared_dir": prepared_dir}))
    manifest = read_json(Path(prepared_dir) / "manifest.json")
    return {"num_classes": float(manifest["num_classes"]),
            **{f"rows_{split}": float(rows) for split, rows in manifest["splits"].items()}}


def train_judge(params_file: str, overrides: Sequence[str], prepared_dir: str, judge_dir: str) -> dict[str, float]:
    run_component("train_judge", component_argv(params_file, overrides, {"dataset.prepared_dir": prepared_dir,
                                                                         "judge.out_dir": judge_dir}))
    return numeric(read_json(Path(judge_dir) / "metrics.json"))


def _training_ended(train_dir: Path) -> bool:
    """Whether ``train_dir`` holds a training that ran to its last step (not one stopped by SIGTERM)."""
    path = train_dir / "metrics.json"
    return path.is_file() and not json.loads(path.read_text()).get("stopped_early")


def _finished_training(train_dir: Path) -> dict[str, Any]:
    metrics = read_json(train_dir / "metrics.json")
    if metrics.get("stopped_early"):
        raise StepError(f"training stopped at step {metrics.get('steps')} of {metrics.get('total_steps')} "
                        f"(SIGTERM or a stop request); the checkpoint is in {train_dir}; the step's retry resumes")
    return metrics


def export_training(train_dir: Path, model_dir: Path) -> None:
    """Copy the final checkpoint and the run's small files from the shared volume into the Model artifact."""
    (checkpoint_dir(model_dir)).mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint_dir(train_dir) / FINAL_NAME, checkpoint_dir(model_dir) / FINAL_NAME)
    for path in train_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, model_dir / path.name)


def tag_runs_with(kfp_run_id: str) -> None:
    """MLflow runs this process (and its children) create get the tag ``kfp.run_id`` (components/tracking.py)."""
    if kfp_run_id:
        os.environ[KFP_RUN_ENV] = kfp_run_id


def train(params_file: str, overrides: Sequence[str], prepared_dir: str, model_dir: str, nproc: int,
          work_dir: str = "", kfp_run_id: str = "") -> dict[str, float]:
    """Train in this pod (torchrun over ``nproc`` GPUs when > 1). With ``work_dir`` (a shared volume)
    the checkpoints live there, so a retried step resumes; the result is copied into ``model_dir``."""
    tag_runs_with(kfp_run_id)
    train_dir = Path(work_dir or model_dir)
    run_in_process(component_argv(params_file, overrides, {"dataset.prepared_dir": prepared_dir,
                                                           "train.out_dir": train_dir}), nproc)
    metrics = _finished_training(train_dir)
    if work_dir:
        export_training(train_dir, Path(model_dir))
    return numeric(metrics)


def train_distributed(params_file: str, overrides: Sequence[str], prepared_dir: str, model_dir: str, *,
                      job_name: str, work_dir: str, image: str, num_nodes: int, gpus_per_node: int,
                      resources: Mapping[str, str], shared_pvc: str, shared_mount: str,
                      secret_env: Sequence[Mapping[str, Any]], timeout_s: float, grace_s: int,
                      scheduling: Mapping[str, Any] | None = None, kfp_run_id: str = "", api=None,
                      core_api=None) -> dict[str, float]:
    """Launch a TrainJob over ``num_nodes`` x ``gpus_per_node`` (or recover the one a previous attempt of the step
    launched) and wait, printing its nodes' logs; data and checkpoints on the shared volume. The job's deadline is
    ``timeout_s``, its nodes' grace period ``grace_s`` (pipeline/launcher.py)."""
    if not work_dir.startswith(shared_mount.rstrip("/") + "/"):
        raise ValueError(f"work_dir {work_dir!r} must lie on the shared volume mounted at {shared_mount}")
    work = Path(work_dir)
    data_dir = work / "data"
    if not (data_dir / "manifest.json").is_file():  # a retried launcher reuses the copy
        staging = work / "data.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.copytree(prepared_dir, staging)
        staging.rename(data_dir)
    train_dir = work / "train"
    job = DistributedTraining(
        name=job_name, image=image, num_nodes=num_nodes, gpus_per_node=gpus_per_node,
        train_args=tuple(component_argv(params_file, overrides, {"dataset.prepared_dir": data_dir,
                                                                 "train.out_dir": train_dir})),
        cpu_per_node=resources["cpu"], memory_per_node=resources["memory"], shm_size=resources["shm"],
        shared_pvc=shared_pvc, shared_mount=shared_mount, namespace=current_namespace(),
        secret_env=tuple(SecretEnv(**item) for item in secret_env),
        env=((KFP_RUN_ENV, kfp_run_id),) if kfp_run_id else (),
        grace_s=int(grace_s), active_deadline_s=max(int(timeout_s), 1),  # KFP may pass numbers as floats
        scheduling=Scheduling.from_dict(scheduling or {}),
    )
    run_trainjob(job, timeout_s=timeout_s, api=api, core_api=core_api, finished=lambda: _training_ended(train_dir))
    metrics = _finished_training(train_dir)
    export_training(train_dir, Path(model_dir))
    return numeric(metrics)


def evaluate(params_file: str, overrides: Sequence[str], prepared_dir: str, judge_dir: str, model_dir: str,
             eval_dir: str) -> tuple[dict[str, float], bool, list[str]]:
    """Evaluate; return the metrics, whether the registration gate passes, and the gate's checks
    (``components.register.decide``; the champion is the register step's business)."""
    from components.register import decide

    run_component("evaluate", component_argv(params_file, overrides, {
        "dataset.prepared_dir": prepared_dir, "judge.out_dir": judge_dir, "train.out_dir": model_dir,
        "evaluate.out_dir": eval_dir}))
    metrics = read_json(Path(eval_dir) / "metrics.json")
    config = load_step_config(params_file, list(overrides))
    decision = decide(metrics, config.register, None, str(Path(eval_dir) / "metrics.json"))
    return numeric(metrics), decision.gate_passed, list(decision.gate_checks)


def register(params_file: str, overrides: Sequence[str], prepared_dir: str, model_dir: str, eval_dir: str,
             register_dir: str) -> dict[str, Any]:
    run_component("register", component_argv(params_file, overrides, {
        "dataset.prepared_dir": prepared_dir, "train.out_dir": model_dir, "evaluate.out_dir": eval_dir,
        "register.out_dir": register_dir}))
    return read_json(Path(register_dir) / "registration.json")


def images_html(folder: str | Path, title: str) -> str:
    """A self-contained HTML page with every PNG under ``folder`` inlined (KFP's HTML visualisation)."""
    sections = []
    for path in sorted(Path(folder).rglob("*.png")):
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        sections.append(f"<h2>{html.escape(path.stem)}</h2>\n<img alt=\"{html.escape(path.name)}\" "
                        f"src=\"data:image/png;base64,{data}\" style=\"max-width:100%\">")
    body = "\n".join(sections) or "<p>no images were written</p>"
    return f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n" \
           f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"


def metrics_markdown(title: str, metrics: Mapping[str, float], notes: Sequence[str] = ()) -> str:
    lines = [f"# {title}", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.6g} |" for name, value in sorted(metrics.items())]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"
