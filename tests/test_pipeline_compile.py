"""``python -m pipeline.compile``: the YAML carries the typed run parameters, resources, retries, secrets,
shared memory, caching and the registration gate the cluster needs. kfp.local ignores the Kubernetes
settings, so they are checked here, on the compiled package."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import compile as compile_cli
from pipeline import tune_pipeline

IMAGE = "registry.example.com/dagan:1.2.3"


def compile_to(tmp_path: Path, *flags: str, cli=compile_cli) -> tuple[dict, dict]:
    output = tmp_path / f"{cli.__name__}.yaml"
    assert cli.main(["--output", str(output), "--image", IMAGE, *flags]) == 0
    spec, platform = yaml.safe_load_all(output.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def default_package(tmp_path_factory):
    return compile_to(tmp_path_factory.mktemp("compile"), "--gpus", "4", "--cpu", "12", "--memory", "96Gi",
                      "--shm-size", "32Gi", "--train-retries", "3")


def all_tasks(spec: dict) -> dict[str, dict]:
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_the_dag_runs_the_steps_in_order_with_register_behind_the_gate(default_package):
    spec, _ = default_package
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"configure", "prepare", "train-judge", "train", "evaluate", "condition-1"}
    assert root["prepare"]["dependentTasks"] == ["configure"]
    assert set(root["train-judge"]["dependentTasks"]) == {"configure", "prepare"}
    assert set(root["train"]["dependentTasks"]) == {"configure", "prepare"}
    assert set(root["evaluate"]["dependentTasks"]) == {"configure", "prepare", "train-judge", "train"}
    assert root["train"]["inputs"]["parameters"]["overrides"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "configure"}, "every step applies configure's overrides"
    gate = root["condition-1"]
    assert gate["taskInfo"]["name"] == "registration-gate"
    condition = "inputs.parameter_values['pipelinechannel--evaluate-Output'] == 'passed'"
    assert gate["triggerPolicy"]["condition"] == condition
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"register"}


def test_typed_run_parameters_give_the_run_form_its_fields(default_package):
    spec, _ = default_package
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    types = {name: value["parameterType"] for name, value in parameters.items()}
    assert types == {"params_file": "STRING", "dataset": "STRING", "raw_dir": "STRING", "generator": "STRING",
                     "discriminator": "STRING", "variant": "STRING",
                     "max_steps": "NUMBER_INTEGER", "epochs": "NUMBER_INTEGER", "epochs_decay": "NUMBER_INTEGER",
                     "batch_size": "NUMBER_INTEGER", "lambda_feat": "NUMBER_DOUBLE", "lambda_vgg": "NUMBER_DOUBLE",
                     "overrides": "LIST", "num_nodes": "NUMBER_INTEGER", "gpus_per_node": "NUMBER_INTEGER"}
    assert all(value.get("description") for value in parameters.values()), "the form explains every field"
    assert parameters["gpus_per_node"]["defaultValue"] == 4 and parameters["num_nodes"]["defaultValue"] == 1
    assert parameters["max_steps"]["defaultValue"] == -1 and parameters["dataset"]["defaultValue"] == ""
    configure = spec["root"]["dag"]["tasks"]["configure"]["inputs"]["parameters"]
    assert configure["variant"] == {"componentInputParameter": "variant"}
    assert configure["generator"] == {"componentInputParameter": "generator"}
    assert configure["trainjob"]["runtimeValue"]["constant"] is False


def test_configure_turns_the_set_fields_into_overrides_before_the_free_form_ones():
    from pipeline.steps import run_overrides

    fields = {"dataset": "cityscapes", "raw_dir": "", "generator": "", "discriminator": "fpse", "variant": "B1",
              "max_steps": 0, "epochs": -1, "epochs_decay": -1, "batch_size": -1, "lambda_feat": 5.0,
              "lambda_vgg": -1.0}
    assert run_overrides(fields, ["train.lr_g=2e-4"]) == [
        "dataset.name=cityscapes", "model.discriminator=fpse", "model.variant=B1", "train.max_steps=0",
        "loss.lambda_feat=5.0", "train.lr_g=2e-4"]


def test_typed_artifacts(default_package):
    spec, _ = default_package
    outputs = {name: {key: value["artifactType"]["schemaTitle"]
                      for key, value in spec["components"][name]["outputDefinitions"]["artifacts"].items()}
               for name in ("comp-prepare", "comp-train-judge", "comp-train", "comp-evaluate", "comp-register")}
    assert outputs["comp-prepare"] == {"prepared": "system.Dataset", "metrics": "system.Metrics"}
    assert outputs["comp-train-judge"] == {"judge": "system.Model", "metrics": "system.Metrics"}
    assert outputs["comp-train"] == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outputs["comp-evaluate"] == {"evaluation": "system.Artifact", "metrics": "system.Metrics",
                                        "samples": "system.HTML", "report": "system.Markdown"}
    assert outputs["comp-register"] == {"registration": "system.Artifact", "report": "system.Markdown"}
    assert spec["components"]["comp-evaluate"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRING"


def test_every_step_runs_in_the_project_image_without_installing_packages(default_package):
    spec, _ = default_package
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-configure", "exec-prepare", "exec-train-judge", "exec-train", "exec-evaluate",
                              "exec-register"}
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        script = " ".join(container["command"])
        assert "pip install" not in script, f"{name} must not pip-install at run time (kfp is in the image)"
        assert "from pipeline import steps" in script, name


def test_train_step_resources_shm_and_retries(default_package):
    spec, platform = default_package
    resources = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == "12"
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == "96Gi"
    assert platform["exec-train"]["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "32Gi", "volumeName": "dshm"}]
    retry = spec["root"]["dag"]["tasks"]["train"]["retryPolicy"]
    assert retry["maxRetryCount"] == 3 and retry["backoffDuration"] == "120s"
    train_inputs = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert train_inputs["nproc"] == {"componentInputParameter": "gpus_per_node"}  # torchrun over the pod's GPUs
    assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus_per_node']}}"
    # the judge and evaluation get one GPU each; prepare and register none
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-train-judge", "exec-evaluate"):
        assert executors[name]["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    for name in ("exec-prepare", "exec-register"):
        assert "accelerator" not in executors[name]["container"]["resources"]


def test_caching_is_set_per_step(default_package):
    spec, _ = default_package
    tasks = all_tasks(spec)
    cached = {name: task.get("cachingOptions", {}).get("enableCache", False) for name, task in tasks.items()
              if "componentRef" in task and not name.startswith("condition")}
    assert cached == {"configure": True, "prepare": True, "train-judge": True, "train": False, "evaluate": False,
                      "register": False}


def task_setup(package: tuple[dict, dict], task: str) -> dict:
    """Everything the cluster sees of one task: its caching and retries, its container's resources, and
    its Kubernetes settings (volumes, /dev/shm, secrets)."""
    spec, platform = package
    executor = f"exec-{task}"
    entry = spec["root"]["dag"]["tasks"][task]
    return {"caching": entry.get("cachingOptions"), "retry": entry.get("retryPolicy"),
            "resources": spec["deploymentSpec"]["executors"][executor]["container"]["resources"],
            "kubernetes": platform.get(executor)}


@pytest.mark.parametrize("flags", [("--gpus", "4", "--cpu", "12", "--memory", "96Gi", "--shared-pvc", "dagan-shared"),
                                   ("--gpus", "0", "--shm-size", "2Gi")])
def test_the_sweep_pipeline_shares_the_main_pipelines_task_setup(tmp_path, flags):
    main = compile_to(tmp_path, *flags)
    sweep = compile_to(tmp_path, *flags, cli=tune_pipeline)
    for task in ("prepare", "train-judge"):  # one builder: pipeline.tasks.prepare_and_judge
        assert task_setup(sweep, task) == task_setup(main, task), task
    prepare = task_setup(main, "prepare")
    assert prepare["resources"]["resourceCpuLimit"] == "4" and prepare["caching"] == {"enableCache": True}
    # the tune pod is the train pod (pipeline.tasks.with_train_pod), GPUs fixed at compile time instead of per run
    train, tune = task_setup(main, "train"), task_setup(sweep, "tune")
    gpus = flags[flags.index("--gpus") + 1]
    train_gpus, tune_gpus = train["resources"].pop("accelerator", {}), tune["resources"].pop("accelerator", {})
    assert tune_gpus.get("resourceCount") == (gpus if gpus != "0" else None)
    assert train_gpus.get("resourceCount") == (
        "{{$.inputs.parameters['pipelinechannel--gpus_per_node']}}" if gpus != "0" else None)
    assert tune["resources"] == train["resources"] and tune["kubernetes"] == train["kubernetes"]


def test_secrets_reach_only_the_steps_that_talk_to_mlflow(default_package):
    _, platform = default_package

    def env_from_secrets(executor: str) -> dict[str, tuple[str, bool]]:
        return {item["envVar"]: (entry["secretName"], entry["optional"])
                for entry in platform.get(executor, {}).get("secretAsEnv", []) for item in entry["keyToEnv"]}

    for executor in ("exec-train", "exec-evaluate", "exec-register"):
        env = env_from_secrets(executor)
        assert env["MLFLOW_TRACKING_URI"] == ("dagan-mlflow", False), executor
        assert env["AWS_ACCESS_KEY_ID"] == ("dagan-s3", False), executor
        assert env["AWS_SECRET_ACCESS_KEY"] == ("dagan-s3", False), executor
        assert env["MLFLOW_S3_ENDPOINT_URL"] == ("dagan-s3", True), executor
    for executor in ("exec-configure", "exec-prepare", "exec-train-judge"):
        assert env_from_secrets(executor) == {}, executor


def test_secret_names_are_configurable(tmp_path):
    _, platform = compile_to(tmp_path, "--mlflow-secret", "team-mlflow", "--s3-secret", "team-minio")
    names = {entry["secretName"] for entry in platform["exec-register"]["secretAsEnv"]}
    assert names == {"team-mlflow", "team-minio"}


def test_trainjob_variant_launches_on_the_shared_volume(tmp_path):
    spec, platform = compile_to(tmp_path, "--trainjob", "--shared-pvc", "dagan-shared", "--gpus", "8")
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["num_nodes"]["defaultValue"] == 2 and parameters["gpus_per_node"]["defaultValue"] == 8
    root = spec["root"]["dag"]["tasks"]
    assert "train-distributed" in root and "train" not in root
    launcher = spec["deploymentSpec"]["executors"]["exec-train-distributed"]["container"]["resources"]
    assert "accelerator" not in launcher, "the launcher only waits; the TrainJob's nodes hold the GPUs"
    assert platform["exec-train-distributed"]["pvcMount"][0]["mountPath"] == "/mnt/shared"
    assert platform["exec-train-distributed"]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == \
        "dagan-shared"
    inputs = root["train-distributed"]["inputs"]["parameters"]
    secret_env = inputs["secret_env"]["runtimeValue"]["constant"]
    assert {item["env"] for item in secret_env} >= {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(set(item) == {"env", "secret", "key", "optional"} for item in secret_env), "references, never values"
    assert inputs["image"]["runtimeValue"]["constant"] == IMAGE
    assert inputs["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"  # also the MLflow tag kfp.run_id
    assert inputs["gpus_per_node"] == {"componentInputParameter": "gpus_per_node"}
    assert root["train-distributed"]["retryPolicy"]["maxRetryCount"] == 2


def test_trainjob_without_a_shared_volume_is_refused(tmp_path, capsys):
    output = tmp_path / "p.yaml"
    output.write_text("earlier package\n")
    assert compile_cli.main(["--output", str(output), "--trainjob"]) == 2
    assert "--shared-pvc" in capsys.readouterr().err
    assert output.read_text() == "earlier package\n"


def test_a_failed_compile_leaves_the_earlier_package_untouched(tmp_path, monkeypatch):
    output = tmp_path / "p.yaml"
    output.write_text("earlier package\n")

    def broken_compile(self, pipeline_func, package_path):
        Path(package_path).write_text("half a pipeline")
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(compile_cli.compiler.Compiler, "compile", broken_compile)
    with pytest.raises(RuntimeError, match="compiler crashed"):
        compile_cli.main(["--output", str(output)])
    assert output.read_text() == "earlier package\n"
    assert [path.name for path in tmp_path.iterdir()] == ["p.yaml"], "no staging file left behind"


def test_an_output_kfp_cannot_write_is_one_line_naming_it(tmp_path, capsys):
    assert compile_cli.main(["--output", str(tmp_path / "pipeline.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'pipeline.txt'}: a pipeline package is a .yaml file" in err
    assert f"--output {tmp_path / 'pipeline.yaml'}" in err and ".tmp-" not in err
    assert list(tmp_path.iterdir()) == []
