"""``python -m pipeline.submit --host URL``: upload the pipeline to Kubeflow Pipelines and start a run.

    python -m pipeline.submit --host https://kfp.example.com/pipeline [--experiment dagan]
        [-S train.epochs=50 -S model.variant=B1 ...] [--params-file params.yaml]
        [--num-nodes 2 --gpus-per-node 4] [--package dagan-pipeline.yaml | cluster flags] [--wait]

Without ``--package`` the pipeline is compiled now from the same cluster flags as
``pipeline.compile``. The package is uploaded as a new version of the pipeline ``--pipeline-name``
(created on first use) and run in ``--experiment``; ``-S`` overrides become the run's
``overrides`` parameter and reach every step as ``-S key=value`` (the syntax of ``dvc exp run -S``).
A bearer token, when the endpoint needs one, is read from ``$KFP_TOKEN`` (never a flag).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import kfp
import yaml

from pipeline.compile import add_cluster_arguments, compile_pipeline, settings_from
from pipeline.pipeline import PIPELINE_NAME
from pipeline.steps import check_shape
from pipeline.tasks import IMAGE_PARAMS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.submit",
                                     description="Upload the pipeline to Kubeflow Pipelines and start a run "
                                                 "(docs/KUBEFLOW.md).")
    parser.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint")
    parser.add_argument("--namespace", default=None, help="profile namespace (multi-user Kubeflow)")
    parser.add_argument("--experiment", default="dagan", help="experiment (created when missing; default dagan)")
    parser.add_argument("--pipeline-name", default=PIPELINE_NAME, help="pipeline to upload a version of")
    parser.add_argument("--run-name", default=None, help="default: <pipeline>-<UTC time>")
    parser.add_argument("--package", default=None, help="compiled pipeline YAML (default: compile now)")
    parser.add_argument("--params-file", default=IMAGE_PARAMS,
                        help="params file inside the image (default %(default)s)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every step, e.g. -S train.lr_g=2e-4 (repeatable)")
    parser.add_argument("--num-nodes", type=int, default=None,
                        help="training nodes (more than 1: pipelines compiled with --trainjob)")
    parser.add_argument("--gpus-per-node", type=int, default=None,
                        help="GPUs of the train pod or of each TrainJob node")
    parser.add_argument("--no-cache", action="store_true", help="run every step, ignoring cached results")
    parser.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 1 unless it succeeded")
    parser.add_argument("--timeout", type=int, default=7 * 24 * 3600, help="seconds --wait waits (default a week)")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"-S {item!r}: expected KEY=VALUE, e.g. -S train.lr_g=2e-4")
    return args


def run_arguments(args: argparse.Namespace) -> dict:
    """The pipeline parameters of the run."""
    arguments: dict = {"params_file": args.params_file, "overrides": list(args.overrides)}
    if args.num_nodes is not None:
        arguments["num_nodes"] = args.num_nodes
    if args.gpus_per_node is not None:
        arguments["gpus_per_node"] = args.gpus_per_node
    return arguments


def check_arguments(package: Path, arguments: dict) -> None:
    """Refuse arguments the package does not take, or a run shape it cannot train (pipeline.steps.check_shape)."""
    spec = next(yaml.safe_load_all(package.read_text()))
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        raise ValueError(f"{package} takes no parameter {', '.join(unknown)} "
                         f"(it takes {', '.join(sorted(parameters))})")
    configure = spec["root"]["dag"]["tasks"].get("configure")
    if configure is None:
        return
    constants = {name: value["runtimeValue"]["constant"] for name, value in configure["inputs"]["parameters"].items()
                 if "runtimeValue" in value}

    def chosen(name: str) -> int:
        return int(arguments.get(name, parameters[name].get("defaultValue", 0)))

    check_shape(chosen("num_nodes"), chosen("gpus_per_node"), bool(constants["trainjob"]),
                int(constants["cluster_gpus"]))


def _pipeline_version(client: kfp.Client, package: Path, name: str, namespace: str | None) -> tuple[str, str]:
    """Upload ``package`` as a new version of pipeline ``name`` (created on first use): (pipeline_id, version_id)."""
    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
    version_name = f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{digest}"
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=name, namespace=namespace).pipeline_id
        versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def submit(args: argparse.Namespace, package: Path) -> int:
    arguments = run_arguments(args)
    check_arguments(package, arguments)
    client = kfp.Client(host=args.host, namespace=args.namespace or "kubeflow",
                        existing_token=os.environ.get("KFP_TOKEN") or None)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    pipeline_id, version_id = _pipeline_version(client, package, args.pipeline_name, args.namespace)
    run_name = args.run_name or f"{args.pipeline_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run = client.run_pipeline(experiment_id=experiment.experiment_id, job_name=run_name, params=arguments,
                              pipeline_id=pipeline_id, version_id=version_id,
                              enable_caching=False if args.no_cache else None)
    print(f"started run {run.run_id} ({run_name}) in experiment {args.experiment} at {args.host}")
    if not args.wait:
        return 0
    finished = client.wait_for_run_completion(run.run_id, timeout=args.timeout)
    state = str(finished.state)
    print(f"run {run.run_id} finished: {state}")
    return 0 if state.upper() == "SUCCEEDED" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.package:
            package = Path(args.package)
            if not package.is_file():
                raise ValueError(f"--package {package} does not exist; write it with python -m pipeline.compile")
            return submit(args, package)
        with tempfile.TemporaryDirectory() as tmp:
            return submit(args, compile_pipeline(settings_from(args), Path(tmp) / "dagan-pipeline.yaml"))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
