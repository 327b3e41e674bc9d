"""components.train against a real ``mlflow server`` on loopback whose artifact store is a real S3
endpoint (moto server): params, metrics, images, the config artifact, tags, SIGTERM and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer
from train_fixtures import tiny_settings, write_prepared

REPO = Path(__file__).resolve().parents[1]
BUCKET = "mlflow-artifacts"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def tracking(tmp_path):
    """(tracking URI, S3 endpoint): mlflow server -> --artifacts-destination s3:// on a moto server."""
    s3_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3_server.start()
    host, port = s3_server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"},
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    mlflow_port = _free_port()
    env = {**os.environ, **AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow server exited: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not answer /health within 120 s")
        yield uri, endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)
        s3_server.stop()


def test_training_logs_to_mlflow_server_with_s3_artifacts_and_survives_sigterm(tmp_path, tracking):
    import mlflow

    uri, endpoint = tracking
    prepared = write_prepared(tmp_path / "prepared", num_train=8)
    out_dir = tmp_path / "out"
    params = tmp_path / "params.yaml"
    settings = tiny_settings(prepared, out_dir, max_steps=400, checkpoint_every=2, sample_every=2)
    settings["mlflow"] = {"tracking_uri": "sqlite:///must-not-be-used.db", "experiment": "train-test"}
    params.write_text(yaml.safe_dump(settings))
    env = {**os.environ, **AWS, "MLFLOW_TRACKING_URI": uri, "MLFLOW_S3_ENDPOINT_URL": endpoint,
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    command = [sys.executable, "-m", "components.train", "--params", str(params)]

    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not (out_dir / "checkpoints" / "step-00000002.pt").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output
    assert "stopped at step" in output and "SIGTERM" in output
    stopped = json.loads((out_dir / "metrics.json").read_text())
    assert stopped["stopped_early"] is True and stopped["steps"] >= 2
    assert (out_dir / "checkpoints" / f"step-{stopped['steps']:08d}.pt").is_file()

    finish = stopped["steps"] + 2
    second = subprocess.run(command + ["-S", f"train.max_steps={finish}"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed from {out_dir / 'checkpoints'}" in second.stderr
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["steps"] == finish and metrics["stopped_early"] is False and metrics["images_per_second"] > 0

    run_info = json.loads((out_dir / "mlflow_run.json").read_text())
    assert run_info["tracking_uri"] == uri
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_info["run_id"])  # one run across the preemption
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.ngf"] == "8" and params["train.total_steps"] == "8"  # 4 steps per epoch x 2, not 400
    assert params["model.use_sam"] == "True" and params["model.cam"] == "II"  # B6, resolved
    assert params["train.device"] == "cpu" and params["train.processes"] == "1"
    assert {key.split(".")[0] for key in params} == {"dataset", "model", "loss", "train"}
    assert not {"train.max_steps", "train.out_dir", "mlflow.tracking_uri", "judge.width"} & set(params)
    tags = run.data.tags
    assert tags["tracking_uri"] == uri and tags["out_dir"] == str(out_dir) and tags["evaluated"] == "no"
    assert tags["variant"] == "B6" and len(tags["data_sha256"]) == 64
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit
    assert run.info.run_name == f"B6-synthetic-8steps-{commit[:7]}"
    assert tags["mlflow.note.content"].startswith("DAGAN B6 (SAM + CAM-II) on synthetic: 8 training images at 32x32")
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "synthetic-train"  # the split: the evaluation's input is synthetic-val
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 8
    assert {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"] == "training"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    history = client.get_metric_history(run.info.run_id, "loss/g_total")
    assert sorted(m.step for m in history) == list(range(1, finish + 1))  # every step once across the preemption
    _assert_kept_checkpoints_are_logged_models(client, uri, run, out_dir)
    for key in ("loss/d_real", "loss/d_fake", "loss/g_feat", "lr/g", "lr/d", "perf/seconds_per_step",
                "perf/images_per_second"):
        assert key in run.data.metrics
    assert any(key.startswith("system/") for key in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples", "images"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/latest.png"]
    keyed = {a.path.split("+step+")[1].split("+")[0] for a in client.list_artifacts(run.info.run_id, "images")
             if a.path.startswith("images/samples+step+") and a.path.endswith(".png")}
    assert {"2", "4"} <= keyed  # log_image(key="samples", step=...)
    losses = (out_dir / "losses.tsv").read_text().splitlines()
    assert losses[0].startswith("step\tg_total\tg_gan") and [row.split("\t")[0] for row in losses[1:]] == \
        [str(step) for step in range(1, finish + 1)]  # one row per logged step across the preemption
    assert (out_dir / "samples" / "latest.png").is_file()
    config_file = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config_file).read_text())["model"]["ngf"] == 8
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(key.endswith(f"{run.info.run_id}/artifacts/config.yaml") for key in keys)
    assert any(key.endswith(f"{run.info.run_id}/artifacts/samples/latest.png") for key in keys)


def _assert_kept_checkpoints_are_logged_models(client, uri: str, run, out_dir: Path) -> None:
    """Every kept checkpoint is a logged model of the run (checkpoint.json uploaded, the file stays local), with the
    losses of its step; train.keep_last's deleted checkpoints have none."""
    import mlflow
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus

    models = client.search_logged_models([run.info.experiment_id], filter_string=(
        f"source_run_id = '{run.info.run_id}' AND model_type = 'dagan-checkpoint'"), order_by=[
        {"field_name": "metrics.loss/g_total", "ascending": True}])
    kept = sorted(path.name for path in (out_dir / "checkpoints").glob("*.pt"))
    assert sorted(f"{model.name}.pt" for model in models) == kept and len(kept) == 3  # keep_last 2 + final.pt
    for model in models:
        assert model.status == LoggedModelStatus.READY
        assert model.tags["dagan.checkpoint"] == str(out_dir / "checkpoints" / f"{model.name}.pt")
        step = int(model.tags["dagan.step"])
        assert {metric.key: metric.step for metric in model.metrics}["loss/g_total"] == step
        assert [item.path for item in client.list_logged_model_artifacts(model.model_id)] == ["checkpoint.json"]
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)  # models:/ URIs are resolved against the current tracking URI
        try:
            folder = Path(download_artifacts(f"models:/{model.model_id}", dst_path=str(out_dir.parent / model.name)))
        finally:
            mlflow.set_tracking_uri(previous)
        record = json.loads((folder / "checkpoint.json").read_text())
        local = out_dir / "checkpoints" / f"{model.name}.pt"
        assert record == {"file": str(local), "sha256": model.tags["dagan.checkpoint_sha256"],
                          "bytes": local.stat().st_size, "step": step}
        assert hashlib.sha256(local.read_bytes()).hexdigest() == record["sha256"]
