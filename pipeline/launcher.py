"""The train step's launcher: train in this pod, or submit a TrainJob (or recover one), wait for it, clean up.

:func:`run_in_process` is the local mode and the in-pod train step (one process, or
``torchrun --standalone`` over the pod's GPUs). :func:`run_trainjob` is the train step of a
pipeline compiled with ``--trainjob``; it runs in a small pod and talks to the Kubernetes API:

* **Submit or recover.** It creates the TrainJob of pipeline/trainjob.py. A TrainJob of that name
  that exists already (a retried step finds its own) is taken as it is: a running (or queued)
  one is attached to; a Complete one is returned, unless its training stopped early (SIGTERM),
  then it is deleted and submitted again; a Failed one is deleted and submitted again. A
  resubmitted job resumes from the newest checkpoint on the shared volume, so KFP's retries of
  the step recover from a failed job instead of failing again at once.
* **Wait**, copying the nodes' log lines into the step's log (:class:`pipeline.node_logs.NodeLogs`).
* **Clean up.** Past its timeout the launcher deletes the TrainJob (the job also carries the
  timeout as ``activeDeadlineSeconds``). SIGTERM to the launcher deletes it too: KFP cancels a
  run by giving its Argo workflow ``activeDeadlineSeconds: 0``, and Argo stops the running pods
  with SIGTERM and the pod's grace period; no further task starts then (a ``dsl.ExitHandler``'s
  exit task neither). The deletion is in the foreground, so the nodes get their own grace
  period and write a checkpoint first. As the backstop for a launcher that dies without
  cleaning up (SIGKILL, a lost node), the TrainJob is owned by the run's Argo workflow
  (``ownerReferences``, found from the launcher pod's owner): Kubernetes deletes it with the run.
  docs/KUBEFLOW.md, "When things fail", lists every case.

The Kubernetes API is passed in (``api``: CustomObjectsApi, ``core_api``: CoreV1Api), so a test can
play the cluster; by default they use the pod's service account, else the local kubeconfig.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.node_logs import NodeLogs
from pipeline.trainjob import (
    TRAINER_GROUP,
    TRAINER_VERSION,
    TRAINJOB_PLURAL,
    DistributedTraining,
    TrainJobError,
    trainjob_spec,
)

log = logging.getLogger("pipeline.trainjob")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POD_NAME_ENV = "DAGAN_POD_NAME"  # the launcher pod's own name (downward API, set by pipeline/pipeline.py)
DELETION_WAIT_S = 120.0  # beyond the nodes' grace period, for the pods and the JobSet to go
_RESOURCE = (TRAINER_GROUP, TRAINER_VERSION)


def current_namespace(default: str = "kubeflow") -> str:
    """The pod's own namespace inside a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def _load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def custom_objects_api():
    """A CustomObjectsApi with the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client

    _load_kube_config()
    return client.CustomObjectsApi()


def core_v1_api():
    """A CoreV1Api (pods and their logs) with the same credentials as :func:`custom_objects_api`."""
    from kubernetes import client

    _load_kube_config()
    return client.CoreV1Api()


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's condition ``kind`` (Complete, Failed, Suspended) when it is True."""
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind and item.get("status") == "True":
            return item
    return None


def _api_error(action: str, name: str, namespace: str, err) -> TrainJobError:
    return TrainJobError(f"could not {action} TrainJob {namespace}/{name}: {err.status} {err.reason}; check that "
                         "Kubeflow Trainer is installed and the pipeline's service account may create, get and "
                         "delete trainjobs (docs/KUBEFLOW.md)")


def get_trainjob(api, name: str, namespace: str) -> dict[str, Any] | None:
    """The TrainJob, or None when there is none of that name."""
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(*_RESOURCE, namespace, TRAINJOB_PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise _api_error("read", name, namespace, err) from err


def delete_trainjob(api, name: str, namespace: str) -> None:
    """Delete the TrainJob in the foreground (its pods get their grace period first); one that is gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(*_RESOURCE, namespace, TRAINJOB_PLURAL, name,
                                            propagation_policy="Foreground")
    except ApiException as err:
        if err.status != 404:
            raise _api_error("delete", name, namespace, err) from err


def wait_until_deleted(api, name: str, namespace: str, timeout_s: float, poll_s: float = 5.0,
                       clock=time.monotonic, sleep=time.sleep) -> None:
    deadline = clock() + timeout_s
    while get_trainjob(api, name, namespace) is not None:
        if clock() >= deadline:
            raise TrainJobError(f"TrainJob {namespace}/{name} is still being deleted after {timeout_s:.0f} s; look "
                                f"at it with kubectl -n {namespace} describe trainjob {name}, then run the step again")
        sleep(poll_s)


def _create(api, spec: dict[str, Any]) -> bool:
    """Create the TrainJob: True, or False when one of that name exists."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = spec["metadata"]["name"], spec["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(*_RESOURCE, namespace, TRAINJOB_PLURAL, spec)
    except ApiException as err:
        if err.status == 409:
            return False
        raise _api_error("create", name, namespace, err) from err
    log.info("created TrainJob %s/%s", namespace, name)
    return True


def _replace_reason(existing: dict[str, Any], finished: Callable[[], bool]) -> str | None:
    """Why an existing TrainJob must be deleted and submitted again (None: attach to it or take its result)."""
    failed = condition(existing, "Failed")
    if failed:
        return f"it failed ({': '.join(filter(None, (failed.get('reason'), failed.get('message'))))})"
    if condition(existing, "Complete") and not finished():
        return "it completed, but its training stopped early (SIGTERM)"
    return None


def submit_trainjob(api, spec: dict[str, Any], finished: Callable[[], bool] = lambda: True,
                    deletion_timeout_s: float = DELETION_WAIT_S, poll_s: float = 5.0, clock=time.monotonic,
                    sleep=time.sleep) -> None:
    """Create the TrainJob, or recover the one of that name that exists (module docstring).

    ``finished``: whether the training in its ``train.out_dir`` finished (a Complete job is kept only then).
    """
    name, namespace = spec["metadata"]["name"], spec["metadata"]["namespace"]
    for _ in range(3):  # a job deleted by someone else between our calls: create again
        if _create(api, spec):
            return
        existing = get_trainjob(api, name, namespace)
        if existing is None:
            continue
        reason = _replace_reason(existing, finished)
        if reason is None:
            state = "complete" if condition(existing, "Complete") else "running"
            log.info("TrainJob %s/%s exists already (a retried step) and is %s: attaching to it", namespace, name,
                     state)
            return
        log.warning("TrainJob %s/%s exists already and %s: deleting it and submitting it again; it resumes from the "
                    "newest checkpoint in train.out_dir", namespace, name, reason)
        delete_trainjob(api, name, namespace)
        wait_until_deleted(api, name, namespace, deletion_timeout_s, poll_s, clock, sleep)
    raise TrainJobError(f"could not create TrainJob {namespace}/{name}: it keeps appearing and disappearing; "
                        f"look at kubectl -n {namespace} get trainjob {name}")


def wait_for_trainjob(api, name: str, namespace: str, timeout_s: float, poll_s: float = 30.0,
                      clock=time.monotonic, sleep=time.sleep, logs: NodeLogs | None = None) -> dict[str, Any]:
    """Poll until the TrainJob is Complete (returned) or Failed (TrainJobError), copying the nodes' new log lines
    at every poll when ``logs`` is given. Past ``timeout_s`` it deletes the job and raises TrainJobError."""
    deadline = clock() + timeout_s
    while True:
        obj = get_trainjob(api, name, namespace)
        if obj is None:
            raise TrainJobError(f"TrainJob {namespace}/{name} was deleted while the step waited for it; run the step "
                                "again to submit it anew (it resumes from the newest checkpoint)")
        if logs is not None:
            logs.pump()
        if condition(obj, "Complete"):
            log.info("TrainJob %s/%s complete", namespace, name)
            return obj
        failed = condition(obj, "Failed")
        if failed:
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {failed.get('reason', '')} "
                                f"{failed.get('message', '')}".rstrip())
        if clock() >= deadline:
            delete_trainjob(api, name, namespace)
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f} s; deleted it "
                                "(its GPUs are free again). Its checkpoints stay on the shared volume: run the step "
                                "again (or compile with a longer --trainjob-timeout-s) to resume")
        sleep(poll_s)


class _Cancelled(BaseException):
    """SIGTERM reached the launcher while it waited."""


@contextlib.contextmanager
def deleted_on_sigterm(api, name: str, namespace: str) -> Iterator[None]:
    """While inside: SIGTERM (a cancelled run, or the launcher's pod stopping) deletes the TrainJob, then raises
    TrainJobError. Only the main thread can handle signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum, frame) -> None:
        raise _Cancelled

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    except _Cancelled:
        signal.signal(signal.SIGTERM, previous)
        log.warning("SIGTERM (the run was cancelled, or this pod is stopping): deleting TrainJob %s/%s", namespace,
                    name)
        delete_trainjob(api, name, namespace)
        raise TrainJobError(f"stopped by SIGTERM: deleted TrainJob {namespace}/{name}; its nodes get their grace "
                            "period to write a checkpoint, which a new run of the step resumes from") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_owner(core_api, namespace: str) -> dict[str, Any] | None:
    """The Argo Workflow (the pipeline run) that owns the launcher's pod, as an owner reference for the TrainJob;
    None outside a pipeline pod or without ``get`` on pods."""
    from kubernetes.client.exceptions import ApiException

    pod_name = os.environ.get(POD_NAME_ENV)
    if not pod_name or core_api is None:
        return None
    try:
        pod = core_api.read_namespaced_pod(pod_name, namespace)
    except ApiException as err:
        log.warning("cannot read this pod %s (%s %s): the TrainJob gets no owner, so only this step deletes it; give "
                    "the pipeline's service account get on pods (docs/KUBEFLOW.md)", pod_name, err.status, err.reason)
        return None
    for ref in pod.metadata.owner_references or []:
        if ref.kind == "Workflow":
            return {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "uid": ref.uid}
    return None


def run_trainjob(job: DistributedTraining, timeout_s: float, poll_s: float = 30.0, api=None, core_api=None,
                 finished: Callable[[], bool] = lambda: True) -> dict[str, Any]:
    """Submit (or recover) the TrainJob for ``job`` and wait for it to complete, printing its nodes' logs.

    ``api`` / ``core_api``: a CustomObjectsApi and a CoreV1Api (default: the cluster's; with an ``api`` given and
    no ``core_api``, no logs are read and the job gets no owner). ``finished``: see :func:`submit_trainjob`.
    """
    if api is None:
        api, core_api = custom_objects_api(), core_api or core_v1_api()
    spec = trainjob_spec(job)
    owner = run_owner(core_api, job.namespace)
    if owner is not None:
        spec["metadata"]["ownerReferences"] = [owner]
    logs = NodeLogs(core_api, job.name, job.namespace, poll_s) if core_api is not None else None
    with deleted_on_sigterm(api, job.name, job.namespace):
        submit_trainjob(api, spec, finished, deletion_timeout_s=job.grace_s + DELETION_WAIT_S, poll_s=min(poll_s, 5.0))
        return wait_for_trainjob(api, job.name, job.namespace, timeout_s, poll_s, logs=logs)


def run_in_process(train_args: Sequence[str], nproc: int = 1) -> None:
    """The local mode: ``components.train`` in this process, or torchrun over ``nproc`` local processes."""
    if nproc <= 1:
        from components import train

        code = train.main(list(train_args))
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(nproc), "-m", "components.train", *train_args]
        code = subprocess.run(command, check=False, env=os.environ.copy()).returncode
    if code != 0:
        raise TrainJobError(f"components.train exited with status {code} (args: {' '.join(train_args)})")
