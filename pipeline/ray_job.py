"""A sweep as a Ray job on a running Ray cluster (KubeRay): submit it, follow its logs, fail with it.

The Kubeflow tune step (pipeline/tune_pipeline.py compiled with ``--ray-cluster URL``) submits
``python -m components.tune ... --address auto`` through Ray's Jobs API (``JobSubmissionClient``
against the head's dashboard, port 8265) rather than creating a RayJob custom resource:

- it is the API Ray recommends for running work on a cluster, the same one as ``ray job submit``
  by hand (docs/TUNE.md), and it works with any Ray cluster (KubeRay, VMs, a laptop);
- the step's pod needs no Kubernetes API rights (creating and watching RayJobs takes a Role in the
  namespace) and no KubeRay operator of a given version, only the dashboard's address and token;
- it runs in the tests against a real two-node cluster; a RayJob needs the operator, which only a
  mock could stand in for here;
- the cluster and the sweep's storage outlive the job, so a failed or cancelled sweep resumes on
  the same cluster (``--resume``); a RayJob usually creates a cluster per job and deletes it after.

The step prints the job's log as it comes, raises :class:`pipeline.steps.StepError` when the job
does not succeed, and stops the job when the step itself is stopped (SIGTERM: the pod is deleted, the
run cancelled) so that no sweep keeps running behind a finished step. Clusters with token
authentication (Ray's default from 2.61 on) need ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in
the step's environment, which the pipeline takes from a Kubernetes secret (``--ray-secret``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from pipeline.steps import StepError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STATUS_POLL_S = 5.0


def tune_entrypoint(argv: Sequence[str]) -> str:
    """The job's command: the sweep's driver, joining the cluster it runs on."""
    return shlex.join(["python", "-m", "components.tune", *argv, "--address", "auto"])


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (the pod is being deleted) ends the step through ``finally`` blocks, as Ctrl-C does."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(dashboard_url: str, entrypoint: str, env_vars: Mapping[str, str], client=None) -> str:
    """Submit ``entrypoint`` to the cluster at ``dashboard_url``, print its log until it ends, return its id.

    Raises StepError unless the job SUCCEEDED; stops the job when this process is interrupted."""
    from ray.job_submission import JobSubmissionClient

    client = client or JobSubmissionClient(dashboard_url)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": dict(env_vars)} if env_vars else None)
    print(f"submitted Ray job {job_id} to {dashboard_url}: {entrypoint}", flush=True)
    finished = False
    try:
        with _sigterm_raises():
            status = _follow(client, job_id)
        finished = True
    finally:
        if not finished:
            client.stop_job(job_id)
            print(f"stopped Ray job {job_id}", file=sys.stderr, flush=True)
    if status != "SUCCEEDED":
        message = (client.get_job_info(job_id).message or "").strip().splitlines()
        raise StepError(f"Ray job {job_id} on {dashboard_url} ended {status}: {message[0] if message else ''} "
                        f"(its log is above; `ray job logs {job_id}` shows it again)")
    return job_id


def _follow(client, job_id: str) -> str:
    """Print the job's log while it runs (Ray streams it), then wait for its final status."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as err:  # the log stream broke (a proxy, a restarted dashboard): the status still tells
        print(f"(the log stream of Ray job {job_id} ended: {err})", file=sys.stderr, flush=True)
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        time.sleep(STATUS_POLL_S)
    return status
