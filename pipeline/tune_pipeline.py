"""The Kubeflow sweep pipeline: prepare -> train_judge -> tune (Ray Tune; docs/TUNE.md).

    python -m pipeline.tune_pipeline --output dagan-tune.yaml --image REGISTRY/dagan:TAG [cluster flags]
        [--ray-cluster http://dagan-raycluster-head-svc:8265 --shared-pvc NAME [--ray-secret NAME]]

The prepare and train_judge steps are the main pipeline's, built by the same function
(:func:`pipeline.tasks.prepare_and_judge`: components, resources, caching, retries); the tune step
runs ``python -m components.tune``, with the same conventions: params file and ``-S`` overrides as
pipeline parameters, artifact paths as the last overrides. Where it runs is decided at compile time:

- without ``--ray-cluster``: Ray starts inside the tune pod, which gets the train pod's GPUs / CPU /
  memory (:func:`pipeline.tasks.with_train_pod`) and the MLflow and S3 secrets;
- with ``--ray-cluster URL`` (a running Ray cluster's dashboard, KubeRay's ``<cluster>-head-svc:8265``):
  the tune pod is a light client that submits the sweep as a Ray job (pipeline/ray_job.py: why the
  Jobs API and not a RayJob resource), prints its log and fails when the job fails. The data, the
  judge and the sweep's outputs go through the shared volume (``--shared-pvc``), which the cluster's
  pods mount at the same path; the cluster's pods hold the MLflow and S3 secrets themselves.
  ``--ray-secret NAME``: the cluster's auth token (key ``auth_token``) as ``RAY_AUTH_TOKEN``.

Run parameters: ``storage`` (empty: ``tune.storage_path``; use ``s3://...`` so trials survive the pod
and ``--resume`` works), ``num_samples`` (0: ``tune.num_samples``) and ``resume``. The sweep writes to
MLflow and external storage, so it is never cached.

No ``from __future__ import annotations``: KFP reads the parameter and artifact types from them.
"""

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kfp import dsl
from kfp import kubernetes as k8s
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline.compile import add_cluster_arguments, settings_from, write_pipeline
from pipeline.kfp_components import build_components
from pipeline.tasks import IMAGE_PARAMS, ClusterSettings, prepare_and_judge, with_shared_volume, with_train_pod

PIPELINE_NAME = "dagan-tune"
RAY_TOKEN_KEY = "auth_token"  # the key of the token in the Ray secret (KubeRay's own auth secrets use it too)


@dataclass(frozen=True)
class RaySettings:
    """A running Ray cluster for the tune step (compile time); the default: Ray inside the tune pod."""

    dashboard: str = ""  # the head's dashboard (Jobs API), e.g. http://dagan-raycluster-head-svc:8265
    secret: str = ""  # secret with the cluster's auth token under RAY_TOKEN_KEY; "": a cluster without auth


def tune(params_file: str, overrides: list, prepared: Input[Dataset], judge: Input[Model], storage: str,
         num_samples: int, resume: bool, job_id: str, ray_dashboard: str, work_root: str, sweep: Output[Artifact],
         metrics: Output[Metrics], report: Output[Markdown]):
    """Sweep loss weights and attention variants with Ray Tune; the best params file is the ``sweep`` artifact."""
    import json
    import os

    from pipeline import steps

    if ray_dashboard:  # a Ray job on a running cluster; files through the shared volume
        steps.tune_on_cluster(params_file, overrides, prepared.path, judge.path, sweep.path, storage=storage,
                              num_samples=num_samples, resume=resume, dashboard_url=ray_dashboard,
                              work_dir=f"{work_root}/{job_id}/tune", kfp_run_id=job_id)
    else:  # Ray inside this pod
        steps.tag_runs_with(job_id)  # the sweep's parent run and its trials get the tag kfp.run_id
        steps.run_component("tune", steps.tune_argv(params_file, overrides, {
            "dataset.prepared_dir": prepared.path, "judge.out_dir": judge.path, "tune.out_dir": sweep.path},
            storage, num_samples, resume))
    best = steps.read_json(os.path.join(sweep.path, "best.json"))
    metrics.log_metric(f"best_{best['metric']}", best["value"])
    sweep.metadata.update({key: best[key] for key in ("overrides", "mlflow_run_id", "trial_id", "checkpoint")})
    notes = [f"best trial {best['trial_id']} (MLflow run {best['mlflow_run_id']}), its best report at step "
             f"{best['step']}, checkpoint {best['checkpoint']}",
             f"train with: -S {' -S '.join(best['set_args'])}", f"overrides: {json.dumps(best['overrides'])}"]
    with open(report.path, "w", encoding="utf-8") as file:
        file.write(steps.metrics_markdown("Ray Tune sweep", {f"best_{best['metric']}": best["value"]}, notes))


def with_ray_client(task: dsl.PipelineTask, settings: ClusterSettings, ray: RaySettings) -> dsl.PipelineTask:
    """A light pod that submits the sweep to the Ray cluster: the shared volume, and the token when it needs one."""
    task.set_cpu_request("500m").set_cpu_limit("1").set_memory_request("1Gi").set_memory_limit("2Gi")
    with_shared_volume(task, settings)
    if ray.secret:
        task.set_env_variable("RAY_AUTH_MODE", "token")
        k8s.use_secret_as_env(task, ray.secret, {RAY_TOKEN_KEY: "RAY_AUTH_TOKEN"})
    return task


def build_tune_pipeline(settings: ClusterSettings = ClusterSettings(),  # noqa: B008 (frozen, immutable default)
                        ray: RaySettings = RaySettings()):  # noqa: B008
    """The sweep pipeline for ``settings`` (the main pipeline's cluster settings) and ``ray`` (where trials run)."""
    if ray.dashboard and not settings.shared_pvc:
        raise ValueError("--ray-cluster needs a shared ReadWriteMany volume that the Ray cluster's pods mount at the "
                         "same path (data, judge and sweep outputs go through it): compile with --shared-pvc NAME")
    ops = build_components(settings.image)
    tune_op = dsl.component(tune, base_image=settings.image, install_kfp_package=False)

    @dsl.pipeline(name=PIPELINE_NAME, description="DAGAN: prepare, judge, Ray Tune sweep tracked in MLflow")
    def dagan_tune_pipeline(params_file: str = IMAGE_PARAMS, overrides: list = [],  # noqa: B006 (a KFP default)
                            storage: str = "", num_samples: int = 0, resume: bool = False):
        prepare, judge = prepare_and_judge(ops, settings, params_file, overrides)
        sweep = tune_op(params_file=params_file, overrides=overrides, prepared=prepare.outputs["prepared"],
                        judge=judge.outputs["judge"], storage=storage, num_samples=num_samples, resume=resume,
                        job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, ray_dashboard=ray.dashboard,
                        work_root=settings.work_root)
        sweep.set_display_name("tune").set_caching_options(False)
        if ray.dashboard:
            with_ray_client(sweep, settings, ray)
        else:
            with_train_pod(sweep, settings.gpus, settings)  # trials train inside Ray in this pod

    return dagan_tune_pipeline


def compile_tune_pipeline(settings: ClusterSettings, output: str | Path, ray: RaySettings = RaySettings()) -> Path:
    """Compile the sweep pipeline to ``output`` atomically."""
    return write_pipeline(build_tune_pipeline(settings, ray), output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tune_pipeline",
        description="Compile the Kubeflow sweep pipeline (prepare, train_judge, Ray Tune) to a YAML package "
                    "(docs/TUNE.md).")
    parser.add_argument("--output", required=True, help="pipeline YAML to write")
    add_cluster_arguments(parser)
    group = parser.add_argument_group("Ray cluster (compile time; default: Ray inside the tune pod)")
    group.add_argument("--ray-cluster", default="", metavar="URL",
                       help="submit the sweep as a Ray job to this dashboard (e.g. http://dagan-raycluster-head-svc:8265;"
                            " needs --shared-pvc)")
    group.add_argument("--ray-secret", default="",
                       help=f"secret with the Ray cluster's auth token (key {RAY_TOKEN_KEY}), for clusters with token "
                            "authentication")
    args = parser.parse_args(argv)
    if args.trainjob:
        parser.error("--trainjob does not apply to the sweep: trials train inside Ray (docs/TUNE.md)")
    try:
        if args.ray_secret and not args.ray_cluster:
            raise ValueError("--ray-secret is the token of the Ray cluster given by --ray-cluster URL")
        path = compile_tune_pipeline(settings_from(args), args.output, RaySettings(args.ray_cluster, args.ray_secret))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
