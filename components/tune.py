"""``python -m components.tune``: a Ray Tune sweep of loss weights and attention variants, in MLflow.

    python -m components.tune [--params FILE] [-S key=value ...] [--address auto | HOST:PORT]
                              [--storage s3://BUCKET/PREFIX | DIR] [--num-samples N] [--resume]

Samples ``tune.search_space`` ``tune.num_samples`` times (``tune.search_alg``). Each trial
(components/tune_trial.py) trains with the sampled values for ``tune.max_steps`` steps, is scored by
the judge every ``tune.eval_every`` steps (``tune.metric``: judge mIoU, maximised, or judge
Fréchet distance, minimised) and checkpointed there; ASHA stops the weak trials early; a failed
trial restarts from its latest checkpoint (``tune.max_failures``). Without ``--address`` Ray starts
locally (``tune.num_cpus``); with it the sweep joins a running cluster (components/ray_cluster.py;
on a cluster it runs as a Ray job, ``--address auto``). Trials and their checkpoints live under
``<storage>/<tune.name>`` (components/tune_storage.py); ``--resume`` restores an interrupted sweep
from there, with its MLflow parent run.

MLflow: a parent run for the sweep and a nested run per trial, on a tracking server
(``$MLFLOW_TRACKING_URI`` or ``mlflow.tracking_uri``, http(s)). Trials are processes writing at
the same time, possibly on other nodes, so sqlite files and local folders are refused.

Writes into ``tune.out_dir`` (components/tune_results.py: the best trial is the one with the best
report): ``best_params.yaml`` (the params with the best trial's values: ``--params`` it, or copy it
over params.yaml before ``dvc exp run``), ``best.json`` (the trial, its run and checkpoint, the
values and the matching ``-S`` arguments), ``results.csv`` (one row per trial) and
``mlflow_run.json`` (the parent run); the first three are also artifacts of the parent run. Needs
the prepared data and the judge (``dvc repro train_judge``). Every check of the input runs before
Ray starts or anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import Param

from components.cli import entry, log, make_parser, run_main
from components.outputs import connect_tracking, judge_path, tracking_uri, write_json
from components.ray_cluster import connect_ray
from components.search_space import Dimension, parse_search_space
from components.settings import StepConfig, TuneConfig, load_step_config, redact_uri, step_config_from_dict
from components.tracking import (
    COMMIT_TAG,
    NOTE_TAG,
    git_commit,
    model_development_experiment,
    pipeline_tags,
    planned_steps,
)
from components.tune_results import (
    MODES,
    close_trial_runs,
    pick_best,
    summary,
    trial_rows,
    trial_runs,
    write_best_params,
    write_results_csv,
)
from components.tune_storage import SweepStorage, check_experiment, check_writable, resolve_storage
from components.tune_trial import TrialSetup, run_trial
from dagan.config import ConfigError, read_params
from dagan.data import read_manifest
from dagan.overrides import merge_overrides

DESCRIPTION = """Sweep loss weights and attention variants with Ray Tune (ASHA), one nested MLflow run per
trial on an MLflow tracking server. Writes best_params.yaml, best.json and results.csv into
tune.out_dir (docs/TUNE.md)."""

RUN_FILE = "mlflow_run.json"
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


def _parent_run(client: MlflowClient, config: StepConfig, keys: list[str], resume: bool,
                storage: SweepStorage) -> tuple[str, str]:
    """(run_id, experiment_id) of the sweep's parent run: a new one recorded in the storage, or the recorded one."""
    if resume:
        record = storage.read_record()
        client.update_run(record["run_id"], status="RUNNING")
        write_json(Path(config.tune.out_dir) / RUN_FILE, record)
        return record["run_id"], record["experiment_id"]
    experiment_id = model_development_experiment(client, config.mlflow.experiment)
    opts, commit = config.tune, git_commit()
    note = (f"Ray Tune sweep {opts.name}: {opts.num_samples} trials of up to {opts.max_steps} steps over "
            f"{', '.join(keys)}, {opts.metric} every {opts.eval_every} steps, ASHA grace {opts.grace_period} steps")
    tags = {NOTE_TAG: note, "ray.experiment": opts.name, "tune.swept": ",".join(keys), "tune.metric": opts.metric,
            "tune.storage": f"{storage.uri}/{storage.name}", "dataset": config.dataset.name,
            "tracking_uri": redact_uri(tracking_uri(config)), "out_dir": opts.out_dir,
            **pipeline_tags(), **({COMMIT_TAG: commit} if commit else {})}
    run = client.create_run(experiment_id, run_name=f"sweep-{opts.name}", tags=tags)
    params = {f"tune.{key}": json.dumps(value) if isinstance(value, dict) else value
              for key, value in dataclasses.asdict(opts).items() if key not in ("storage_path", "out_dir", "name")}
    _log_params(client, run.info.run_id, params)
    record = {"run_id": run.info.run_id, "experiment_id": experiment_id,
              "tracking_uri": redact_uri(tracking_uri(config))}
    storage.write_record(record)
    write_json(Path(opts.out_dir) / RUN_FILE, record)
    return run.info.run_id, experiment_id


def _tuner(config: StepConfig, setup: TrialSetup, dimensions: list[Dimension], gpus: float, resume: bool,
           storage: SweepStorage):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    opts = config.tune
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": opts.cpus_per_trial, "gpu": gpus})
    if resume:
        return tune.Tuner.restore(storage.experiment, trainable, resume_errored=True,
                                  storage_filesystem=storage.filesystem)
    scheduler = ASHAScheduler(time_attr="step", max_t=opts.max_steps, grace_period=opts.grace_period,
                              reduction_factor=opts.reduction_factor)
    # Keep each trial's best-scoring checkpoint (and, always, its latest one, which a retry restores).
    checkpoints = tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=opts.metric,
                                        checkpoint_score_order=MODES[opts.metric])
    return tune.Tuner(
        trainable, param_space=_param_space(dimensions),
        tune_config=tune.TuneConfig(metric=opts.metric, mode=MODES[opts.metric], scheduler=scheduler,
                                    search_alg=search_algorithm(opts), num_samples=opts.num_samples,
                                    max_concurrent_trials=opts.max_concurrent_trials),
        run_config=tune.RunConfig(name=opts.name, storage_path=storage.path, storage_filesystem=storage.filesystem,
                                  checkpoint_config=checkpoints, failure_config=tune.FailureConfig(opts.max_failures),
                                  verbose=1),
    )


def search_algorithm(opts: TuneConfig):
    """Random search (Ray's default), or Optuna's TPE: its first third of the trials (at least 2) sampled at random,
    the rest proposed from the finished ones (``tune.max_concurrent_trials`` at a time)."""
    from ray.tune.search import BasicVariantGenerator

    if opts.search_alg == "random":
        return BasicVariantGenerator(random_state=opts.seed)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = max(2, opts.num_samples // 3)
    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=startup))


def _summarise(results, client: MlflowClient, config: StepConfig, keys: list[str], raw: dict, parent: tuple[str, str],
               storage: SweepStorage, source: str) -> int:
    """Close the trials' runs, write results.csv / best.json / best_params.yaml, log them to the parent run."""
    opts = config.tune
    parent_id, experiment_id = parent
    runs = trial_runs(client, experiment_id, parent_id)
    rows = trial_rows(results, runs, opts, keys, storage)
    close_trial_runs(client, rows, runs)
    failed = [row["trial_id"] for row in rows if row["status"] == "error"]
    out_dir = Path(opts.out_dir)
    client.log_artifact(parent_id, str(write_results_csv(out_dir / "results.csv", rows)))
    for name, value in (("num_trials", len(rows)), ("num_failed", len(failed)),
                        ("num_stopped_early", sum(row["status"] == "stopped_early" for row in rows))):
        client.log_metric(parent_id, name, value)
    best = pick_best(rows, opts.metric)
    if best is None:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"no trial reported {opts.metric}; failed trials: {', '.join(failed) or 'none'} "
                           f"(see their logs under {storage.uri}/{storage.name})")
    overrides = {key: best[key] for key in keys}
    params_path = write_best_params(out_dir / "best_params.yaml", merge_overrides(raw, overrides), best, opts.metric,
                                    source)
    result = summary(best, opts.metric, overrides, failed)
    write_json(out_dir / "best.json", result)
    client.log_metric(parent_id, f"best_{opts.metric}", result["value"])
    tags = {**{f"best.{key}": str(value) for key, value in overrides.items()}, "best.trial_id": best["trial_id"],
            "best.mlflow_run_id": best["mlflow_run_id"], "best.checkpoint": best["best_checkpoint"]}
    for key, value in tags.items():
        client.set_tag(parent_id, key, value)
    for path in (params_path, out_dir / "best.json"):
        client.log_artifact(parent_id, str(path))
    client.set_terminated(parent_id, "FINISHED")
    if failed:
        log.warning("%d trial(s) failed: %s", len(failed), ", ".join(failed))
    log.info("best trial %s: %s=%.4f at step %d (checkpoint %s) with %s; %s", best["trial_id"], opts.metric,
             result["value"], result["step"], result["checkpoint"], " ".join(result["set_args"]), params_path)
    return 0


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
    storage = resolve_storage(config.tune.storage_path, config.tune.name)
    check_writable(storage)
    check_experiment(storage, args.resume)
    if args.address and not storage.uri.startswith("s3://"):
        log.warning("tune.storage_path=%s is a local folder: every node of the cluster must see it (a shared "
                    "volume), else use s3://", storage.uri)
    connect_ray(args.address, config.tune.num_cpus)
    try:
        client = MlflowClient(uri)
        parent = _parent_run(client, config, [dim.key for dim in dimensions], args.resume, storage)
        try:
            return _sweep(config, args, raw, dimensions, uri, client, parent, storage, prepared, judge)
        except BaseException:
            client.set_terminated(parent[0], "FAILED")
            raise
    finally:
        import ray

        ray.shutdown()


def _sweep(config: StepConfig, args, raw: dict, dimensions: list[Dimension], uri: str, client: MlflowClient,
           parent: tuple[str, str], storage: SweepStorage, prepared: Path, judge: Path) -> int:
    import ray

    keys = [dim.key for dim in dimensions]
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
        planned = planned_steps(step_config_from_dict(base, args.params).resolved(), read_manifest(prepared))
        if planned < config.tune.max_steps:
            log.warning("trials train %d steps, fewer than tune.max_steps=%d: their train.epochs (+ epochs_decay) end "
                        "first; raise those to give every trial the sweep's budget", planned, config.tune.max_steps)
        log.info("sweep %s: %d trial(s) over %s, %s GPU(s) and %s CPU(s) each; MLflow parent run %s",
                 config.tune.name, config.tune.num_samples, ", ".join(keys), gpus, config.tune.cpus_per_trial,
                 parent[0])
        results = _tuner(config, setup, dimensions, gpus, args.resume, storage).fit()
        return _summarise(results, client, config, keys, raw, parent, storage, args.params)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # trials stopped inside tune.report leave theirs behind


def build_parser():
    parser = make_parser("components.tune", DESCRIPTION)
    parser.add_argument("--address", help="join a running Ray cluster (auto inside a Ray job or on a node, HOST:PORT, "
                                          "ray://HOST:10001); default: a local Ray")
    parser.add_argument("--storage", help="trial storage: a folder or s3://bucket/prefix (tune.storage_path)")
    parser.add_argument("--num-samples", type=int, help="number of trials (tune.num_samples)")
    parser.add_argument("--resume", action="store_true",
                        help="restore the interrupted sweep tune.name under the storage path (Tuner.restore)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(args, lambda: _run(args))


if __name__ == "__main__":
    entry(main)
