"""The project image built here: a local Debian 12 + Python 3.11 base made once, then the Dockerfile.

Where Docker Hub cannot be reached, the Dockerfile's pinned ``python:3.11-slim`` base is replaced
by a local one (``--build-arg BASE_IMAGE``): ``debootstrap --variant=minbase`` of Debian 12 from
the machine's own apt mirror with python3, python3-venv and ca-certificates, a ``python`` link,
no apt caches, imported as :data:`BASE_IMAGE`. Everything after ``FROM`` is the same build as on a
cluster's CI.

The build reaches the package indexes the way this machine does: its pip settings (``pip config
list``: files and ``PIP_*`` variables) are written into one pip.conf, and every local folder or
file they name (wheel folders, local indexes, the CA bundle, the constraints file) is mounted
read-only. All of it is mounted over the build's ``$HOME`` (``/root``, present in every Debian
base), where pip reads its user config: no mount point is created in the image, and nothing that
is written there during the build (pip's cache, were it on) ends up in a layer.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from containers.podman import ContainerError, image_exists, podman, podman_command, ulimit_flags

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = "localhost/dagan-base:bookworm-python3.11"
IMAGE = "localhost/dagan:local"
IMAGE_TITLE = "dagan"  # the Dockerfile's org.opencontainers.image.title: which dangling images are ours
BUILD_HOME = "/root"  # the build's $HOME: pip's user config lives in it
BUILD_FILES = f"{BUILD_HOME}/build-files"  # where the machine's pip files appear during the build
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
SUITE = "bookworm"


def debian_mirror(sources: Iterable[Path] = APT_SOURCES) -> str:
    """The first apt source that serves Debian 12's main suite (one-line or deb822 format)."""
    for source in sources:
        files = sorted(source.glob("*.list")) + sorted(source.glob("*.sources")) if source.is_dir() else [source]
        for path in files:
            if not path.is_file():
                continue
            text = path.read_text()
            for line in text.splitlines():  # deb [options] URI SUITE COMPONENT...
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
            for stanza in re.split(r"\n\s*\n", text):  # deb822: Types / URIs / Suites fields
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, flags=re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return fields.get("URIs", "").split()[0]
    raise ContainerError(f"no apt source for Debian {SUITE} in /etc/apt/sources.list(.d): pass the mirror with "
                         "--mirror URL (e.g. http://deb.debian.org/debian)")


def make_base(name: str = BASE_IMAGE, mirror: str | None = None) -> None:
    """debootstrap Debian 12 with Python 3.11 into a scratch folder and import it as image ``name``."""
    mirror = mirror or debian_mirror()
    print(f"making the base image {name} from {mirror} (once; a few minutes)", flush=True)
    with tempfile.TemporaryDirectory(prefix="dagan-base-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        command = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", SUITE,
                   str(rootfs), mirror]
        code, tail = run_to_end(command, echo=False)
        if code != 0:
            last = ([line.strip() for line in tail if line.strip()] or ["no output"])[-1]
            raise ContainerError(f"debootstrap from {mirror} failed ({last}): check that the mirror is reachable "
                                 "or pass another with --mirror URL")
        for cache in ("var/cache/apt", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        (rootfs / "usr/bin/python").symlink_to("python3")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(podman_command("import", "--change", 'CMD ["python3"]', "-", name),
                                  stdin=tar.stdout, capture_output=True, text=True)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise ContainerError(f"podman import of the base failed: {imported.stderr.strip()[-300:]}")
    version = podman("run", "--rm", *ulimit_flags(), "--network", "none", name, "python", "--version").stdout
    if not version.startswith("Python 3.11"):
        raise ContainerError(f"the base {name} has {version.strip()}; the lock needs Python 3.11 (Debian 12)")


def pip_settings(python: str = sys.executable) -> dict[str, dict[str, str]]:
    """The machine's pip settings as ``section -> key -> value``; ``PIP_*`` variables win, as in pip."""
    listing = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    sections: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        name, _, quoted = line.partition("=")
        section, _, key = name.rpartition(".")
        if not key or not quoted:
            continue
        value = ast.literal_eval(quoted)
        if section == ":env:":
            from_env[key] = value
        else:
            sections.setdefault(section, {})[key] = value
    sections.setdefault("global", {}).update(from_env)
    return sections


def local_path(word: str) -> Path | None:
    """The existing local file or folder a word of a pip setting names (a path or a ``file://`` URL)."""
    path = Path(word.removeprefix("file://")) if word.startswith(("/", "file:///")) else None
    return path if path is not None and path.exists() else None


def mount_source(path: Path) -> Path:
    """What to mount for ``path``: a local index's ``simple/`` folder needs its parent (the files it links to)."""
    return path.parent if path.name == "simple" and path.parent != Path("/") else path


def build_settings(sections: dict[str, dict[str, str]]) -> tuple[str, dict[Path, str]]:
    """pip.conf text for the build, with every local path moved under :data:`BUILD_FILES`, and the mounts
    ``host path -> path in the build``."""
    mounts: dict[Path, str] = {}
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            words = []
            for word in value.split():
                path = local_path(word)
                if path is not None:
                    mounts[mount_source(path)] = f"{BUILD_FILES}{mount_source(path)}"
                    word = word.replace(str(path), f"{BUILD_FILES}{path}", 1)
                words.append(word)
            lines.append(f"{key} = {' '.join(words)}")
    return "\n".join(lines) + "\n", mounts


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


PIP_MISSING = re.compile(r"(?:No matching distribution found for|Could not find a version that satisfies the "
                         r"requirement) (\S+)")
NO_NETWORK = re.compile(r"Temporary failure in name resolution|Network is unreachable|Name or service not known|"
                        r"Max retries exceeded|Connection refused|ConnectTimeout|timed out", re.IGNORECASE)


def build_failure(log: Iterable[str]) -> str:
    """One line for a failed build, from the last lines of its log."""
    lines = [line.strip() for line in log if line.strip()]
    missing = [match.group(1) for line in lines if (match := PIP_MISSING.search(line))]
    if missing and any(NO_NETWORK.search(line) for line in lines):
        return (f"the image build reached no package index for {missing[-1]}: check the network and the pip "
                "settings (pip config list), then run the same command again")
    if missing:
        return (f"the image build found no {missing[-1]} in the package indexes of this machine's pip settings "
                "(pip config list): fix the settings or requirements.lock, then run the same command again")
    errors = [line for line in lines if line.startswith("Error:")] or lines[-1:] or ["no output"]
    return f"the image build failed: {errors[-1]} (the build's output is above)"


def build_image(tag: str = IMAGE, base: str = BASE_IMAGE, commit: str | None = None,
                no_cache: bool = False) -> float:
    """``podman build`` of the Dockerfile on ``base``; returns the build's wall time in seconds."""
    with tempfile.TemporaryDirectory(prefix="dagan-build-home-") as home:
        config, mounts = build_settings(pip_settings())
        (Path(home) / ".config" / "pip").mkdir(parents=True)
        (Path(home) / ".config" / "pip" / "pip.conf").write_text(config)
        volumes = ["--volume", f"{home}:{BUILD_HOME}:ro"]
        for source, target in mounts.items():
            (Path(home) / target.removeprefix(BUILD_HOME + "/")).parent.mkdir(parents=True, exist_ok=True)
            placeholder = Path(home) / target.removeprefix(BUILD_HOME + "/")
            placeholder.mkdir() if source.is_dir() else placeholder.touch()
            volumes += ["--volume", f"{source}:{target}:ro"]
        command = podman_command("build", "--network", "host", *ulimit_flags(), *volumes,
                                 *(["--no-cache"] if no_cache else []), "--build-arg", f"BASE_IMAGE={base}",
                                 "--build-arg", f"GIT_COMMIT={commit or git_commit()}",
                                 "--tag", tag, "--file", str(ROOT / "Dockerfile"), str(ROOT))
        return _run_build(command)


def _run_build(command: list[str]) -> float:
    start = time.monotonic()
    code, tail = run_to_end(command, echo=True)
    if code != 0:
        raise ContainerError(build_failure(tail))
    return time.monotonic() - start


def run_to_end(command: list[str], echo: bool) -> tuple[int, list[str]]:
    """Run ``command`` (its output echoed when ``echo``); returns its status and its last 200 lines. An
    exception here (Ctrl-C, SIGTERM) stops the command first, with SIGTERM, so that podman and debootstrap
    clean up after themselves."""
    tail: deque[str] = deque(maxlen=200)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if echo:
                sys.stdout.write(line)
            tail.append(line)
        return process.wait(), list(tail)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def prune_dangling() -> None:
    """Remove this project's untagged images (the previous build's layers no tag uses any more)."""
    podman("image", "prune", "--force", "--filter", f"label=org.opencontainers.image.title={IMAGE_TITLE}",
           check=False)


def ensure_base(base: str = BASE_IMAGE, mirror: str | None = None, rebuild: bool = False) -> None:
    """Make the local base once (or again with ``rebuild``)."""
    if rebuild or not image_exists(base):
        make_base(base, mirror)
