"""The TrainJob launcher (pipeline/launcher.py) against a fake Kubernetes API that raises the client's real
exceptions (tests/kube_fixtures.py; no API server can run here): submit and wait; a retried step attaches to a
running job, takes a complete one, and deletes and resubmits a failed one (or one whose training stopped early);
the timeout and SIGTERM delete the job; the run's Argo workflow owns it; the nodes' logs reach the step's log;
and the launcher step end to end, where the fake cluster runs the spec's own training command on CPU twice: the
first job fails, the retried step resubmits it and the training resumes from the first job's checkpoint."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml
from kube_fixtures import COMPLETE, FAILED, RUNNING, SUSPENDED, FakeCoreV1Api, FakeTrainJobs, api_error
from train_fixtures import tiny_settings, write_prepared

from pipeline import launcher, steps
from pipeline.launcher import POD_NAME_ENV
from pipeline.trainjob import DistributedTraining, TrainJobError, trainjob_spec

IMAGE = "registry.example.com/dagan:1.2.3"
ARGS = ("--params", "params.yaml", "-S", "train.out_dir=/mnt/shared/run/train")


def job(**changes) -> DistributedTraining:
    settings = dict(name="dagan-abc", image=IMAGE, train_args=ARGS, num_nodes=2, gpus_per_node=4,
                    shared_pvc="dagan-shared", namespace="team-a", grace_s=90)
    return DistributedTraining(**{**settings, **changes})


def run(api, core_api=None, finished=lambda: True, timeout_s=60.0):
    return launcher.run_trainjob(job(), timeout_s=timeout_s, poll_s=0, api=api, core_api=core_api,
                                 finished=finished)


def existing(status: dict) -> dict:
    return {**trainjob_spec(job()), "status": status}


def test_the_fake_raises_what_the_kubernetes_client_raises():
    err = api_error(404, 'trainjobs.trainer.kubeflow.org "x" not found')
    assert (err.status, err.reason) == (404, "Not Found")
    assert json.loads(err.body)["reason"] == "NotFound" and err.headers["Content-Type"] == "application/json"


def test_submit_and_wait_until_complete():
    api = FakeTrainJobs([RUNNING, RUNNING, COMPLETE])
    result = run(api)
    assert [item["type"] for item in result["status"]["conditions"]] == ["Created", "Complete"]
    assert api.created == [trainjob_spec(job())]
    assert api.verbs() == ["create", "get", "get", "get"]


def test_a_failed_job_raises_with_its_reason():
    api = FakeTrainJobs([RUNNING, FAILED])
    with pytest.raises(TrainJobError, match="team-a/dagan-abc failed: BackoffLimitExceeded node-1 exited with 1"):
        run(api)


def test_a_suspended_job_is_waited_for():
    """Kueue suspends a TrainJob it preempts (its pods go, after their grace period) and resumes it later."""
    api = FakeTrainJobs([RUNNING, SUSPENDED, SUSPENDED, RUNNING, COMPLETE])
    run(api)
    assert "delete" not in api.verbs() and api.verbs().count("get") == 5


def test_a_retried_step_attaches_to_the_running_job():
    api = FakeTrainJobs([COMPLETE], existing=existing(RUNNING))
    api.pending["dagan-abc"] = [RUNNING, COMPLETE]  # it goes on running, then completes
    run(api)
    assert api.created == [] and "delete" not in api.verbs()


def test_a_retried_step_takes_a_complete_job_whose_training_finished():
    api = FakeTrainJobs([], existing=existing(COMPLETE))
    run(api, finished=lambda: True)
    assert api.verbs() == ["create", "get", "get"]


@pytest.mark.parametrize(("status", "finished", "reason"), [
    (FAILED, True, "it failed (BackoffLimitExceeded: node-1 exited with 1)"),
    (COMPLETE, False, "it completed, but its training stopped early (SIGTERM)")])
def test_a_retried_step_deletes_and_resubmits_a_failed_job(status, finished, reason, caplog):
    api = FakeTrainJobs([RUNNING, COMPLETE], existing=existing(status), deletion_reads=2)
    run(api, finished=lambda: finished)
    assert api.verbs()[:3] == ["create", "get", "delete"]
    assert ("delete", "dagan-abc", "Foreground") in api.calls, "the pods get their grace period"
    first_create_after_delete = api.verbs().index("create", 1)
    assert api.verbs()[3:first_create_after_delete] == ["get", "get", "get"], "waited until it was gone"
    assert api.created == [trainjob_spec(job())], "the same spec: the same out_dir, so the training resumes"
    assert any(reason in record.message and "resumes from the newest checkpoint" in record.message
               for record in caplog.records)


def test_other_api_errors_are_explained():
    with pytest.raises(TrainJobError, match="403 Forbidden.*service account may create, get and delete trainjobs"):
        run(FakeTrainJobs([RUNNING], forbidden=True))


def test_waiting_past_the_timeout_deletes_the_job():
    now = [0.0]
    api = FakeTrainJobs([RUNNING])
    api.create_namespaced_custom_object(*("trainer.kubeflow.org", "v1alpha1"), "team-a", "trainjobs",
                                        trainjob_spec(job()))

    def sleep(seconds):
        now[0] += seconds

    with pytest.raises(TrainJobError, match="did not finish within 100 s; deleted it .*run the step again"):
        launcher.wait_for_trainjob(api, "dagan-abc", "team-a", timeout_s=100, poll_s=30, clock=lambda: now[0],
                                   sleep=sleep)
    assert api.verbs()[-6:] == ["get"] * 5 + ["delete"]  # t = 0, 30, 60, 90, 120


def test_sigterm_while_waiting_deletes_the_job():
    """KFP cancels a run by stopping its pods with SIGTERM: the launcher deletes its TrainJob on the way out."""
    api = FakeTrainJobs([RUNNING])
    reads = []
    original_get = api.get_namespaced_custom_object

    def get(*args):
        reads.append(1)
        if len(reads) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled between two bytecodes
        return original_get(*args)

    api.get_namespaced_custom_object = get
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainJobError, match="stopped by SIGTERM: deleted TrainJob team-a/dagan-abc"):
        run(api)
    assert ("delete", "dagan-abc", "Foreground") in api.calls
    assert signal.getsignal(signal.SIGTERM) is previous, "the launcher's handler is gone again"


def test_the_runs_workflow_owns_the_job(monkeypatch):
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "dagan-xyz", "uid": "0f-uid"}
    monkeypatch.setenv(POD_NAME_ENV, "dagan-xyz-system-container-impl-123")
    api = FakeTrainJobs([COMPLETE])
    run(api, core_api=FakeCoreV1Api(owners=[{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"},
                                            workflow]))
    assert api.created[0]["metadata"]["ownerReferences"] == [workflow]


def test_without_permission_to_read_its_pod_the_job_gets_no_owner(monkeypatch, caplog):
    monkeypatch.setenv(POD_NAME_ENV, "dagan-xyz-system-container-impl-123")
    api = FakeTrainJobs([COMPLETE])
    run(api, core_api=FakeCoreV1Api(forbidden=True))
    assert "ownerReferences" not in api.created[0]["metadata"]
    assert any("gets no owner" in record.message for record in caplog.records)


def test_the_nodes_logs_reach_the_launchers_log_once_each(capsys):
    core = FakeCoreV1Api({"dagan-abc-node-0-0": ["step 1/4"], "dagan-abc-node-0-1": ["rank 4 ready"]},
                         phases={"dagan-abc-node-0-1": "Pending"})

    def progress(spec):  # the job logs more while it runs
        core.logs["dagan-abc-node-0-0"].append("step 2/4")
        core.phases["dagan-abc-node-0-1"] = "Running"

    run(FakeTrainJobs([RUNNING, RUNNING, COMPLETE], on_first_read=progress), core_api=core)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["[dagan-abc-node-0-0] step 1/4", "[dagan-abc-node-0-0] step 2/4",
                       "[dagan-abc-node-0-1] rank 4 ready"]
    assert core.selectors[0] == "jobset.sigs.k8s.io/jobset-name=dagan-abc"
    first_node = [since for name, since in core.reads if name == "dagan-abc-node-0-0"]
    assert first_node[0] is None and all(since is not None for since in first_node[1:]), "then only recent lines"


def test_without_permission_for_logs_the_launcher_says_so_once_and_waits_on(caplog):
    api = FakeTrainJobs([RUNNING, COMPLETE])
    run(api, core_api=FakeCoreV1Api(forbidden=True))
    warnings = [record.message for record in caplog.records if "node logs" in record.message]
    assert len(warnings) == 1 and "pods/log" in warnings[0] and api.verbs().count("get") == 2


def _train_as_the_nodes(spec: dict, monkeypatch, *extra: str) -> None:
    """The cluster: the spec's training command (what follows ``-m components.train``) in this process, with the
    nodes' plain env (the secrets are references)."""
    from components import train

    command = spec["spec"]["trainer"]["command"]
    for item in spec["spec"]["trainer"]["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    assert train.main([*command[command.index("components.train") + 1:], *extra]) == 0


def test_launcher_step_end_to_end_recovers_a_failed_job(tmp_path, monkeypatch):
    """steps.train_distributed twice, as KFP retries it: the first job trains one step and fails; the retried step
    deletes it, resubmits the same spec, and the training resumes from the checkpoint on the shared volume into
    the same MLflow run; the model is exported."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    prepared = write_prepared(tmp_path / "prepared", num_train=4)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_settings(prepared, tmp_path / "unused", max_steps=2,
                                                     checkpoint_every=1, sample_every=100)))
    shared, model_dir = tmp_path / "shared", tmp_path / "artifacts" / "model"

    def attempt(api) -> dict:
        return steps.train_distributed(
            str(params), ["train.lr_g=2e-4"], str(prepared), str(model_dir), job_name="dagan-run1",
            work_dir=f"{shared}/run1", image=IMAGE, num_nodes=2, gpus_per_node=4,
            resources={"cpu": "16", "memory": "128Gi", "shm": "32Gi"}, shared_pvc="dagan-shared",
            shared_mount=str(shared), secret_env=[{"env": "MLFLOW_TRACKING_URI", "secret": "dagan-mlflow",
                                                   "key": "MLFLOW_TRACKING_URI"}], timeout_s=600, grace_s=90,
            scheduling={"tolerations": [["nvidia.com/gpu", "", "NoSchedule"]], "node_selector": {}, "queue": "q"},
            kfp_run_id="kfp-run-7", api=api)

    # attempt 1: the nodes train one step (a checkpoint), then the job fails
    api = FakeTrainJobs([FAILED], on_first_read=lambda spec: _train_as_the_nodes(spec, monkeypatch,
                                                                                 "-S", "train.max_steps=1"))
    with pytest.raises(TrainJobError, match="dagan-run1 failed"):
        attempt(api)
    first_run = json.loads((shared / "run1" / "train" / "mlflow_run.json").read_text())["run_id"]
    # attempt 2 (KFP's retry): the failed job is replaced; the new one trains to the end
    api.statuses, api.on_first_read = [COMPLETE], lambda spec: _train_as_the_nodes(spec, monkeypatch)
    metrics = attempt(api)
    assert api.verbs().count("delete") == 1 and len(api.created) == 2 and api.created[0] == api.created[1]
    spec = api.created[1]
    assert spec["spec"]["activeDeadlineSeconds"] == 600
    assert spec["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    args = spec["spec"]["trainer"]["command"]
    assert f"dataset.prepared_dir={shared}/run1/data" in args and f"train.out_dir={shared}/run1/train" in args
    assert args.index("train.lr_g=2e-4") < args.index(f"train.out_dir={shared}/run1/train"), "user overrides first"
    assert metrics["steps"] == 2.0 and (model_dir / "checkpoints" / "final.pt").is_file()
    run_id = json.loads((model_dir / "mlflow_run.json").read_text())["run_id"]
    assert run_id == first_run, "the resumed training continued the first job's MLflow run"
    from mlflow import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.tags["kfp.run_id"] == "kfp-run-7" and run.info.status == "FINISHED"
    assert "train.max_steps: 1 -> 2" in run.data.tags["dagan.resumed_at_step_1"], "resumed from the step-1 checkpoint"


def test_launcher_step_refuses_a_work_dir_off_the_shared_volume(tmp_path):
    with pytest.raises(ValueError, match="must lie on the shared volume mounted at /mnt/shared"):
        steps.train_distributed("params.yaml", [], str(tmp_path), str(tmp_path / "m"), job_name="x",
                                work_dir="/tmp/elsewhere", image=IMAGE, num_nodes=1, gpus_per_node=1,
                                resources={"cpu": "1", "memory": "1Gi", "shm": "1Gi"}, shared_pvc="p",
                                shared_mount="/mnt/shared", secret_env=[], timeout_s=1, grace_s=1, api=object())
