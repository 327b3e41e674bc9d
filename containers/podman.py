"""podman as the container engine: found or installed, called with the settings this kind of machine needs.

Settings (each found on a Debian 12 VM with a hybrid cgroup v1 layout, root without
CAP_SYS_RESOURCE):
* ``--runtime runc --cgroup-manager cgroupfs``: crun refuses the hybrid cgroup layout; runc runs.
* ulimits at or below the caller's own: podman otherwise asks for more open files and processes
  than this machine lets anyone raise to. The process limit is also capped at ``kernel.pid_max``,
  the limit podman's container monitor (conmon) runs with.
Every failure the user can act on is a :class:`ContainerError` with one line saying what to do.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

APT_PACKAGES = ("podman", "runc", "debootstrap")
GLOBAL_FLAGS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs")
PID_MAX = Path("/proc/sys/kernel/pid_max")


class ContainerError(RuntimeError):
    """A container step failed for a reason the user can act on; the message is one line."""


def ensure_installed(packages: Sequence[str] = APT_PACKAGES) -> None:
    """Install podman, runc and debootstrap with apt-get when one of them is missing."""
    missing = [name for name in packages if shutil.which(name) is None]
    if not missing:
        return
    hint = f"install them by hand (apt-get install {' '.join(packages)}), then run the same command again"
    if shutil.which("apt-get") is None:
        raise ContainerError(f"{', '.join(missing)} not found and there is no apt-get here: {hint}")
    if os.geteuid() != 0:
        raise ContainerError(f"{', '.join(missing)} not found; installing needs root: sudo apt-get install -y "
                             f"{' '.join(packages)}, then run the same command again")
    print(f"installing {', '.join(packages)} with apt-get", flush=True)
    command = ["apt-get", "install", "-y", "-q", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:  # a stale package list is the usual cause: refresh it once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContainerError(f"apt-get could not install {' '.join(packages)} ({last}): {hint}")


def ulimits() -> dict[str, tuple[int, int]]:
    """``name -> (soft, hard)`` for the containers: the caller's own soft limits (never a raise)."""
    pid_max = int(PID_MAX.read_text()) if PID_MAX.is_file() else 32768
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    nofile = 1024 if nofile == resource.RLIM_INFINITY else nofile
    return {"nofile": (nofile, nofile), "nproc": (nproc, nproc)}


def ulimit_flags() -> list[str]:
    return [flag for name, (soft, hard) in ulimits().items() for flag in ("--ulimit", f"{name}={soft}:{hard}")]


def podman_command(*args: str) -> list[str]:
    return ["podman", *GLOBAL_FLAGS, *args]


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` quietly; a failure (with ``check``) is a ContainerError with podman's last line."""
    result = subprocess.run(podman_command(*args), capture_output=True, text=True)
    if check and result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ContainerError(f"podman {' '.join(args[:2])} failed: {last}")
    return result


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def require_image(name: str) -> None:
    if not image_exists(name):
        raise ContainerError(f"image {name} does not exist here; build it with `make image` "
                             f"(or python -m containers image --tag {name})")


def image_size(name: str) -> int:
    """The image's size in bytes (all its layers, uncompressed)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def remove_containers(names: Sequence[str]) -> None:
    """Force-remove containers by name (those that are gone already are fine)."""
    if names:
        podman("rm", "--force", "--ignore", "--time", "5", *names, check=False)
