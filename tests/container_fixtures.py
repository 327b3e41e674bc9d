"""The project image under podman for the container tests (``make test-containers``; skipped otherwise).

``python -m containers test`` builds the image and names it in ``$DAGAN_CONTAINER_IMAGE``; without
it these tests skip (``make test`` stays free of the 7 GiB image). Every container a test starts
carries the session's label, so what an interrupted run leaves is found and removed.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from containers.kfp_local import SESSION_LABEL, remove_session_containers
from containers.podman import podman_command, require_image, ulimit_flags

IMAGE = os.environ.get("DAGAN_CONTAINER_IMAGE", "")
SESSION = os.environ.get("DAGAN_CONTAINER_SESSION") or uuid.uuid4().hex[:12]
IMAGE_UID = 1000  # the Dockerfile's USER

needs_image = pytest.mark.skipif(not IMAGE, reason="container tests run with `make test-containers` "
                                                   "(python -m containers test builds the image)")


def run_in_image(*command: str, volumes: dict[Path, str] | None = None, env: dict[str, str] | None = None,
                 user: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``command`` in a fresh container of the image: no network, the image's user unless ``user``."""
    require_image(IMAGE)
    flags = ["--rm", "--network", "none", "--label", f"{SESSION_LABEL}={SESSION}", *ulimit_flags()]
    for source, target in (volumes or {}).items():
        flags += ["--volume", f"{source}:{target}"]
    for key, value in (env or {}).items():
        flags += ["--env", f"{key}={value}"]
    if user is not None:
        flags += ["--user", user]
    return subprocess.run(podman_command("run", *flags, IMAGE, *command), capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def session_containers_removed(session: str = SESSION) -> Iterator[str]:
    """The label of this run's containers; whatever is left of them is removed when the block ends."""
    require_image(IMAGE)
    try:
        yield session
    finally:
        remove_session_containers(session)
