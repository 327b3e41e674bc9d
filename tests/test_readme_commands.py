"""Every fenced shell command of the README (and of docs/MODEL.md's `describe` block) runs as written, or
says why it does not here, so that a command in the docs cannot rot unnoticed.

Each command is classified in :data:`COMMANDS`: run in a sandbox project folder, where the docs' relative
paths resolve (``.venv`` and ``references/`` link to the checkout's, ``params.yaml`` is the project's with a
tiny synthetic dataset that the project's own synthesize and prepare make there), or skipped with the reason
and the test that covers what it does. A command added to, changed in or removed from the docs without
updating :data:`COMMANDS` fails :func:`test_every_command_of_the_docs_is_classified`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/MODEL.md")
FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
TINY_DATA = {"num_train": 16, "num_val": 8}


@dataclass(frozen=True)
class Run:
    """Run in the sandbox (``where="checkout"``: in the checkout, read-only commands); exit 0, with ``before``
    and ``then`` (shell commands run before and after it in the same shell) succeeding too. ``server``: a server
    that must answer on its port; it is stopped after the check."""

    then: str = ""
    before: str = ""
    where: str = "sandbox"
    server: bool = False


@dataclass(frozen=True)
class Skip:
    reason: str


COMMANDS: dict[str, Run | Skip] = {
    "make run": Skip("the README's main job (minutes): `python -m bench.make_targets run` times it from a fresh clone"),
    "make test": Skip("runs this test"),
    ".venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5001 --workers 1":
        Run(server=True),
    ".venv/bin/dvc plots show": Skip("draws make run's outputs (losses.tsv, sample grid, per-class IoU) in the "
                                     "checkout's DVC repository; tests/test_train_outputs.py runs the train stage "
                                     "under a real dvc repro"),
    "source .venv/bin/activate": Run(then="command -v python dvc mlflow torchrun"),
    "dvc exp run -S model.variant=B1 -S train.max_steps=40": Skip(
        "a DVC experiment of the whole pipeline (minutes); tests/test_train_outputs.py runs the train stage with "
        "max_steps below the sampling interval under a real dvc repro"),
    "dvc exp show --only-changed": Run(where="checkout"),
    "python -m components.train -S train.out_dir=outputs/scratch -S model.ngf=8 -S train.max_steps=20": Run(
        then="test -s outputs/scratch/checkpoints/final.pt"),
    ".venv/bin/python -m dagan verify-official references/official/dagan-cityscapes-1": Run(),
    ".venv/bin/python -m dagan import-official --generator latest_net_G.pth --preset cityscapes "
    "--out dagan-cityscapes.pt": Skip(
        "needs the authors' checkpoint (not downloadable here); the command on official-format files: "
        "tests/test_official.py::test_import_then_export_gives_the_official_files_back_key_for_key"),
    ".venv/bin/python -m dagan generate --model dagan-cityscapes.pt --labels LABELS/ --instances INSTANCES/ "
    "--out out/": Skip("needs the imported model above; the command on an imported model: "
                       "tests/test_official.py::test_an_imported_official_model_generates_from_label_pngs"),
    # a small model the official code can run (B1, as SPADE) stands in for a trained one in outputs/train
    ".venv/bin/python -m dagan export-official --checkpoint outputs/train/checkpoints/final.pt "
    "--out official/my_model": Run(
        before="python -m components.train -q -S train.out_dir=outputs/train -S model.variant=B1 -S model.ngf=8 "
               "-S train.max_steps=2",
        then="test -s official/my_model/latest_net_G.pth"),
    ".venv/bin/python -m dagan describe --preset cityscapes --variant B6 --json": Run(),
    ".venv/bin/python -m dagan describe --preset cityscapes -S model.generator=ccfpse -S model.discriminator=fpse "
    "--json": Run(),
    ".venv/bin/python -m dagan describe --preset cityscapes -S model.generator=ccfpse -S model.discriminator=fpse "
    "-S model.style=vae --json": Run(),
    ".venv/bin/python -m dagan describe --preset celebamask_hq --generator ca2sis -S dataset.crop_size=256 "
    "-S model.ngf=32 -S model.ca2sis_exclude_background=true -S model.n_layers_d=3": Run(),
    ".venv/bin/python -m dagan describe --preset cityscapes --variant B6 -S model.style=vae --json": Run(),
}


def doc_commands() -> list[str]:
    """The shell commands of :data:`DOCS`' bash blocks in order: continuation lines joined, comments dropped,
    whitespace normalised."""
    commands = []
    for doc in DOCS:
        for block in FENCE.findall((ROOT / doc).read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.append(shlex.join(words).replace("'", ""))
    return commands


def test_every_command_of_the_docs_is_classified():
    commands = doc_commands()
    unclassified = [command for command in commands if command not in COMMANDS]
    stale = [command for command in COMMANDS if command not in commands]
    assert not unclassified, f"classify these commands of {', '.join(DOCS)} in COMMANDS (Run or Skip): {unclassified}"
    assert not stale, f"COMMANDS lists commands that no longer are in the docs: {stale}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A project folder for the docs' commands: the checkout's .venv and references/, its params.yaml with a tiny
    synthetic dataset, made there by the project's own synthesize and prepare."""
    folder = tmp_path_factory.mktemp("readme")
    for name in (".venv", "references"):
        (folder / name).symlink_to(ROOT / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"].update(TINY_DATA)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for step in ("synthesize", "prepare"):
        shell(f"python -m components.{step} -q", folder)
    return folder


def shell(command: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=environment(), capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"`{command}` in {cwd} exited {result.returncode}:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


def environment() -> dict[str, str]:
    """The checkout's virtualenv first on the PATH, as after `source .venv/bin/activate`; one thread per process
    beside the rest of the suite."""
    path = os.pathsep.join([str(ROOT / ".venv" / "bin"), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the docs' commands track where params.yaml says
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_server(command: str, cwd: Path) -> None:
    """Start the server with a free port for its own, wait until it answers, stop its process group."""
    port = free_port()
    command = re.sub(r"--port \d+", f"--port {port}", command)
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=environment(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"`{command}` exited {process.returncode}: {process.stdout.read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                    assert response.status == 200
                    return
            except OSError:
                assert time.monotonic() < deadline, f"`{command}` did not answer on port {port} within 120 s"
                time.sleep(1)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def test_the_runnable_commands_run_as_written_in_order(sandbox):
    ran = []
    for command in doc_commands():
        rule = COMMANDS[command]
        if isinstance(rule, Skip):
            continue
        cwd = ROOT if rule.where == "checkout" else sandbox
        if rule.server:
            check_server(command, cwd)
        else:
            shell(" && ".join(filter(None, [rule.before, command, rule.then])), cwd)
        ran.append(command)
    assert len(ran) == sum(isinstance(rule, Run) for rule in COMMANDS.values())


def test_the_mlflow_link_of_the_readme_names_the_experiment_make_run_creates(sandbox):
    """The README's link opens experiment 1 of a new mlflow.db: the training above created it as "dagan"."""
    if not (sandbox / "mlflow.db").exists():
        shell("python -m components.train -S train.out_dir=outputs/link -S model.ngf=8 -S train.max_steps=1", sandbox)
    readme = (ROOT / "README.md").read_text()
    experiment_id = re.search(r"#/experiments/(\d+)/runs", readme)[1]
    name = re.search(r'\(experiment "(\w+)"\)', readme)[1]
    script = ("import mlflow; e = mlflow.MlflowClient('sqlite:///mlflow.db').get_experiment_by_name(" + repr(name) +
              "); print(e.experiment_id if e else None)")
    found = shell(f"python -c {shlex.quote(script)}", sandbox).stdout.strip().splitlines()[-1]
    assert found == experiment_id, json.dumps({"readme": experiment_id, "store": found})
