"""The Kubeflow pipeline run by kfp.local's DockerRunner against podman: every step in its own container.

kfp.local's DockerRunner talks to a Docker engine through the ``docker`` package; podman serves the
same API (``podman system service``) on a unix socket, given to it as ``DOCKER_HOST``. What the
runner does per step (kfp/local/docker_task_handler.py): it runs the component's command in its
``base_image`` (the project image) with the pipeline root bind-mounted at the same path, and the
``container_run_args`` given here. It adds no user and no network settings of its own, so:

* the step runs as the image's own user, uid 1000 (as on a cluster, where the TrainJob and the
  pods also ask for ``runAsNonRoot``); the pipeline root must be writable by it;
* ``network_mode="none"``: no step has any network. The tracking store is a sqlite file in a
  folder mounted at the same path (:func:`docker_runner`'s ``shared``), which every step reaches
  through the file system, so none needs the network. (A server on the host would need the host's
  whole network for every step: this podman reaches a server bound to the host's loopback only
  with ``--network host``.)
* ulimits at or below the caller's (containers.podman), a label naming the session so that
  :func:`remove_session_containers` finds what is left when a run is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from containers.podman import ContainerError, podman, podman_command, ulimits

SESSION_LABEL = "dagan.containers.session"
API_START_TIMEOUT_S = 60.0


@contextmanager
def docker_api(folder: Path) -> Iterator[str]:
    """podman's Docker-compatible API on a socket in ``folder`` while the block runs; yields its ``DOCKER_HOST``.

    The service is stopped when the block ends, also on an error or an interrupt."""
    socket, log = folder / "podman.sock", folder / "podman-service.log"
    url = f"unix://{socket}"
    with log.open("w") as output:
        service = subprocess.Popen(podman_command("system", "service", "--time=0", url), stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + API_START_TIMEOUT_S
        while not _answers(url):
            if service.poll() is not None or time.monotonic() > deadline:
                last = (log.read_text().strip().splitlines() or ["no output"])[-1]
                raise ContainerError(f"podman system service did not start ({last})")
            time.sleep(0.3)
        yield url
    finally:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def _answers(url: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=url, timeout=10)  # connects to read the API version
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    finally:
        client.close()


def docker_runner(session: str, environment: Mapping[str, str], shared: Sequence[Path] = ()):
    """kfp.local's DockerRunner for podman: no network, the image's own user, ``shared`` folders mounted
    read-write at their own paths, ``environment`` in every step, every container labelled ``session``."""
    import docker
    from kfp import local

    return local.DockerRunner(
        network_mode="none",
        ulimits=[docker.types.Ulimit(name=name, soft=soft, hard=hard) for name, (soft, hard) in ulimits().items()],
        labels={SESSION_LABEL: session},
        environment=dict(environment),
        mounts=[docker.types.Mount(target=str(path), source=str(path), type="bind") for path in shared],
    )


def session_containers(session: str) -> list[str]:
    listing = podman("ps", "--all", "--quiet", "--filter", f"label={SESSION_LABEL}={session}", check=False)
    return listing.stdout.split()


def remove_session_containers(session: str) -> list[str]:
    """Force-remove every container of ``session`` that is still there; returns their ids."""
    left = session_containers(session)
    if left:
        podman("rm", "--force", "--time", "5", *left, check=False)
    return left


def writable_by(path: Path, uid: int, gid: int) -> None:
    """Make ``path`` (a folder the containers write into) owned by the image's user, as a cluster's
    ``fsGroup`` makes a volume writable for the pod."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    else:
        path.chmod(0o777)
