"""Sweeps on a real two-node Ray cluster (tests/ray_cluster_fixtures.py), submitted as Ray jobs from
outside it, with token authentication, trials stored on a real S3 endpoint (moto server on
127.0.0.1) and tracked by a real ``mlflow server`` on 127.0.0.1.

- ``ray job submit`` as docs/TUNE.md writes it: trials land on both nodes; the worker node is
  killed while its trial runs; the trial is retried from its last checkpoint and the sweep finishes
  with no MLflow run left RUNNING.
- The Kubeflow tune step's code (``pipeline.steps.tune_on_cluster``, run as the step's process):
  the job's driver is killed, the step fails with the job; the step again with ``resume`` continues
  the sweep from S3: the finished trial is kept, the interrupted one resumes from its checkpoint.
- Meanwhile, a process without the cluster's token is refused with one line.

The cluster's pods get the MLflow and S3 settings from their own environment (as KubeRay pods get
them from secrets); the jobs are submitted with the token only. The test talks to the cluster
through subprocesses and the dashboard's HTTP API, never through an in-process Ray client: Ray
caches the auth token per process, and an earlier local Ray (tests/test_tune.py) would leave its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from eval_fixtures import NUM_CLASSES, tiny_config, write_params, write_prepared
from mlflow import MlflowClient
from mlflow_fixtures import MlflowServer
from ray_cluster_fixtures import BIN, RayCluster, kill, matching

from components.settings import load_step_config
from dagan.checkpoint import load_checkpoint
from dagan.eval.judge import SegmentationNet, save_judge

BUCKET = "sweeps"
SPACE = {"loss": {"lambda_feat": {"type": "loguniform", "low": 1.0, "high": 30.0}}}
WAIT_S = 600  # bound of every wait on a sweep: minutes on a loaded 2-core machine, seconds on an idle one


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Prepared data, a tiny judge, an mlflow server, a moto S3 server and the two-node Ray cluster."""
    from moto.server import ThreadedMotoServer

    root = tmp_path_factory.mktemp("cluster")
    server = MlflowServer(root)  # all three start in the background while the data is written
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    cluster = RayCluster({**os.environ, **aws, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.port}",
                          "OMP_NUM_THREADS": "1"})
    try:
        cluster.start_head()
        cluster.add_worker()  # it waits for the head's GCS by itself
        write_prepared(root / "prepared")  # 16 train / 8 val scenes at 32x32
        config = tiny_config(root, judge={"epochs": 1})
        save_judge(root / "judge" / "judge.pt", SegmentationNet(3, NUM_CLASSES, 8, 2), config, NUM_CLASSES)
        import boto3

        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket=BUCKET)
        url = server.url()
        cluster.wait_until_up(nodes=2)
        yield {"root": root, "url": url, "s3": s3, "cluster": cluster}
    finally:
        cluster.stop()
        kill(matching(str(root)))  # a job driver that outlived its head (none should)
        moto.stop()
        server.stop()


def sweep_params(root: Path, name: str, **tune) -> Path:
    """A params file for a sweep of 2 tiny trials, ``tune.max_steps`` steps each, evaluated every 2 steps."""
    folder = root / name
    folder.mkdir()
    config = tiny_config(root, judge={"epochs": 1},
                         train={"batch_size": 4, "epochs": 3, "log_every": 1, "sample_every": 100},  # 12 steps
                         tune={"search_space": SPACE, "num_samples": 2, "eval_every": 2, "eval_batches": 1,
                               "reduction_factor": 2, "cpus_per_trial": 1, "name": name, "out_dir": str(folder / "out"),
                               **tune})
    return write_params(config, folder)


def client_env(cluster: RayCluster, root: Path) -> dict[str, str]:
    """A process outside the cluster: the token, and nothing of the cluster's MLflow or S3 settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster.token, "HOME": str(root / "client-home"),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


@dataclass
class Background:
    """A command running in the background, its output going to ``log`` (a pipe nobody reads would block it)."""

    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], log: Path) -> Background:
        with log.open("w") as file:
            return cls(subprocess.Popen(command, env=env, stdout=file, stderr=subprocess.STDOUT), log)

    def output(self) -> str:
        """Wait (bounded) until it ends; what it printed."""
        self.process.wait(timeout=WAIT_S)
        return self.log.read_text(errors="replace")


def wait_for(condition, what: str, background: Background | None = None, poll_s: float = 0.3):
    """Poll ``condition()`` until it returns something truthy; fail after WAIT_S or when ``background`` ends."""
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        if background is not None and background.process.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{background.output()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll_s)
    return value


def stopped_when(cluster: RayCluster, condition, what: str, background: Background, poll_s: float = 1.0) -> list:
    """Wait until ``condition()`` holds, checking it while the cluster's trials are stopped (SIGSTOP), so that they
    cannot move on between the check and what the test does next. Returns the stopped trials: resume them after."""
    deadline = time.monotonic() + WAIT_S
    while True:
        trials = cluster.suspend_trials()
        try:
            holds = condition()
        except BaseException:
            cluster.resume(trials)
            raise
        if holds:
            assert trials, "no trial process found to stop (Ray titles them ray::ImplicitFunc...)"
            return trials
        cluster.resume(trials)
        if background.process.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{background.output()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll_s)


def still_running(client: MlflowClient, run_id: str) -> bool:
    """The trial's run is RUNNING; a finished one fails the test: it ended before the test could interrupt it."""
    status = client.get_run(run_id).info.status
    if status != "RUNNING":
        pytest.fail(f"the trial of run {run_id} ended ({status}) before the test could interrupt it")
    return True


def trial_runs(client: MlflowClient, parent_id: str):
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_of(client: MlflowClient, name: str):
    """The parent run of sweep ``name`` (tag ray.experiment), once the job's driver created it."""
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`ray.experiment` = '{name}'") if experiments else []
    return runs[0].info.run_id if runs else None


def steps_logged(client: MlflowClient, run_id: str) -> int:
    """The last training step a trial logged (its losses, every step)."""
    history = client.get_metric_history(run_id, "loss/g_total")
    return max((point.step for point in history), default=0)


def start_steps(client: MlflowClient, run_id: str) -> list[float]:
    return [point.value for point in client.get_metric_history(run_id, "tune/start_step")]


def start_without_the_token(site) -> subprocess.Popen:
    """``components.tune --address HOST:PORT`` from a process that does not know the cluster needs a token."""
    root, cluster = site["root"], site["cluster"]
    params = sweep_params(root, "no-token")
    env = {**client_env(cluster, root), "MLFLOW_TRACKING_URI": site["url"]}
    del env["RAY_AUTH_TOKEN"], env["RAY_AUTH_MODE"]
    return subprocess.Popen(
        [sys.executable, "-m", "components.tune", "--params", str(params), "--address", f"127.0.0.1:{cluster.gcs_port}",
         "-S", f"tune.storage_path={root / 'no-token' / 'ray'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_refused_in_one_line(site, refused: subprocess.Popen) -> None:
    out, err = refused.communicate(timeout=WAIT_S)
    assert refused.returncode == 2, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "needs the cluster's auth token" in errors[0] and "RAY_AUTH_TOKEN" in errors[0], err
    assert "Traceback" not in err
    assert parent_of(MlflowClient(site["url"]), "no-token") is None  # nothing was started


def test_a_sweep_submitted_as_a_ray_job_survives_a_lost_worker_node(site):
    """... and, meanwhile (it mostly waits for Ray's retries), a process without the token is refused."""
    root, cluster, client = site["root"], site["cluster"], MlflowClient(site["url"])
    refused = start_without_the_token(site)
    params = sweep_params(root, "lost-node", max_steps=6, grace_period=6)  # no early stopping: both trials run on
    command = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--",
               "python", "-m", "components.tune", "--params", str(params), "--address", "auto",
               "--storage", f"s3://{BUCKET}/tune", "-S", f"dataset.prepared_dir={root / 'prepared'}",
               "-S", f"judge.out_dir={root / 'judge'}"]
    job = Background.start(command, client_env(cluster, root), root / "lost-node.log")
    try:
        nodes = cluster.node_ids()
        parent_id = wait_for(lambda: parent_of(client, "lost-node"), "the sweep's parent run", job)

        def running_on_both_nodes():
            runs = trial_runs(client, parent_id)
            where = {nodes.get(run.data.tags.get("ray.node_id")): run.info.run_id for run in runs}
            return where if {"head", "worker"} <= set(where) else None

        where = wait_for(running_on_both_nodes, "a trial on each node", job)
        # The worker's trial has reported its step-2 checkpoint and trains on: the lost node takes it mid-way.
        trials = stopped_when(cluster, lambda: still_running(client, where["worker"])
                              and steps_logged(client, where["worker"]) >= 3, "the worker's trial past step 2", job)
        cluster.kill_node("worker")
        cluster.resume(trials)  # the head's trial goes on
        output = job.output()
    except BaseException:
        for process in (job.process, refused):
            process.kill()
        raise
    assert job.process.returncode == 0, output[-5000:]
    assert "best trial" in output  # the job's log, followed by `ray job submit`

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    runs = {run.info.run_id: run for run in trial_runs(client, parent_id)}
    assert set(runs) == set(where.values())  # the retried trial kept its run
    assert {run.info.status for run in runs.values()} == {"FINISHED"}  # none left RUNNING
    assert start_steps(client, where["head"]) == [0]
    resumed = start_steps(client, where["worker"])
    assert resumed[0] == 0 and len(resumed) == 2 and resumed[1] >= 2, resumed  # from its checkpoint, not from 0
    assert nodes[runs[where["worker"]].data.tags["ray.node_id"]] == "head"  # where the retry ran
    assert steps_logged(client, where["worker"]) == 6

    best = json.loads((root / "lost-node" / "out" / "best.json").read_text())
    assert best["mlflow_run_id"] in runs and best["scope"] == "all"
    assert best["checkpoint"].startswith(f"s3://{BUCKET}/tune/lost-node/")
    key = best["checkpoint"][len(f"s3://{BUCKET}/"):] + "/dagan.pt"
    site["s3"].download_file(BUCKET, key, str(root / "best.pt"))
    assert load_checkpoint(root / "best.pt")["step"] == best["step"]
    tuned = load_step_config(root / "lost-node" / "out" / "best_params.yaml")
    assert tuned.loss.lambda_feat == pytest.approx(float(runs[best["mlflow_run_id"]].data.params["loss.lambda_feat"]))
    assert_refused_in_one_line(site, refused)


def run_step(site, params: Path, sweep_dir: Path, resume: bool) -> Background:
    """The Kubeflow tune step's body (pipeline.steps.tune_on_cluster) as the step's pod runs it."""
    root, cluster = site["root"], site["cluster"]
    code = ("import sys; from pipeline import steps; steps.tune_on_cluster("
            f"{str(params)!r}, [], {str(root / 'prepared')!r}, {str(root / 'judge')!r}, {str(sweep_dir)!r}, "
            f"storage='s3://{BUCKET}/tune', num_samples=0, resume={resume}, "
            f"dashboard_url={cluster.dashboard_url!r}, work_dir={str(root / 'shared' / 'kfp-run')!r}, "
            "kfp_run_id='kfp-run')")
    return Background.start([sys.executable, "-c", code], client_env(cluster, root), sweep_dir.with_suffix(".log"))


def test_the_kubeflow_step_fails_with_a_killed_driver_and_resume_continues_from_s3(site):
    root, cluster, client = site["root"], site["cluster"], MlflowClient(site["url"])
    params = sweep_params(root, "killed-driver", max_steps=8, grace_period=8, max_concurrent_trials=1)
    step = run_step(site, params, root / "sweep-1", resume=False)
    try:
        parent_id = wait_for(lambda: parent_of(client, "killed-driver"), "the sweep's parent run", step)

        def second_trial_past_two_checkpoints():
            runs = trial_runs(client, parent_id)
            finished = [run.info.run_id for run in runs if run.info.status == "FINISHED"]
            running = [run.info.run_id for run in runs if run.info.status == "RUNNING"]
            # Step 7: the driver has taken the step-6 report, so its forced save of the experiment state after the
            # step-2 checkpoint has reached S3 (each forced save waits for the one before).
            if finished and running and still_running(client, running[0]) and steps_logged(client, running[0]) >= 7:
                return finished[0], running[0]
            return None

        trials = stopped_when(cluster, second_trial_past_two_checkpoints, "a finished trial and one at step 7", step)
        first, second = second_trial_past_two_checkpoints()
        job = next(job for job in cluster.jobs() if job["status"] == "RUNNING")
        os.kill(int(job["driver_info"]["pid"]), 9)  # the driver dies: no clean-up, no last save
        cluster.resume(trials)
        output = step.output()
    except BaseException:
        step.process.kill()
        raise
    assert step.process.returncode != 0
    assert f"Ray job {job['submission_id']} on {cluster.dashboard_url} ended FAILED" in output, output[-3000:]
    assert "sweep killed-driver: 2 trial(s)" in output  # the step printed the job's log
    assert not (root / "sweep-1" / "best.json").exists()

    step = run_step(site, params, root / "sweep-2", resume=True)
    output = step.output()
    assert step.process.returncode == 0, output[-5000:]
    runs = {run.info.run_id: run for run in trial_runs(client, parent_id)}
    assert set(runs) == {first, second}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    assert start_steps(client, first) == [0]  # the finished trial was kept, not run again
    resumed = start_steps(client, second)
    assert len(resumed) == 2 and resumed[1] >= 2, resumed  # the interrupted trial resumed from its checkpoint
    assert steps_logged(client, second) == 8
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kfp.run_id"] == "kfp-run"
    best = json.loads((root / "sweep-2" / "best.json").read_text())
    assert best["mlflow_run_id"] in runs and (root / "sweep-2" / "best_params.yaml").is_file()
