"""The Kubeflow sweep pipeline: prepare -> train_judge -> tune (Ray Tune; docs/TUNE.md).

    python -m pipeline.tune_pipeline --output dagan-tune.yaml --image REGISTRY/dagan:TAG [cluster flags]

The prepare and train_judge steps are the main pipeline's, built by the same function
(:func:`pipeline.tasks.prepare_and_judge`: components, resources, caching, retries); the tune step
runs ``python -m components.tune`` in the project image, with the same conventions: params file
and ``-S`` overrides as pipeline parameters, artifact paths as the last overrides, the MLflow and
S3 secrets as environment variables. Run parameters: ``ray_address`` (empty: Ray starts inside the
tune pod, which then gets the train pod's GPUs / CPU / memory, :func:`pipeline.tasks.with_train_pod`;
``ray://...:10001``: the pod is a light driver joining a KubeRay cluster), ``storage`` (empty:
``tune.storage_path``; use ``s3://...`` so trials survive the pod and ``--resume`` works),
``num_samples`` (0: ``tune.num_samples``) and ``resume``. The sweep writes to MLflow and external
storage, so it is never cached.

No ``from __future__ import annotations``: KFP reads the parameter and artifact types from them.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline.compile import add_cluster_arguments, settings_from, write_pipeline
from pipeline.kfp_components import build_components
from pipeline.tasks import IMAGE_PARAMS, ClusterSettings, prepare_and_judge, with_train_pod

PIPELINE_NAME = "dagan-tune"


def tune(params_file: str, overrides: list, prepared: Input[Dataset], judge: Input[Model], ray_address: str,
         storage: str, num_samples: int, resume: bool, job_id: str, sweep: Output[Artifact], metrics: Output[Metrics],
         report: Output[Markdown]):
    """Sweep loss weights and attention variants with Ray Tune; the best params file is the ``sweep`` artifact."""
    import json
    import os

    from pipeline import steps

    argv = steps.component_argv(params_file, overrides, {"dataset.prepared_dir": prepared.path,
                                                         "judge.out_dir": judge.path, "tune.out_dir": sweep.path})
    argv += ["--address", ray_address] if ray_address else []
    argv += ["--storage", storage] if storage else []
    argv += ["--num-samples", str(num_samples)] if num_samples > 0 else []
    argv += ["--resume"] if resume else []
    steps.tag_runs_with(job_id)  # the sweep's parent run and its trials get the tag kfp.run_id
    steps.run_component("tune", argv)
    best = steps.read_json(os.path.join(sweep.path, "best.json"))
    metrics.log_metric(f"best_{best['metric']}", best["value"])
    sweep.metadata.update({"best_overrides": best["overrides"], "mlflow_run_id": best["mlflow_run_id"]})
    notes = [f"best trial {best['trial_id']} (MLflow run {best['mlflow_run_id']})",
             f"train with: -S {' -S '.join(best['set_args'])}", f"overrides: {json.dumps(best['overrides'])}"]
    with open(report.path, "w", encoding="utf-8") as file:
        file.write(steps.metrics_markdown("Ray Tune sweep", {f"best_{best['metric']}": best["value"]}, notes))


def build_tune_pipeline(settings: ClusterSettings = ClusterSettings()):  # noqa: B008 (frozen, immutable default)
    """The sweep pipeline for ``settings`` (the main pipeline's cluster settings)."""
    ops = build_components(settings.image)
    tune_op = dsl.component(tune, base_image=settings.image, install_kfp_package=False)

    @dsl.pipeline(name=PIPELINE_NAME, description="DAGAN: prepare, judge, Ray Tune sweep tracked in MLflow")
    def dagan_tune_pipeline(params_file: str = IMAGE_PARAMS, overrides: list = [],  # noqa: B006 (a KFP default)
                            ray_address: str = "", storage: str = "", num_samples: int = 0, resume: bool = False):
        prepare, judge = prepare_and_judge(ops, settings, params_file, overrides)
        sweep = tune_op(params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
                        judge=judge.outputs["judge"], ray_address=ray_address, storage=storage,
                        num_samples=num_samples, resume=resume, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        sweep.set_display_name("tune").set_caching_options(False)
        with_train_pod(sweep, settings.gpus, settings)  # trials train inside Ray in this pod

    return dagan_tune_pipeline


def compile_tune_pipeline(settings: ClusterSettings, output: str | Path) -> Path:
    """Compile the sweep pipeline to ``output`` atomically."""
    return write_pipeline(build_tune_pipeline(settings), output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tune_pipeline",
        description="Compile the Kubeflow sweep pipeline (prepare, train_judge, Ray Tune) to a YAML package "
                    "(docs/TUNE.md).")
    parser.add_argument("--output", required=True, help="pipeline YAML to write")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    if args.trainjob:
        parser.error("--trainjob does not apply to the sweep: trials train inside Ray (docs/TUNE.md)")
    try:
        path = compile_tune_pipeline(settings_from(args), args.output)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
