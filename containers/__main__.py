"""``python -m containers``: build the project image here and run the container tests.

  python -m containers image          podman (apt) + the local base (once) + the image (layers reused)
  python -m containers test           the image, then the container tests (tests/test_containers_*.py)
  python -m containers clean [--base] remove the image (and the base)
  python -m containers report FILE    the Markdown tables of a results file (docs/KUBEFLOW.md)

``--record FILE`` (image, test) appends the timings, the image's size and its largest layers to a
JSON results file. Errors end in one line and exit code 2; an interrupt removes what was started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from containers.image import BASE_IMAGE, IMAGE, ROOT, build_image, ensure_base, prune_dangling
from containers.kfp_local import remove_session_containers
from containers.podman import ContainerError, ensure_installed, image_exists, image_size, podman, ulimit_flags

CONTAINER_TESTS = ("tests/test_containers_image.py", "tests/test_containers_pipeline.py",
                   "tests/test_containers_trainjob.py")
IMAGE_ENV, SESSION_ENV = "DAGAN_CONTAINER_IMAGE", "DAGAN_CONTAINER_SESSION"
INTERRUPT_GRACE_S = 90


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m containers", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("image", "build the image (and the local base once)"),
                       ("test", "build the image, then run the container tests")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--tag", default=IMAGE, help=f"image name (default {IMAGE})")
        command.add_argument("--base", default=BASE_IMAGE,
                             help=f"base image; the default {BASE_IMAGE} is made here with debootstrap")
        command.add_argument("--mirror", help="Debian mirror for the base (default: the machine's apt sources)")
        command.add_argument("--rebuild-base", action="store_true", help="make the local base again")
        command.add_argument("--no-cache", action="store_true", help="build every layer again")
        command.add_argument("--record", type=Path, help="append timings and sizes to this JSON results file")
    clean = commands.add_parser("clean", help="remove the image (and with --base the local base)")
    clean.add_argument("--tag", default=IMAGE)
    clean.add_argument("--base", action="store_true")
    report = commands.add_parser("report", help="print the Markdown tables of a results file")
    report.add_argument("file", type=Path)
    return parser.parse_args(argv)


def image(args: argparse.Namespace) -> dict[str, Any]:
    """podman, the base and the image; returns what was measured."""
    ensure_installed()
    start = time.monotonic()
    if args.base == BASE_IMAGE:
        ensure_base(args.base, args.mirror, args.rebuild_base)
    elif not image_exists(args.base):
        raise ContainerError(f"base image {args.base} does not exist here; pull or build it first, or leave --base "
                             "out to make the local one")
    base_s = time.monotonic() - start
    load_before = os.getloadavg()[0]
    build_s = build_image(args.tag, args.base, no_cache=args.no_cache)
    prune_dangling()
    size = image_size(args.tag)
    print(f"image {args.tag}: {size / 2**30:.2f} GiB, built in {build_s:.0f} s", flush=True)
    measured = {"base_s": round(base_s, 1), "build_s": round(build_s, 1), "no_cache": args.no_cache,
                "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
                "image_bytes": size}
    if args.record:  # what takes the space (a minute of du over the image)
        measured.update(layers=layers(args.tag), contents=contents(args.tag))
    return measured


def layers(tag: str) -> list[dict[str, Any]]:
    """The image's non-empty layers, largest first: size and the instruction that made it."""
    history = json.loads(podman("history", "--format", "json", tag).stdout)
    rows = [{"bytes": entry["size"], "instruction": " ".join(entry["CreatedBy"].removeprefix("/bin/sh -c ")
                                                                 .removeprefix("#(nop) ").split())[:90]}
            for entry in history if entry["size"]]
    return sorted(rows, key=lambda row: -row["bytes"])


# What takes the space inside: the largest installed packages and all compiled bytecode.
CONTENTS_SCRIPT = (
    "cd /opt/venv/lib/python3.11/site-packages && du -sk * | sort -rn | head -12; "
    "echo \"$(find /opt/venv -name __pycache__ -type d -exec du -sk {} + | awk '{s+=$1} END {print s}')"
    "\t(compiled bytecode, __pycache__)\"; du -sk /usr /etc /var | sort -rn"
)


def contents(tag: str) -> list[dict[str, Any]]:
    listing = podman("run", "--rm", *ulimit_flags(), "--network", "none", tag, "sh", "-c", CONTENTS_SCRIPT).stdout
    rows = [line.split("\t", 1) for line in listing.splitlines() if "\t" in line]
    return [{"bytes": int(kib) * 1024, "path": path} for kib, path in rows]


def run_tests(args: argparse.Namespace, pytest_args: Sequence[str]) -> int:
    """The container tests in their own process group; an interrupt reaches them as SIGINT (their fixtures
    clean up), and whatever is still left afterwards (containers of the session, processes) is removed."""
    session = uuid.uuid4().hex[:12]
    env = {**os.environ, IMAGE_ENV: args.tag, SESSION_ENV: session, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", *CONTAINER_TESTS, *pytest_args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        return process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group's stragglers (an API service of a killed test)
        except ProcessLookupError:
            pass
        left = remove_session_containers(session)
        if left:
            print(f"removed {len(left)} container(s) the tests left behind", file=sys.stderr)


def record(path: Path, entry: dict[str, Any]) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.common import machine

    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs.append({**entry, "machine": machine(), "command": "python -m containers " + " ".join(sys.argv[1:])})
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


def clean(args: argparse.Namespace) -> None:
    for name in (args.tag, *((BASE_IMAGE,) if args.base else ())):
        if image_exists(name):
            podman("rmi", "--force", name)
            print(f"removed {name}")
    prune_dangling()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parse(argv[:argv.index("--")] if "--" in argv else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally blocks, as Ctrl-C does
    try:
        if args.command == "report":
            return report(args.file)
        if args.command == "clean":
            clean(args)
            return 0
        measured = image(args)
        code = 0
        if args.command == "test":
            start = time.monotonic()
            code = run_tests(args, pytest_args)
            measured["tests_s"] = round(time.monotonic() - start, 1)
            measured["tests_passed"] = code == 0
        if args.record:
            record(args.record, {"step": args.command, **measured})
        return code
    except ContainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything this command started is removed", file=sys.stderr)
        return 130


def report(path: Path) -> int:
    """The tables of docs/KUBEFLOW.md "Build and push the image" from a results file."""
    runs = json.loads(path.read_text())["runs"]

    def row(run: dict[str, Any]) -> str:
        kind = "from scratch" if run["no_cache"] else "layers reused"
        tests = f"{run['tests_s']:.0f}" if "tests_s" in run else ""
        return (f"| {run['machine']['date']} | `{run['command']}` | {kind} | {run['base_s']:.0f} | "
                f"{run['build_s']:.0f} | {tests} | {run['image_bytes'] / 2**30:.2f} | "
                f"{run['load_1min_before']:.1f}–{run['load_1min_after']:.1f} |")

    print("| when | command | layers | base s | build s | tests s | image GiB | load (1 min) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(row(run) for run in runs))
    latest = runs[-1]
    print("\n| layer (largest first) | GiB |\n|---|---|")
    print("\n".join(f"| `{layer['instruction']}` | {layer['bytes'] / 2**30:.3f} |" for layer in latest["layers"][:3]))
    print("\n| inside the image | GiB |\n|---|---|")
    print("\n".join(f"| {item['path']} | {item['bytes'] / 2**30:.3f} |" for item in latest["contents"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
