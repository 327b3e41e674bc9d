"""A really full disk for the tests: a tiny tmpfs mounted in a private mount namespace (``unshare``)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest


def run_on_small_disk(disk: Path, size: str, argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``argv`` with a ``size`` tmpfs mounted at ``disk`` (seen by that process only); return the
    result and what is left in ``disk`` afterwards. Skips where the kernel forbids private mounts."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    disk.mkdir(parents=True, exist_ok=True)
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} || exit 99; {shlex.join(argv)}; "
              f"code=$?; find {shlex.quote(str(disk))} -mindepth 1 -printf '%P\\n'; exit $code")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=600)
    if result.returncode == 99 or "unshare failed" in result.stderr:
        pytest.skip(f"this kernel refuses a private tmpfs: {result.stderr.strip()}")
    return result, result.stdout.split()
