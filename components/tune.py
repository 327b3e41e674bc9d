"""``python -m components.tune``: a Ray Tune sweep of loss weights and attention variants, in MLflow.

    python -m components.tune [--params FILE] [-S key=value ...] [--address ray://HOST:10001 | auto]
                              [--storage s3://BUCKET/PREFIX | DIR] [--num-samples N] [--resume]

Samples ``tune.search_space`` ``tune.num_samples`` times. Each trial (components/tune_trial.py)
trains with the sampled values for ``tune.max_steps`` steps, is scored by the judge every
``tune.eval_every`` steps (``tune.metric``: judge mIoU, maximised, or judge Fréchet distance,
minimised) and checkpointed there; ASHA stops the weak trials early. Without ``--address`` Ray
starts locally (``tune.num_cpus``); with it the sweep joins a running cluster (KubeRay).
Trials and their checkpoints live under ``<storage>/<tune.name>`` (a folder, or S3 with the
endpoint from ``$AWS_ENDPOINT_URL``); ``--resume`` restores an interrupted sweep there.

MLflow: a parent run for the sweep and a nested run per trial, on a tracking server
(``$MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri``, http(s)). Trials are processes writing at
the same time, possibly on other nodes, so sqlite files and local folders are refused.

Writes into ``tune.out_dir``: ``best_params.yaml`` (the params with the best trial's values:
``--params`` it, or copy it over params.yaml before ``dvc exp run``), ``best.json`` (the values
and the matching ``-S`` arguments), ``results.csv`` (one row per trial) and ``mlflow_run.json``
(the parent run); the first three are also artifacts of the parent run. Needs the prepared data
and the judge (``dvc repro train_judge``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from mlflow import MlflowClient
from mlflow.entities import Param

from components.cli import entry, log, make_parser, run_main
from components.outputs import connect_tracking, judge_path, tracking_uri, write_json
from components.search_space import Dimension, parse_search_space
from components.settings import StepConfig, load_step_config, redact_uri
from components.tracking import COMMIT_TAG, NOTE_TAG, git_commit, model_development_experiment, pipeline_tags
from components.tune_trial import PARENT_TAG, TrialSetup, run_trial
from dagan.atomic import atomic_write, atomic_write_text
from dagan.config import ConfigError, read_params
from dagan.overrides import merge_overrides

DESCRIPTION = """Sweep loss weights and attention variants with Ray Tune (ASHA), one nested MLflow run per
trial on an MLflow tracking server. Writes best_params.yaml, best.json and results.csv into
tune.out_dir (docs/TUNE.md)."""

RUN_FILE = "mlflow_run.json"
SCORES = ("judge_miou", "judge_accuracy", "fd_judge")
MODES = {"judge_miou": "max", "fd_judge": "min"}
SERVER_SCHEMES = ("http", "https", "databricks")


def check_tracking_uri(uri: str) -> None:
    """Refuse tracking stores that several processes on several nodes cannot share."""
    if urlsplit(uri).scheme not in SERVER_SCHEMES:
        raise ConfigError(
            f"MLflow tracking URI {redact_uri(uri)!r}: a sweep needs a tracking server. Ray Tune trials are separate "
            "processes (on other nodes with --address) logging at the same time; a sqlite file or a local folder "
            "is neither safe for concurrent writers nor visible from other nodes. Start one, e.g. "
            "`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5001`, and set "
            "MLFLOW_TRACKING_URI=http://127.0.0.1:5001 (docs/TUNE.md)")


def resolve_storage(path: str) -> tuple[str, Any]:
    """(storage_path, pyarrow filesystem or None) for Ray Tune: an absolute folder, or S3 via pyarrow."""
    if path.startswith("s3://"):
        from pyarrow import fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            parts = urlsplit(endpoint)
            options.update(endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https")
        return path[len("s3://"):].rstrip("/"), fs.S3FileSystem(**options)
    if "://" in path:
        raise ConfigError(f"tune.storage_path={path}: only a local folder or s3://bucket/prefix is supported")
    return str(Path(path).resolve()), None


def gpus_per_trial(requested: float | None, available: float) -> float:
    """GPUs per trial: null -> 1 when the cluster has GPUs, else 0; an explicit request needs a GPU."""
    if requested is None:
        return 1.0 if available > 0 else 0.0
    if requested > 0 and available <= 0:
        raise ConfigError(f"tune.gpus_per_trial={requested} but the Ray cluster has no GPU; set "
                          "tune.gpus_per_trial=0 (CPU trials) or null (GPUs only when present)")
    return requested


def _raw_params(path: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The params file with the -S overrides applied, unresolved (nulls kept), credentials removed, as a dict."""
    raw = read_params(path, overrides)
    if isinstance(raw.get("mlflow"), dict) and isinstance(raw["mlflow"].get("tracking_uri"), str):
        raw["mlflow"]["tracking_uri"] = redact_uri(raw["mlflow"]["tracking_uri"])
    return raw


def _param_space(dimensions: list[Dimension]) -> dict[str, Any]:
    from ray import tune

    space = {}
    for dim in dimensions:
        if dim.kind == "choice":
            space[dim.key] = tune.choice(list(dim.values))
        else:
            assert dim.low is not None and dim.high is not None  # parse_search_space gives a range both bounds
            space[dim.key] = (tune.loguniform if dim.kind == "loguniform" else tune.uniform)(dim.low, dim.high)
    return space


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(key, str(value)) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _parent_run(client: MlflowClient, config: StepConfig, keys: list[str], resume: bool) -> tuple[str, str]:
    """(run_id, experiment_id) of the sweep's parent run: a new one, or with --resume the recorded one."""
    record = Path(config.tune.out_dir) / RUN_FILE
    if resume:
        if not record.is_file():
            raise FileNotFoundError(f"{record} does not exist: --resume continues the sweep whose parent MLflow run "
                                    "is recorded there; run without --resume (and a new tune.name) for a new sweep")
        data = json.loads(record.read_text())
        client.update_run(data["run_id"], status="RUNNING")
        return data["run_id"], data["experiment_id"]
    experiment_id = model_development_experiment(client, config.mlflow.experiment)
    opts, commit = config.tune, git_commit()
    note = (f"Ray Tune sweep {opts.name}: {opts.num_samples} trials of up to {opts.max_steps} steps over "
            f"{', '.join(keys)}, {opts.metric} every {opts.eval_every} steps, ASHA grace {opts.grace_period} steps")
    tags = {NOTE_TAG: note, "ray.experiment": opts.name, "tune.swept": ",".join(keys), "tune.metric": opts.metric,
            "dataset": config.dataset.name, "tracking_uri": redact_uri(tracking_uri(config)), "out_dir": opts.out_dir,
            **pipeline_tags(), **({COMMIT_TAG: commit} if commit else {})}
    run = client.create_run(experiment_id, run_name=f"sweep-{opts.name}", tags=tags)
    params = {f"tune.{key}": json.dumps(value) if isinstance(value, dict) else value
              for key, value in dataclasses.asdict(opts).items() if key not in ("storage_path", "out_dir", "name")}
    _log_params(client, run.info.run_id, params)
    write_json(record, {"run_id": run.info.run_id, "experiment_id": experiment_id,
                        "tracking_uri": redact_uri(tracking_uri(config))})
    return run.info.run_id, experiment_id


def check_experiment(config: StepConfig, resume: bool) -> tuple[str, Any]:
    """(storage_path, filesystem) after checking that --resume finds the experiment and a new sweep does not."""
    from ray import tune

    opts = config.tune
    storage_path, filesystem = resolve_storage(opts.storage_path)
    exists = tune.Tuner.can_restore(f"{storage_path}/{opts.name}", storage_filesystem=filesystem)
    if resume and not exists:
        raise FileNotFoundError(f"no Ray Tune experiment to resume at {opts.storage_path}/{opts.name}")
    if exists and not resume:
        raise ConfigError(f"a Ray Tune experiment already exists at {opts.storage_path}/{opts.name}: pass --resume "
                          "to continue it, or choose a new -S tune.name=...")
    return storage_path, filesystem


def _tuner(config: StepConfig, setup: TrialSetup, dimensions: list[Dimension], gpus: float, resume: bool,
           storage: tuple[str, Any]):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    opts = config.tune
    storage_path, filesystem = storage
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": opts.cpus_per_trial, "gpu": gpus})
    if resume:
        return tune.Tuner.restore(f"{storage_path}/{opts.name}", trainable, resume_errored=True,
                                  storage_filesystem=filesystem)
    scheduler = ASHAScheduler(time_attr="step", max_t=opts.max_steps, grace_period=opts.grace_period,
                              reduction_factor=opts.reduction_factor)
    return tune.Tuner(
        trainable, param_space=_param_space(dimensions),
        tune_config=tune.TuneConfig(metric=opts.metric, mode=MODES[opts.metric], scheduler=scheduler,
                                    num_samples=opts.num_samples, max_concurrent_trials=opts.max_concurrent_trials),
        run_config=tune.RunConfig(name=opts.name, storage_path=storage_path, storage_filesystem=filesystem,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1),
    )


def _summarise(results, client: MlflowClient, config: StepConfig, keys: list[str], raw: dict, parent: tuple[str, str],
               source: str) -> int:
    """Close the trials' runs, write results.csv / best.json / best_params.yaml, log them to the parent run."""
    opts = config.tune
    parent_id, experiment_id = parent
    runs = {run.data.tags.get("ray.trial_id"): run for run in
            client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10_000)}
    rows, failed = [], []
    for result in results:
        trial_id = result.metrics.get("trial_id") or (result.path or "").rsplit("/", 1)[-1]
        run = runs.get(trial_id)
        step = result.metrics.get("step", 0)
        status = "error" if result.error else ("stopped_early" if step < opts.max_steps else "finished")
        if result.error:
            failed.append(trial_id)
        if run is not None and status == "stopped_early":
            client.set_tag(run.info.run_id, "tune.stopped_early", "true")
        if run is not None and run.info.status == "RUNNING":  # stopped by the scheduler, or a worker that died
            client.set_terminated(run.info.run_id, {"error": "FAILED", "stopped_early": "KILLED"}.get(status,
                                                                                                      "FINISHED"))
        rows.append({"trial_id": trial_id, "mlflow_run_id": run.info.run_id if run else "", "status": status,
                     "step": step, **{name: result.metrics.get(name, "") for name in SCORES},
                     **{key: result.config.get(key, "") for key in keys}})
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "results.csv", text.getvalue())
    client.log_artifact(parent_id, str(out_dir / "results.csv"))
    for name, value in (("num_trials", len(rows)), ("num_failed", len(failed)),
                        ("num_stopped_early", sum(row["status"] == "stopped_early" for row in rows))):
        client.log_metric(parent_id, name, value)
    scored = [row for row in rows if isinstance(row[opts.metric], int | float)]
    if not scored:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"no trial reported {opts.metric}; failed trials: {', '.join(failed) or 'none'} "
                           f"(see their logs under {opts.storage_path}/{opts.name})")
    pick = max if MODES[opts.metric] == "max" else min
    best = pick(scored, key=lambda row: row[opts.metric])
    overrides = {key: best[key] for key in keys}
    params_path = _write_best_params(out_dir / "best_params.yaml", merge_overrides(raw, overrides), best, source)
    summary = {"metric": opts.metric, "mode": MODES[opts.metric], "value": best[opts.metric], "step": best["step"],
               "trial_id": best["trial_id"], "mlflow_run_id": best["mlflow_run_id"], "overrides": overrides,
               "set_args": [f"{key}={value}" for key, value in overrides.items()], "failed_trials": failed}
    write_json(out_dir / "best.json", summary)
    client.log_metric(parent_id, f"best_{opts.metric}", float(best[opts.metric]))
    for key, value in overrides.items():
        client.set_tag(parent_id, f"best.{key}", str(value))
    client.set_tag(parent_id, "best.trial_id", best["trial_id"])
    client.set_tag(parent_id, "best.mlflow_run_id", best["mlflow_run_id"])
    for path in (params_path, out_dir / "best.json"):
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, "FINISHED")
    if failed:
        log.warning("%d trial(s) failed: %s", len(failed), ", ".join(failed))
    log.info("best trial %s: %s=%.4f at step %d with %s; %s", best["trial_id"], opts.metric, best[opts.metric],
             best["step"], " ".join(summary["set_args"]), params_path)
    return 0


def _write_best_params(path: Path, params: dict, best: dict, source: str) -> Path:
    """The params file with the best values (checked by loading it before it replaces the old one)."""
    header = (f"# Written by `python -m components.tune` from {source}: the best trial {best['trial_id']} "
              f"(MLflow run {best['mlflow_run_id']}).\n# Use: python -m components.train --params {path}\n")
    with atomic_write(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        load_step_config(tmp)
    return path


def _run(args) -> int:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"tune.num_samples={args.num_samples}")
    if args.storage is not None:
        overrides.append(f"tune.storage_path={args.storage}")
    config = load_step_config(args.params, overrides)
    raw = _raw_params(args.params, overrides)
    dimensions = parse_search_space(config.tune.search_space, raw, args.params)
    check_tracking_uri(tracking_uri(config))
    uri = connect_tracking(tracking_uri(config))  # credentials -> MLFLOW_TRACKING_USERNAME/PASSWORD (Ray inherits)
    judge = judge_path(config).resolve()
    if not judge.is_file():
        raise FileNotFoundError(f"judge checkpoint {judge} does not exist; run `dvc repro train_judge` "
                                "(python -m components.train_judge) first")
    prepared = Path(config.dataset.prepared_dir).resolve()
    if not (prepared / "manifest.json").is_file():
        raise FileNotFoundError(f"{prepared}/manifest.json does not exist; run `dvc repro prepare` first")

    storage = check_experiment(config, args.resume)
    keys = [dim.key for dim in dimensions]
    client = MlflowClient(uri)
    parent = _parent_run(client, config, keys, args.resume)
    try:
        return _sweep(config, args, raw, dimensions, uri, client, parent, storage, prepared, judge)
    except BaseException:
        client.set_terminated(parent[0], "FAILED")
        raise


def _sweep(config: StepConfig, args, raw: dict, dimensions: list[Dimension], uri: str, client: MlflowClient,
           parent: tuple[str, str], storage: tuple[str, Any], prepared: Path, judge: Path) -> int:
    import ray

    keys = [dim.key for dim in dimensions]
    runtime_env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}  # relative paths mean the same in every trial
    if args.address:
        if not config.tune.storage_path.startswith("s3://"):
            log.warning("tune.storage_path=%s is a local folder: every node of the cluster must see it (a shared "
                        "volume), else use s3://", config.tune.storage_path)
        ray.init(address=args.address, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=config.tune.num_cpus, include_dashboard=False, runtime_env=runtime_env)
    scratch = Path(tempfile.mkdtemp(prefix=f"dagan-tune-{config.tune.name}-"))
    try:
        gpus = gpus_per_trial(config.tune.gpus_per_trial, ray.cluster_resources().get("GPU", 0))
        base = merge_overrides(raw, {
            "train.max_steps": config.tune.max_steps, "train.checkpoint_every": config.tune.eval_every,
            "train.device": "cuda" if gpus > 0 else "cpu", "dataset.prepared_dir": str(prepared),
            "evaluate.judge": str(judge), "mlflow.tracking_uri": uri})
        setup = TrialSetup(base=base, source=args.params, keys=tuple(keys), judge_path=str(judge), tracking_uri=uri,
                           experiment_id=parent[1], parent_run_id=parent[0], sweep_name=config.tune.name,
                           scratch_dir=str(scratch), tags=pipeline_tags())
        log.info("sweep %s: %d trial(s) over %s, %s GPU(s) and %s CPU(s) each; MLflow parent run %s",
                 config.tune.name, config.tune.num_samples, ", ".join(keys), gpus, config.tune.cpus_per_trial,
                 parent[0])
        results = _tuner(config, setup, dimensions, gpus, args.resume, storage).fit()
        return _summarise(results, client, config, keys, raw, parent, args.params)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)  # trials stopped inside tune.report leave theirs behind


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.tune", DESCRIPTION)
    parser.add_argument("--address", help="join a running Ray cluster (ray://HOST:10001 or auto); default: local Ray")
    parser.add_argument("--storage", help="trial storage: a folder or s3://bucket/prefix (tune.storage_path)")
    parser.add_argument("--num-samples", type=int, help="number of trials (tune.num_samples)")
    parser.add_argument("--resume", action="store_true",
                        help="restore the interrupted sweep tune.name under the storage path (Tuner.restore)")
    args = parser.parse_args(argv)
    return run_main(args, lambda: _run(args))


if __name__ == "__main__":
    entry(main)
