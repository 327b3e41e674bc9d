"""``make outdated`` (deps/outdated.py): every direct dependency is pinned, held pins say why, and the real
command reports a newer release against a local package index (pip's find-links, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from deps.outdated import lock_pins, pinned_direct_dependencies

REPO = Path(__file__).resolve().parents[1]


def test_every_direct_dependency_is_pinned_and_every_held_pin_exists():
    pins, held = pinned_direct_dependencies()
    assert {"mlflow", "kfp", "dvc[s3]", "ray[default,tune]", "boto3", "pyarrow", "torch"} <= {str(pin.name) + (
        f"[{','.join(sorted(pin.requirement.extras))}]" if pin.requirement.extras else "") for pin in pins}
    assert [pin.name for pin in pins if pin.pinned is None] == []
    assert [pin.name for pin in pins if not pin.requirement.specifier.contains(pin.pinned)] == []
    locked, _ = lock_pins()
    assert held and set(held) <= set(locked)


def _index(folder: Path, versions: dict[str, list[str]]) -> None:
    """Wheel file names are all ``pip index versions`` reads from a find-links folder."""
    folder.mkdir()
    for name, releases in versions.items():
        for release in releases:
            (folder / f"{canonicalize_name(name).replace('-', '_')}-{release}-py3-none-any.whl").touch()


def _outdated(index: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index), "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run([sys.executable, "-m", "deps.outdated"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_report_names_a_newer_release_and_a_held_pin_with_its_reason(tmp_path):
    pins, held = pinned_direct_dependencies()
    versions = {pin.name: [str(pin.pinned)] for pin in pins}
    versions["mlflow"].append("99.0.0")  # a newer release nobody held: the pin should move
    versions["kubernetes"].append("99.0.0")  # held in requirements.lock (kfp's cap)
    _index(tmp_path / "index", versions)
    result = _outdated(tmp_path / "index")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    mlflow_line = next(line for line in lines if line.startswith("mlflow "))
    assert "-> 99.0.0" in mlflow_line and "NEWER RELEASE" in mlflow_line
    kubernetes = lines.index(next(line for line in lines if line.startswith("kubernetes ")))
    assert "held" in lines[kubernetes] and held["kubernetes"] in lines[kubernetes + 1]
    assert sum("up to date" in line for line in lines) == len(pins) - 2


def test_an_index_that_cannot_answer_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _outdated(tmp_path / "empty")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot ask the package index")
