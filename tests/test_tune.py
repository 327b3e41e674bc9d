"""Ray Tune sweeps: a real 2-trial sweep on CPU against a real `mlflow server`, its trials stored on a
real S3 endpoint (moto), --resume; the checks that stop a bad sweep before Ray starts; the Kubeflow sweep pipeline."""

import json
import re
import shlex
import tempfile
from pathlib import Path

import pytest
import torch
from eval_fixtures import NUM_CLASSES, tiny_config, write_params, write_prepared
from mlflow import MlflowClient
from mlflow_fixtures import MlflowServer

from components.search_space import parse_search_space
from components.settings import load_step_config
from components.tune import check_tracking_uri, gpus_per_trial
from dagan.checkpoint import load_checkpoint
from dagan.config import ConfigError
from dagan.eval.judge import SegmentationNet, save_judge
from dagan.eval.judge_probe import JudgeProbe

SPACE = {"loss": {"lambda_feat": {"type": "loguniform", "low": 1.0, "high": 30.0}},
         "model": {"variant": {"type": "choice", "values": ["B1", "B6"]},
                   "generator": {"type": "choice", "values": ["dagan", "ccfpse"]}}}


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def sweep_params(root: Path, **tune) -> Path:
    config = tiny_config(
        root, judge={"epochs": 3},
        train={"batch_size": 4, "log_every": 1, "sample_every": 2},
        tune={"search_space": SPACE, "num_samples": 2, "max_steps": 4, "eval_every": 2, "eval_batches": 1,
              "grace_period": 2, "reduction_factor": 2, "cpus_per_trial": 1, "num_cpus": 2, "name": "sweep",
              "storage_path": str(root / "ray"), "out_dir": str(root / "tune"), **tune})
    return write_params(config, root)


@pytest.fixture
def s3_endpoint(monkeypatch):
    """A real S3 API (moto server on 127.0.0.1, ephemeral port) with a bucket for the sweep's storage."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint)):
        monkeypatch.setenv(name, value)  # Ray's workers inherit them from this process
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="sweeps")
    try:
        yield s3
    finally:
        server.stop()


def _trial_errors(s3) -> list[str]:
    """The tracebacks Ray stored for failed trials (error.txt in the sweep's storage), to show why one failed."""
    listing = s3.list_objects_v2(Bucket="sweeps", Prefix="tune/").get("Contents", [])
    return [s3.get_object(Bucket="sweeps", Key=item["Key"])["Body"].read().decode(errors="replace")
            for item in listing if item["Key"].endswith("error.txt")]


def test_two_trial_sweep_logs_parent_and_nested_runs_and_writes_the_best_params(tmp_path, mlflow_server, s3_endpoint,
                                                                                 monkeypatch, capfd):
    from components.tune import main as tune

    scratch = tmp_path / "scratch"  # the trials' training folders go under tempfile's folder
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a local Ray writes its auth token to ~/.ray/auth_token
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what a local ray.init sets itself; removed again after the test
    # Ray's memory monitor kills trials when the whole machine's memory is 95 % used, whoever uses it
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "0")
    write_prepared(tmp_path / "prepared")  # 16 train / 8 val scenes at 32x32
    params = sweep_params(tmp_path, storage_path="s3://sweeps/tune")
    save_judge(tmp_path / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), load_step_config(params),
               NUM_CLASSES)  # an untrained tiny judge: the sweep needs its scores, not good ones
    url = mlflow_server.url()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # Ray's workers inherit it

    assert tune(["--params", str(params)]) == 0
    printed = capfd.readouterr()
    problems = [line for line in (printed.out + printed.err).splitlines()
                if re.search(r"\bERROR\b", line) or "Fatal Python error" in line or "Traceback" in line]
    assert not problems, "\n".join(problems[:20] + _trial_errors(s3_endpoint))  # a clean sweep logs no error
    assert _trial_errors(s3_endpoint) == []  # nor did any trial store one

    client = MlflowClient(url)
    parent_id = json.loads((tmp_path / "tune" / "mlflow_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["tune.swept"] == "loss.lambda_feat,model.variant,model.generator"
    experiment = parent.info.experiment_id
    assert client.get_experiment(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["mlflow.note.content"].startswith("Ray Tune sweep sweep: 2 trials")
    assert parent.data.params["tune.max_steps"] == "4" and "model.variant" not in parent.data.params
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(trials) == 2
    assert len({run.data.tags["ray.trial_id"] for run in trials}) == 2
    for run in trials:
        assert run.info.status in ("FINISHED", "KILLED")
        assert 1.0 <= float(run.data.params["loss.lambda_feat"]) <= 30.0
        assert run.data.params["model.variant"] in ("B1", "B6")
        assert run.data.params["model.generator"] == run.data.tags["generator"] in ("dagan", "ccfpse")
        assert run.data.params["train.total_steps"] == "4"  # the sweep's step budget, not the params file's
        assert "train.max_steps" not in run.data.params and "judge.width" not in run.data.params
        assert run.info.run_name.startswith("run_trial_"), "trials keep Ray's names"
        assert run.data.tags["mlflow.note.content"].startswith("Ray Tune trial run_trial_")
        assert run.data.tags["mlflow.source.git.commit"] == parent.data.tags["mlflow.source.git.commit"]
        assert any(key.startswith("system/") for key in run.data.metrics), "trials record system metrics"
        assert [item.dataset.name for item in run.inputs.dataset_inputs] == ["synthetic-train"]
        history = client.get_metric_history(run.info.run_id, "eval/judge_miou")
        assert [point.step for point in history][:1] == [2] and all(0 <= p.value <= 1 for p in history)
        assert any(key.startswith("loss/") for key in run.data.metrics)  # the training logger's losses

        assert [p.value for p in client.get_metric_history(run.info.run_id, "tune/start_step")] == [0]
        assert run.data.tags["ray.node_id"]

    best = json.loads((tmp_path / "tune" / "best.json").read_text())
    # The default metric, the judge Fréchet distance (minimised); each trial counts with its best report.
    reports = {(run.data.tags["ray.trial_id"], point.step): point.value for run in trials
               for point in client.get_metric_history(run.info.run_id, "eval/fd_judge")}
    best_trial, best_step = min(reports, key=reports.get)
    assert best["metric"] == "fd_judge" and best["scope"] == "all"
    assert (best["trial_id"], best["step"]) == (best_trial, best_step)
    assert best["value"] == pytest.approx(reports[best_trial, best_step])
    best_run = client.get_run(best["mlflow_run_id"])
    assert best_run.data.tags["ray.trial_id"] == best["trial_id"]
    assert best["checkpoint"].startswith("s3://sweeps/tune/sweep/") and best_trial in best["checkpoint"]
    header = (tmp_path / "tune" / "best_params.yaml").read_text().split("\n", 3)
    assert best["trial_id"] in header[0] and best["mlflow_run_id"] in header[0] and best["checkpoint"] in header[1]
    parent = client.get_run(parent_id)
    assert parent.data.metrics["best_fd_judge"] == pytest.approx(best["value"])
    assert parent.data.metrics["num_trials"] == 2
    assert parent.data.tags["best.model.variant"] == best_run.data.params["model.variant"]

    tuned = load_step_config(tmp_path / "tune" / "best_params.yaml")
    assert tuned.model.variant == best_run.data.params["model.variant"]
    assert tuned.loss.lambda_feat == pytest.approx(float(best_run.data.params["loss.lambda_feat"]))
    assert tuned.train.max_steps == 0 and tuned.train.out_dir == str(tmp_path / "train")  # sweep keys not leaked
    assert tuned.model.generator == best_run.data.params["model.generator"]
    assert best["set_args"] == [f"loss.lambda_feat={tuned.loss.lambda_feat}", f"model.variant={tuned.model.variant}",
                                f"model.generator={tuned.model.generator}"]
    artifacts = {item.path for item in client.list_artifacts(parent_id)}
    assert {"best_params.yaml", "best.json", "results.csv"} <= artifacts

    keys = [item["Key"] for item in s3_endpoint.list_objects_v2(Bucket="sweeps", Prefix="tune/sweep/")["Contents"]]
    stored = sorted(key for key in keys if key.endswith("/dagan.pt") and "/checkpoint_" in key)
    assert stored, f"Ray Tune stored no trial checkpoint on S3: {keys}"
    assert not [key for key in keys if key.endswith(".pt") and "/checkpoint_" not in key]  # no training files
    assert list(scratch.iterdir()) == []  # the trials' scratch folders are gone
    best_key = best["checkpoint"][len("s3://sweeps/"):] + "/dagan.pt"
    assert best_key in stored  # the best report's checkpoint is kept (checkpoints are kept by score)
    s3_endpoint.download_file("sweeps", best_key, str(tmp_path / "stored.pt"))
    assert load_checkpoint(tmp_path / "stored.pt")["step"] == best["step"]
    assert not (tmp_path / "ray").exists()

    # The same sweep again is refused (before any run is created); --resume restores it (Tuner.restore):
    # its trials are done, so nothing reruns and the parent run stays the same.
    assert tune(["--params", str(params)]) == 2
    assert tune(["--params", str(params), "--resume"]) == 0
    printed = capfd.readouterr()
    assert not [line for line in (printed.out + printed.err).splitlines() if re.search(r"\bERROR\b", line)]
    assert json.loads((tmp_path / "tune" / "mlflow_run.json").read_text())["run_id"] == parent_id
    assert len(client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")) == 2
    assert len(client.search_runs([experiment])) == 3
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert json.loads((tmp_path / "tune" / "best.json").read_text())["trial_id"] == best["trial_id"]


def trial_result(root: Path, trial_id: str, fd_judge: list[float], error: Exception | None = None):
    """A real ray.tune.Result of a trial that reported ``fd_judge`` at steps 2, 4, ... with a checkpoint each."""
    import pandas as pd
    from ray import tune

    reports = [{"trial_id": trial_id, "step": 2 * (i + 1), "fd_judge": value, "judge_miou": 0.5}
               for i, value in enumerate(fd_judge)]
    checkpoints = []
    for report in reports:
        folder = root / trial_id / f"checkpoint_{report['step']:06d}"
        folder.mkdir(parents=True)
        checkpoints.append((tune.Checkpoint.from_directory(str(folder)), report))
    metrics = {**(reports[-1] if reports else {}), "config": {"loss.lambda_feat": 1.0}}
    return tune.Result(metrics=metrics, checkpoint=None, error=error,
                       path=str(root / trial_id), metrics_dataframe=pd.DataFrame(reports) if reports else None,
                       best_checkpoints=checkpoints)


def test_the_best_trial_is_the_one_with_the_best_report_not_the_best_last_report(tmp_path):
    from components.tune_results import pick_best, trial_rows
    from components.tune_storage import resolve_storage

    # a: its best report (0.3 at step 4) beats everything, but its last one (0.9) is the worst of the last ones
    results = [trial_result(tmp_path, "a", [0.8, 0.3, 0.9]), trial_result(tmp_path, "b", [0.7, 0.5, 0.6]),
               trial_result(tmp_path, "c", [], error=RuntimeError("lost"))]
    opts = load_step_config(sweep_params(tmp_path, max_steps=6)).tune
    rows = trial_rows(results, {}, opts, ["loss.lambda_feat"], resolve_storage(str(tmp_path / "ray"), "sweep"))
    assert [(row["trial_id"], row["status"], row["step"], row["best_step"], row["best_fd_judge"]) for row in rows] == [
        ("a", "finished", 6, 4, 0.3), ("b", "finished", 6, 4, 0.5), ("c", "error", 0, "", "")]
    best = pick_best(rows, "fd_judge")
    assert best is not None and best["trial_id"] == "a"
    assert best["best_checkpoint"] == str(tmp_path / "a" / "checkpoint_000004")  # the checkpoint of that report
    assert pick_best(rows[2:], "fd_judge") is None


def test_sqlite_tracking_store_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    from components.tune import main as tune

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = sweep_params(tmp_path)
    assert tune(["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "needs a tracking server" in err and "sqlite:///" in err and "mlflow server" in err
    assert not (tmp_path / "ray").exists()
    with pytest.raises(ConfigError, match="tracking server"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    check_tracking_uri("http://127.0.0.1:5001")


@pytest.mark.parametrize(("case", "message"), [
    ("unknown key", "tune.search_space.loss.lambda_fet: unknown key loss.lambda_fet; the keys of loss are"),
    ("empty space", "tune.search_space is empty"),
    ("storage under a file", "tune.storage_path="),
    ("storage in a missing bucket", "tune.storage_path=s3://no-such-bucket/tune: cannot write"),
    ("address nobody answers", "nothing answers at 127.0.0.1:"),
])
def test_bad_input_stops_with_one_line_before_any_trial(tmp_path, monkeypatch, capfd, case, message):
    """One ``error:`` line naming the value and the fix, exit 2, no traceback, nothing written or started (the
    tracking server's address answers nothing: the sweep never got as far as creating its parent run)."""
    from components.tune import main as tune

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    write_prepared(tmp_path / "prepared", {"train": 4, "val": 4})
    tune_options: dict = {"storage_path": str(tmp_path / "ray")}
    argv = []
    if case == "unknown key":
        tune_options["search_space"] = {"loss": {"lambda_fet": {"type": "loguniform", "low": 1.0, "high": 3.0}}}
    elif case == "empty space":
        tune_options["search_space"] = {"model": {}}
    elif case == "storage under a file":
        (tmp_path / "a-file").write_text("")
        tune_options["storage_path"] = str(tmp_path / "a-file" / "ray")
        message += str(tmp_path / "a-file" / "ray")
    elif case == "storage in a missing bucket":
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        host, port = server.get_host_and_port()
        for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                            ("AWS_ENDPOINT_URL", f"http://{host}:{port}")):
            monkeypatch.setenv(name, value)
        tune_options["storage_path"] = "s3://no-such-bucket/tune"
    else:
        from mlflow_fixtures import free_port

        argv = ["--address", f"127.0.0.1:{free_port()}"]
    params = sweep_params(tmp_path, **tune_options)
    save_judge(tmp_path / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), load_step_config(params),
               NUM_CLASSES)
    try:
        assert tune(["--params", str(params), *argv]) == 2
    finally:
        if case == "storage in a missing bucket":
            server.stop()
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert str(params) in errors[0] or case not in ("unknown key", "empty space")  # the file, for the space
    assert "Traceback" not in err
    assert not (tmp_path / "tune").exists()  # no outputs, no parent run record


def test_an_explicit_gpu_request_without_a_gpu_is_an_error():
    assert gpus_per_trial(None, 0) == 0 and gpus_per_trial(None, 2) == 1 and gpus_per_trial(0.5, 1) == 0.5
    with pytest.raises(ConfigError, match="tune.gpus_per_trial=1.0 but the Ray cluster has no GPU"):
        gpus_per_trial(1.0, 0)


@pytest.mark.parametrize(("space", "message"), [
    ({"loss": {"lambda_fet": {"type": "loguniform", "low": 1, "high": 3}}}, "unknown key"),
    ({"model": {"variant": {"type": "choice", "values": ["B1", "B9"]}}}, "'B9' is not a valid value"),
    ({"loss": {"lambda_feat": {"type": "loguniform", "low": 0, "high": 3}}}, "needs low > 0"),
    ({"loss": {"lambda_feat": {"type": "uniform", "low": 3, "high": 1}}}, "must be below"),
    ({"loss": {"lambda_feat": {"type": "normal", "mean": 3}}}, "type: loguniform"),
    ({"model": {"ngf": {"type": "uniform", "low": 8, "high": 16}}}, "expected int"),
    ({"train": {"max_steps": {"type": "choice", "values": [1, 2]}}}, "sets train.max_steps itself"),
    ({"model": {}}, "search_space is empty"),
    ({"model": {"generator": {"type": "choice", "values": ["dagan", "ca2sis"]},
                "spap": {"type": "choice", "values": ["off", "generator"]}}},
     "the combination model.generator='ca2sis', model.spap='generator' is not a valid config"),
])
def test_bad_search_spaces_stop_with_the_key_and_the_fix(space, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_search_space(space, {}, "params.yaml")
    assert str(caught.value).startswith("params.yaml")


def test_generator_and_discriminator_are_sweepable_choices():
    space = {"model": {"generator": {"type": "choice", "values": ["dagan", "ccfpse"]},
                       "discriminator": {"type": "choice", "values": ["multiscale", "fpse"]}}}
    assert [(d.key, d.values) for d in parse_search_space(space, {}, "params.yaml")] == [
        ("model.generator", ("dagan", "ccfpse")), ("model.discriminator", ("multiscale", "fpse"))]
    with pytest.raises(ConfigError, match="'gaugan' is not a valid value"):
        parse_search_space({"model": {"generator": {"type": "choice", "values": ["gaugan"]}}}, {}, "params.yaml")
def test_the_sweep_can_pick_attention_families():
    space = {"model": {"generator": {"type": "choice", "values": ["dagan", "ca2sis"]},
                       "spap": {"type": "choice", "values": ["off", "discriminator"]},
                       "spap_order": {"type": "choice", "values": ["coarse_to_fine", "fine_to_coarse"]}},
             "loss": {"lambda_att": {"type": "loguniform", "low": 0.1, "high": 10.0}}}
    keys = [dimension.key for dimension in parse_search_space(space, {}, "params.yaml")]
    assert keys == ["model.generator", "model.spap", "model.spap_order", "loss.lambda_att"]


def test_judge_probe_scores_a_generator_and_restores_its_mode():
    torch.manual_seed(0)
    label = torch.randint(0, NUM_CLASSES, (4, 16, 16))
    batches = [{"label": label, "image": torch.rand(4, 3, 16, 16) * 2 - 1}]
    judge = SegmentationNet(3, NUM_CLASSES, width=4, levels=2)
    probe = JudgeProbe(judge, batches, num_classes=NUM_CLASSES, num_label_channels=NUM_CLASSES,
                       device=torch.device("cpu"))
    generator = torch.nn.Sequential(torch.nn.Conv2d(NUM_CLASSES, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.Tanh())
    generator.train()
    scores = probe(generator)
    assert generator.training
    assert set(scores) == {"judge_miou", "judge_accuracy", "fd_judge"}
    assert 0 <= scores["judge_miou"] <= 1 and 0 <= scores["judge_accuracy"] <= 1 and scores["fd_judge"] >= 0
    assert probe(generator) == scores  # the same batches every time: comparable across trials


def test_the_sweep_pipeline_compiles_with_secrets_resources_and_no_cache(tmp_path):
    import yaml

    from pipeline import tune_pipeline

    output = tmp_path / "dagan-tune.yaml"
    assert tune_pipeline.main(["--output", str(output), "--image", "registry.example.com/dagan:1.2.3",
                               "--gpus", "2", "--cpu", "12", "--memory", "96Gi"]) == 0
    spec, platform = yaml.safe_load_all(output.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare", "train-judge", "tune"}
    assert set(tasks["tune"]["dependentTasks"]) == {"prepare", "train-judge"}
    assert not tasks["tune"]["cachingOptions"].get("enableCache")  # it writes to MLflow and storage
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {
        "params_file", "overrides", "storage", "num_samples", "resume"}
    assert tasks["tune"]["inputs"]["parameters"]["ray_dashboard"]["runtimeValue"]["constant"] == ""  # Ray in the pod
    container = spec["deploymentSpec"]["executors"]["exec-tune"]["container"]
    assert container["image"] == "registry.example.com/dagan:1.2.3"
    assert container["resources"]["accelerator"]["resourceCount"] == "2"
    assert container["resources"]["resourceCpuLimit"] == "12"
    assert "steps.run_component(\"tune\", steps.tune_argv(" in container["command"][-1]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-tune"]["secretAsEnv"]
    env = {item["envVar"] for secret in secrets for item in secret["keyToEnv"]}
    assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= env
    outputs = spec["components"]["comp-tune"]["outputDefinitions"]["artifacts"]
    assert {name: value["artifactType"]["schemaTitle"] for name, value in outputs.items()} == {
        "sweep": "system.Artifact", "metrics": "system.Metrics", "report": "system.Markdown"}
    with pytest.raises(SystemExit):  # the sweep has no TrainJob mode
        tune_pipeline.main(["--output", str(tmp_path / "x.yaml"), "--shared-pvc", "data", "--trainjob"])
    assert not (tmp_path / "x.yaml").exists()


DOCS = Path(__file__).resolve().parents[1] / "docs" / "TUNE.md"


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S)


def documented_commands(prefix: str) -> list[str]:
    """The docs' shell lines starting with ``prefix`` (continued lines joined)."""
    lines = [line for block in fenced("bash") for line in block.replace("\\\n", " ").splitlines()]
    return [line.strip() for line in lines if line.strip().startswith(prefix)]


def test_the_documented_kubeflow_sweep_pipelines_compile_as_written(tmp_path):
    """Both compile commands of docs/TUNE.md; the Ray-job mode's tune pod is a light client with the token."""
    import yaml

    from pipeline import tune_pipeline

    commands = documented_commands("python -m pipeline.tune_pipeline")
    assert len(commands) == 2
    packages = []
    for number, command in enumerate(commands):
        argv = shlex.split(command)[3:]
        argv[argv.index("--output") + 1] = str(tmp_path / f"{number}.yaml")
        assert tune_pipeline.main(argv) == 0
        packages.append(list(yaml.safe_load_all((tmp_path / f"{number}.yaml").read_text())))
    spec, platform = packages[1]
    tune_task = spec["root"]["dag"]["tasks"]["tune"]["inputs"]["parameters"]
    assert tune_task["ray_dashboard"]["runtimeValue"]["constant"] == "http://dagan-raycluster-head-svc:8265"
    assert tune_task["work_root"]["runtimeValue"]["constant"] == "/mnt/shared/dagan-runs"
    container = spec["deploymentSpec"]["executors"]["exec-tune"]["container"]
    assert container["resources"]["resourceCpuLimit"] == "1" and "accelerator" not in container["resources"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-tune"]
    assert [(item["secretName"], item["keyToEnv"]) for item in kubernetes["secretAsEnv"]] == [
        ("dagan-ray-token", [{"secretKey": "auth_token", "envVar": "RAY_AUTH_TOKEN"}])]  # no MLflow or S3 secret
    assert kubernetes["pvcMount"][0]["mountPath"] == "/mnt/shared"
    argv = shlex.split(commands[1])[3:]
    argv[argv.index("--output") + 1] = str(tmp_path / "x.yaml")
    without_volume = argv[:argv.index("--shared-pvc")] + argv[argv.index("--shared-pvc") + 2:]
    assert tune_pipeline.main(without_volume) == 2  # the data goes through the volume
    assert tune_pipeline.main(argv[:argv.index("--ray-cluster")] + argv[argv.index("--ray-secret"):]) == 2
    assert not (tmp_path / "x.yaml").exists()


def test_the_ray_job_step_refuses_credentials_in_overrides_before_it_copies_or_submits(tmp_path):
    from pipeline import steps

    with pytest.raises(ValueError, match="mlflow.tracking_uri=... holds user:password@"):
        steps.tune_on_cluster("params.yaml", ["mlflow.tracking_uri=http://me:secret@mlflow:5000"], "p", "j",
                              str(tmp_path / "sweep"), storage="", num_samples=0, resume=False,
                              dashboard_url="http://127.0.0.1:1", work_dir=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def kuberay_manifests() -> dict[str, dict]:
    import yaml

    manifests = [yaml.safe_load(block) for block in fenced("yaml")]
    return {manifest["kind"]: manifest for manifest in manifests if isinstance(manifest, dict) and "kind" in manifest}


def test_the_kuberay_manifests_run_the_project_image_with_the_secrets_and_the_documented_command():
    import ray

    from components.tune import build_parser
    from pipeline.ray_job import tune_entrypoint
    from pipeline.tasks import ClusterSettings

    manifests = kuberay_manifests()
    cluster, job = manifests["RayCluster"], manifests["RayJob"]
    name, settings = cluster["metadata"]["name"], ClusterSettings()
    assert cluster["spec"]["rayVersion"] == ray.__version__
    head, workers = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, no trial
    pods = [head["template"], *[group["template"] for group in workers]]
    token = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "dagan-ray-token", "key": "auth_token"}}}
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "REGISTRY/dagan:TAG"
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"] and token in container["env"]
        assert [ref["secretRef"]["name"] for ref in container["envFrom"]] == [settings.mlflow_secret,
                                                                               settings.s3_secret]
        assert {"name": "shared", "mountPath": settings.shared_mount} in container["volumeMounts"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": "dagan-shared"}} in pod["spec"]["volumes"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
    for group in workers:
        resources = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert group["rayStartParams"]["num-cpus"] == resources["cpu"]  # Ray offers the pod's CPUs and GPU
        assert group["rayStartParams"]["num-gpus"] == resources["nvidia.com/gpu"]

    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": name}
    (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert submitter["image"] == "REGISTRY/dagan:TAG" and token in submitter["env"]
    (submit,) = documented_commands("ray job submit")
    assert submit.split(" -- ", 1)[1] == job["spec"]["entrypoint"]  # the same command both ways
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", "components.tune"] and entrypoint[-2:] == ["--address", "auto"]
    assert tune_entrypoint(entrypoint[3:-2]) == job["spec"]["entrypoint"]  # what the Kubeflow step submits
    args = build_parser().parse_args(entrypoint[3:])
    assert args.address == "auto" and args.storage.startswith("s3://")
    paths = dict(item.split("=", 1) for item in args.overrides)
    assert all(path.startswith(settings.shared_mount + "/") for path in paths.values())  # on the shared volume

    kubectl = [line for line in documented_commands("kubectl") + documented_commands("export RAY_AUTH_MODE")]
    assert kubectl and not any("deploy/" in line for line in kubectl)  # KubeRay creates pods, not Deployments
    assert any(f"svc/{name}-head-svc 8265:8265" in line for line in kubectl)
    assert any(f"-l ray.io/cluster={name},ray.io/node-type=head" in line for line in kubectl)
    assert any("get secret dagan-ray-token" in line for line in kubectl)


def test_the_documented_search_space_is_the_one_in_params_yaml():
    root = Path(__file__).resolve().parents[1]
    block = fenced("yaml")[0]
    assert block in (root / "params.yaml").read_text()  # character for character, comments too


def test_the_documented_search_algorithm_table_is_the_bench_result():
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))  # bench/ is scripts at the repo root, not installed
    from bench.tune_search import markdown_table

    result = json.loads((root / "bench" / "results" / "tune_search.json").read_text())
    assert result["summary"]["seeds"] == [0, 1, 2]  # the decision is measured over three seeds
    assert markdown_table(result) in DOCS.read_text()


def test_optuna_needs_a_concurrency_limit_and_gives_a_seeded_tpe(tmp_path):
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from components.tune import search_algorithm

    with pytest.raises(ConfigError, match="tune.search_alg=optuna .* set tune.max_concurrent_trials >= 1"):
        load_step_config(sweep_params(tmp_path, search_alg="optuna", max_concurrent_trials=0))
    opts = load_step_config(sweep_params(tmp_path, search_alg="optuna", max_concurrent_trials=2, seed=3)).tune
    assert isinstance(search_algorithm(opts), OptunaSearch)
    assert isinstance(search_algorithm(load_step_config(sweep_params(tmp_path)).tune), BasicVariantGenerator)
