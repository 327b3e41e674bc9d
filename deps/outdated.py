"""``make outdated`` (``python -m deps.outdated``): which pinned direct dependencies have newer releases.

The direct dependencies are pyproject.toml's (``dependencies`` and every optional group); their
exact versions are in ``requirements.lock`` (what the pipeline and the image run with) and
``requirements-dev.lock`` (the tests' and the lint's tools). Each pin is compared with the newest
release the package index offers, asked through ``pip index versions`` so that pip's own
configuration (index URL, mirrors, find-links) applies.

A pin kept back on purpose is listed in its lock file's header, one line each::

    # held NAME: why (which package's requirement excludes the newer release)

and the report prints that reason. For every newer release it also names the installed packages
whose requirements exclude it (a hint where the reason is a direct one) and pyproject.toml's own
range when that excludes it. Exit status: 0 when every pin is the newest release or held with a
reason, 1 when a pin could move, 2 when the index could not be asked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK_FILES = ("requirements.lock", "requirements-dev.lock")
HELD = re.compile(r"^#\s*held\s+([A-Za-z0-9._-]+)\s*:\s*(.+)$")
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
INDEX_TIMEOUT_S = 120
PROJECT = "dagan"


@dataclass(frozen=True)
class Pin:
    name: str  # as pyproject.toml spells it
    requirement: Requirement  # pyproject.toml's
    pinned: str | None  # the lock's version; None: not pinned (a defect)
    lock: str | None  # the lock file that pins it


@dataclass(frozen=True)
class Finding:
    pin: Pin
    newest: str | None
    status: str  # "newest" | "held" | "newer" | "unpinned"
    notes: tuple[str, ...]


def direct_requirements(repo: Path = REPO) -> list[Requirement]:
    """pyproject.toml's ``dependencies`` and every ``optional-dependencies`` group, in that order."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    groups = [project.get("dependencies", []), *project.get("optional-dependencies", {}).values()]
    return [Requirement(text) for group in groups for text in group]


def lock_pins(repo: Path = REPO) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """({canonical name: (version, lock file)}, {canonical name: why it is held}) of the lock files."""
    pins: dict[str, tuple[str, str]] = {}
    held: dict[str, str] = {}
    for name in LOCK_FILES:
        for line in (repo / name).read_text().splitlines():
            if match := HELD.match(line.strip()):
                held[canonicalize_name(match.group(1))] = match.group(2).strip()
            elif match := PIN.match(line.strip()):
                pins[canonicalize_name(match.group(1))] = (match.group(2), name)
    return pins, held


def pinned_direct_dependencies(repo: Path = REPO) -> tuple[list[Pin], dict[str, str]]:
    """Every direct dependency with its pin, and the held reasons."""
    pins, held = lock_pins(repo)
    result = []
    for requirement in direct_requirements(repo):
        version, lock = pins.get(canonicalize_name(requirement.name), (None, None))
        result.append(Pin(requirement.name, requirement, version, lock))
    return result, held


def newest_release(name: str) -> str:
    """The newest release of ``name`` on the configured index (``pip index versions``: no pre-releases)."""
    command = [sys.executable, "-m", "pip", "index", "versions", "--json", name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=INDEX_TIMEOUT_S)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LookupError(f"`pip index versions {name}` failed: {reason}")
    return str(json.loads(result.stdout)["latest"])


def excluding_requirements(name: str, version: str) -> list[str]:
    """Installed packages whose requirements on ``name`` exclude ``version`` ("kfp 2.17.3 requires kubernetes<31")."""
    found = []
    for dist in distributions():
        if canonicalize_name(dist.metadata["Name"]) == PROJECT:  # its ranges are pyproject.toml's, reported apart
            continue
        for text in dist.requires or []:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if canonicalize_name(requirement.name) != canonicalize_name(name):
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if not requirement.specifier.contains(version, prereleases=True):
                found.append(f"{dist.metadata['Name']} {dist.version} requires {name}{requirement.specifier}")
    return sorted(set(found))


def classify(pin: Pin, newest: str | None, held: dict[str, str], blockers: list[str]) -> Finding:
    """The verdict on one pin given the index's newest release."""
    if pin.pinned is None:
        return Finding(pin, newest, "unpinned", (f"not pinned in {' or '.join(LOCK_FILES)}",))
    if newest is None or Version(newest) <= Version(pin.pinned):
        return Finding(pin, newest, "newest", ())
    notes = list(blockers)
    if not pin.requirement.specifier.contains(newest, prereleases=True):
        notes.append(f"pyproject.toml requires {pin.requirement.name}{pin.requirement.specifier}")
    reason = held.get(canonicalize_name(pin.name))
    if reason:
        return Finding(pin, newest, "held", (f"held: {reason}", *notes))
    return Finding(pin, newest, "newer", tuple(notes))


def report(findings: list[Finding]) -> str:
    """One line per direct dependency: name, pin, newest release, verdict and notes."""
    width = max(len(finding.pin.name) for finding in findings)
    version_width = max(len(version or "") for finding in findings for version in (finding.pin.pinned, finding.newest))
    lines = []
    for finding in findings:
        pin = finding.pin
        verdict = {"newest": "up to date", "held": "newer release, held", "newer": "NEWER RELEASE: move the pin",
                   "unpinned": "NOT PINNED"}[finding.status]
        notes = "".join(f"\n{'':{width + 2}}- {note}" for note in finding.notes)
        versions = f"{pin.pinned or '-':>{version_width}} -> {finding.newest or '?':<{version_width}}"
        lines.append(f"{pin.name:{width}}  {versions}  {verdict}{f' ({pin.lock})' if pin.lock else ''}{notes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deps.outdated", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    pins, held = pinned_direct_dependencies()
    pool = ThreadPoolExecutor(max_workers=8)
    try:
        newest = list(pool.map(lambda pin: newest_release(pin.name), pins))
    except (LookupError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as err:
        pool.shutdown(cancel_futures=True)  # one failure is the answer: ask no further
        print(f"error: cannot ask the package index: {err}; check pip's index configuration (pip config list)",
              file=sys.stderr)
        return 2
    pool.shutdown()
    findings = [classify(pin, latest, held, excluding_requirements(pin.name, latest) if pin.pinned and
                         Version(latest) > Version(pin.pinned) else [])
                for pin, latest in zip(pins, newest, strict=True)]
    print(report(findings))
    return 1 if any(finding.status in ("newer", "unpinned") for finding in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
