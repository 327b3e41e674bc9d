"""``python -m pipeline.compile --output FILE``: write the Kubeflow pipeline as a YAML package.

    python -m pipeline.compile --output dagan-pipeline.yaml --image REGISTRY/dagan:TAG [--gpus 4]
        [--shared-pvc NAME [--trainjob]] [--mlflow-secret NAME] [--s3-secret NAME]
        [--toleration KEY[=VALUE][:EFFECT]] [--node-selector KEY=VALUE] [--kueue-queue NAME] ...

The flags are the cluster's side of the pipeline (pipeline/tasks.py, ClusterSettings);
a run's own choices (params file, -S overrides, nodes) are parameters given at submit time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kfp import compiler

from dagan.atomic import atomic_write
from pipeline.pipeline import build_pipeline
from pipeline.scheduling import add_scheduling_arguments, scheduling_from
from pipeline.tasks import DEFAULT_IMAGE, ClusterSettings

DEFAULTS = ClusterSettings()
PACKAGE_SUFFIXES = (".yaml", ".yml", ".json")  # what kfp's compiler writes


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster settings (compile time)")
    group.add_argument("--image", default=DEFAULT_IMAGE, help=f"project image for every step (default {DEFAULT_IMAGE})")
    group.add_argument("--gpus", type=int, default=DEFAULTS.gpus,
                       help="GPUs of the train pod, and per node of a TrainJob by default (default %(default)s)")
    group.add_argument("--cpu", default=DEFAULTS.cpu, help="CPU of the train pod / TrainJob node (default %(default)s)")
    group.add_argument("--memory", default=DEFAULTS.memory, help="memory of the train pod / node (default %(default)s)")
    group.add_argument("--shm-size", default=DEFAULTS.shm_size, help="memory-backed /dev/shm (default %(default)s)")
    group.add_argument("--train-retries", type=int, default=DEFAULTS.train_retries, help="default %(default)s")
    group.add_argument("--mlflow-secret", default=DEFAULTS.mlflow_secret,
                       help="secret with MLFLOW_TRACKING_URI (default %(default)s)")
    group.add_argument("--s3-secret", default=DEFAULTS.s3_secret,
                       help="secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (default %(default)s)")
    group.add_argument("--shared-pvc", default=None,
                       help="ReadWriteMany PVC mounted at --shared-mount (raw data, checkpoints that survive retries)")
    group.add_argument("--shared-mount", default=DEFAULTS.shared_mount, help="default %(default)s")
    group.add_argument("--trainjob", action="store_true",
                       help="train as a Kubeflow Trainer TrainJob over num_nodes x gpus_per_node (needs --shared-pvc)")
    group.add_argument("--trainjob-timeout-s", type=float, default=DEFAULTS.trainjob_timeout_s,
                       help="how long the train step waits for the TrainJob; also its activeDeadlineSeconds "
                            "(default %(default).0f = 7 days)")
    group.add_argument("--trainjob-grace-s", type=int, default=DEFAULTS.trainjob_grace_s,
                       help="terminationGracePeriodSeconds of the TrainJob's nodes: SIGTERM to SIGKILL, the time to "
                            "write a checkpoint when preempted (default %(default)s, docs/KUBEFLOW.md)")
    add_scheduling_arguments(parser)


def settings_from(args: argparse.Namespace) -> ClusterSettings:
    return ClusterSettings(image=args.image, gpus=args.gpus, cpu=args.cpu, memory=args.memory, shm_size=args.shm_size,
                           train_retries=args.train_retries, mlflow_secret=args.mlflow_secret,
                           s3_secret=args.s3_secret, shared_pvc=args.shared_pvc, shared_mount=args.shared_mount,
                           trainjob=args.trainjob, trainjob_timeout_s=args.trainjob_timeout_s,
                           trainjob_grace_s=args.trainjob_grace_s, scheduling=scheduling_from(args))


def write_pipeline(pipeline_func, output: str | Path) -> Path:
    """Compile ``pipeline_func`` to ``output`` atomically (a failed compile leaves an earlier file untouched)."""
    output = Path(output)
    if output.suffix not in PACKAGE_SUFFIXES:
        raise ValueError(f"{output}: a pipeline package is a .yaml file (kfp also writes .json); "
                         f"choose e.g. --output {output.with_suffix('.yaml')}")
    with atomic_write(output) as staging:  # the temporary file keeps the suffix, which picks kfp's format
        compiler.Compiler().compile(pipeline_func, package_path=str(staging))
    return output


def compile_pipeline(settings: ClusterSettings, output: str | Path) -> Path:
    """Compile the main pipeline for ``settings`` to ``output`` atomically."""
    return write_pipeline(build_pipeline(settings), output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compile",
                                     description="Compile the Kubeflow pipeline to a YAML package (docs/KUBEFLOW.md).")
    parser.add_argument("--output", required=True, help="pipeline YAML to write")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    try:
        path = compile_pipeline(settings_from(args), args.output)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
