"""The scheduling and TrainJob settings as typed compile options (pipeline/scheduling.py, pipeline/tasks.py): the
compiled package carries the tolerations, node selector and Kueue queue label on every GPU task (and only there),
and gives the TrainJob launcher its grace period, timeout, scheduling and its own pod name (for the owner
reference); the sweep's tune pod gets the same scheduling. kfp.local ignores these settings, so they are checked on
the compiled YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import compile as compile_cli
from pipeline import tune_pipeline
from pipeline.launcher import POD_NAME_ENV
from pipeline.trainjob import DEFAULT_GRACE_S

SCHEDULING = ("--toleration", "nvidia.com/gpu:NoSchedule", "--toleration", "dedicated=ml",
              "--node-selector", "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "--kueue-queue", "gpu-queue")
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
               {"key": "dedicated", "operator": "Equal", "value": "ml"}]


def compile_to(tmp_path: Path, *flags: str, cli=compile_cli) -> tuple[dict, dict]:
    output = tmp_path / f"{cli.__name__}.yaml"
    assert cli.main(["--output", str(output), "--image", "registry.example.com/dagan:1", *flags]) == 0
    spec, platform = yaml.safe_load_all(output.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def scheduling_of(executor: dict) -> dict:
    return {key: executor[key] for key in ("tolerations", "nodeSelector", "podMetadata") if key in executor}


EXPECTED = {"tolerations": TOLERATIONS,
            "nodeSelector": {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "podMetadata": {"labels": {"kueue.x-k8s.io/queue-name": "gpu-queue"}}}


def test_every_gpu_task_and_only_those_gets_the_scheduling(tmp_path):
    _, executors = compile_to(tmp_path, "--gpus", "4", *SCHEDULING)
    for name in ("exec-train", "exec-train-judge", "exec-evaluate"):
        assert scheduling_of(executors[name]) == EXPECTED, name
    for name in ("exec-configure", "exec-prepare", "exec-register"):
        assert scheduling_of(executors.get(name, {})) == {}, f"{name} needs no GPU node"


def test_a_cpu_package_ignores_the_gpu_scheduling(tmp_path):
    _, executors = compile_to(tmp_path, "--gpus", "0", *SCHEDULING)
    assert all(scheduling_of(executor) == {} for executor in executors.values())


def test_the_sweeps_tune_pod_gets_the_same_scheduling(tmp_path):
    _, executors = compile_to(tmp_path, "--gpus", "2", *SCHEDULING, cli=tune_pipeline)
    assert scheduling_of(executors["exec-tune"]) == EXPECTED


def test_the_trainjob_launcher_carries_the_jobs_settings_and_its_pod_name(tmp_path):
    spec, executors = compile_to(tmp_path, "--gpus", "4", "--shared-pvc", "dagan-shared", "--trainjob",
                                 "--trainjob-grace-s", "150", "--trainjob-timeout-s", "86400", *SCHEDULING)
    inputs = spec["root"]["dag"]["tasks"]["train-distributed"]["inputs"]["parameters"]
    assert inputs["grace_s"]["runtimeValue"]["constant"] == 150
    assert inputs["timeout_s"]["runtimeValue"]["constant"] == 86400
    assert inputs["scheduling"]["runtimeValue"]["constant"] == {
        "tolerations": [["nvidia.com/gpu", "", "NoSchedule"], ["dedicated", "ml", ""]],
        "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "queue": "gpu-queue"}
    launcher = executors["exec-train-distributed"]
    assert scheduling_of(launcher) == {}, "the launcher only waits: it may run on any node"
    assert launcher["fieldPathAsEnv"] == [{"name": POD_NAME_ENV, "fieldPath": "metadata.name"}]
    for name in ("exec-train-judge", "exec-evaluate"):
        assert scheduling_of(executors[name]) == EXPECTED, name


def test_the_default_grace_period_is_the_measured_one(tmp_path):
    spec, _ = compile_to(tmp_path, "--shared-pvc", "dagan-shared", "--trainjob")
    inputs = spec["root"]["dag"]["tasks"]["train-distributed"]["inputs"]["parameters"]
    assert inputs["grace_s"]["runtimeValue"]["constant"] == DEFAULT_GRACE_S


@pytest.mark.parametrize(("flags", "message"), [
    (("--toleration", "nvidia.com/gpu:Never"), "toleration effect 'Never' is not one of"),
    (("--node-selector", "gpu"), "node selector 'gpu' is not KEY=VALUE"),
    (("--kueue-queue", "GPU queue"), "Kueue queue 'GPU queue' is not a valid Kubernetes name"),
    (("--shared-pvc", "p", "--trainjob", "--trainjob-grace-s", "0"), "--trainjob-grace-s must be >= 1 s")])
def test_a_bad_setting_is_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    output = tmp_path / "p.yaml"
    assert compile_cli.main(["--output", str(output), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not output.exists()
