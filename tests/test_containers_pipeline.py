"""The compiled Kubeflow pipeline with every step in its own container of the image (``make test-containers``).

The package that ``python -m pipeline.compile`` writes runs twice on the tiny synthetic config of
tests/test_pipeline_local.py: with kfp.local's DockerRunner against podman (each step a container
of the image, uid 1000, no network, the tracking store a sqlite file in a mounted folder;
containers/kfp_local.py says why), and with the SubprocessRunner in this virtualenv. Both end with
the model registered, and the training run's metrics are equal: the same code, torch build and
thread count (OMP_NUM_THREADS=1 in both) on the same CPU compute the same floats.
"""

from __future__ import annotations

import math
from pathlib import Path

from container_fixtures import IMAGE, IMAGE_UID, needs_image, session_containers_removed
from test_pipeline_local import ROOT, TINY

from containers.kfp_local import docker_api, docker_runner, writable_by

pytestmark = needs_image

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Wall-clock measurements, different in every run by nature.
TIMINGS = ("time/", "system/", "seconds", "_per_s", "duration")


def run_package(package: Path, root: Path, runner, **arguments) -> None:
    """Run the compiled package with ``runner``, its outputs under ``root``."""
    from kfp import components, local

    local.init(runner=runner, pipeline_root=str(root / "pipeline_root"), workspace_root=str(root / "workspace"))
    pipeline = components.load_component_from_file(str(package))
    pipeline(overrides=TINY, variant="B2", max_steps=2, **arguments)


def registered_training(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    version = client.get_model_version_by_alias("dagan-synthetic", "candidate")
    assert version.tags["gate_passed"] == "True"
    return client.get_run(version.run_id)


def comparable(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if not any(word in key for word in TIMINGS)}


def test_the_compiled_pipeline_runs_each_step_in_a_container_and_matches_the_subprocess_run(tmp_path, monkeypatch):
    from kfp import local

    from pipeline.compile import main as compile_main

    package = tmp_path / "dagan-pipeline.yaml"
    assert compile_main(["--output", str(package), "--image", IMAGE, "--gpus", "0"]) == 0
    for name, value in THREADS.items():
        monkeypatch.setenv(name, value)

    containers = tmp_path / "containers"
    for folder in (containers / "pipeline_root", containers / "workspace", containers / "tracking"):
        writable_by(folder, IMAGE_UID, IMAGE_UID)  # a cluster's volumes are writable for the pod's fsGroup
    tracking = f"sqlite:///{containers / 'tracking' / 'mlflow.db'}"
    with session_containers_removed() as session, docker_api(tmp_path) as docker_host:
        monkeypatch.setenv("DOCKER_HOST", docker_host)  # kfp.local's DockerRunner talks to podman
        runner = docker_runner(session, {"MLFLOW_TRACKING_URI": tracking, **THREADS}, shared=[containers / "tracking"])
        run_package(package, containers, runner)  # params_file: the package's default, the image's /app/params.yaml
    in_containers = registered_training(tracking)

    here = tmp_path / "subprocess"
    (here / "tracking").mkdir(parents=True)
    monkeypatch.chdir(here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{here / 'tracking' / 'mlflow.db'}")
    run_package(package, here, local.SubprocessRunner(use_venv=False), params_file=str(ROOT / "params.yaml"))
    in_process = registered_training(f"sqlite:///{here / 'tracking' / 'mlflow.db'}")

    outputs = [path for path in (containers / "pipeline_root").rglob("*") if path.is_file()]
    assert outputs and {path.stat().st_uid for path in outputs} == {IMAGE_UID}, "every step ran as uid 1000"
    assert in_containers.data.params == in_process.data.params
    assert in_containers.data.params["model.variant"] == "B2"
    assert in_containers.data.tags["kfp.run_id"] and "eval/judge_miou_generated" in in_containers.data.metrics
    expected = comparable(in_process.data.metrics)
    assert len(expected) > 10 and comparable(in_containers.data.metrics).keys() == expected.keys()
    different = {key: (value, expected[key]) for key, value in comparable(in_containers.data.metrics).items()
                 if not (value == expected[key] or (math.isnan(value) and math.isnan(expected[key])))}
    assert not different, f"metrics differ between the container and the subprocess run: {different}"
    artifacts = Path(in_containers.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(containers / "tracking"), "the artifacts beside the sqlite store"
