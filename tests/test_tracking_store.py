"""Which tracking store a step talks to (components/connection.py) and what it says about its URI
(components/settings.py): relative sqlite paths against the repository a DVC experiment came from, one process
creating a new sqlite store, every ``user:password@`` form recognised, an unparseable URI refused unshown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.connection import artifact_location, resolve_store_uri
from components.settings import check_tracking_uri, redact_uri, split_credentials
from dagan.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_a_relative_sqlite_store_is_the_repositorys_own(tmp_path, monkeypatch):
    """DVC names the project in $DVC_ROOT for every stage, also in a queued experiment's throwaway copy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert resolve_store_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", "/project")
    assert resolve_store_uri("sqlite:///mlflow.db") == "sqlite:////project/mlflow.db"
    assert resolve_store_uri("sqlite:///stores/mlflow.db?timeout=30") == "sqlite:////project/stores/mlflow.db?timeout=30"
    assert resolve_store_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert resolve_store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert artifact_location("sqlite:///mlflow.db") == "file:///project/mlruns"  # never inside the throwaway copy
    assert artifact_location("http://127.0.0.1:5000") is None  # the server decides


RACE = """
import pathlib, sys, time
from components.outputs import connect_tracking
import mlflow
pathlib.Path(sys.argv[2] + "." + sys.argv[3]).touch()  # imported: ready
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.001)
connect_tracking(sys.argv[1])
mlflow.MlflowClient().search_experiments()
"""


def test_processes_creating_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """The pipeline's own concurrency (parallel DVC queue workers): a new store gets its tables from one process."""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", RACE, f"sqlite:///{tmp_path / 'new.db'}", str(go), str(n)],
                                  cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for n in range(2)]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"go.{n}").exists() for n in range(2)):
        assert time.monotonic() < deadline and all(process.poll() is None for process in processes)
        time.sleep(0.1)
    go.touch()  # both start creating the store within a millisecond
    errors = [process.communicate(timeout=600)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n".join(error[-2000:] for error in errors)


SECRET = "s3cr/t?x#y@z"  # ends a URL's authority three ways, and holds an @


@pytest.mark.parametrize("uri, public", [
    ("http://alice:pw@mlflow.example.com:5000", "http://mlflow.example.com:5000"),
    ("http://alice:p%2Fw@host/path?q=1", "http://host/path?q=1"),
    (f"http://alice:{SECRET}@host:5000/x", "http://host:5000/x"),
    (f"https://{SECRET}@host", "https://host"),  # a token as the user name
    (f"postgresql+psycopg2://alice:{SECRET}@db:5432/mlflow", "postgresql+psycopg2://db:5432/mlflow"),
    ("http://alice:p@ss@[::1]:80/", "http://[::1]:80/"),
    ("sqlite:////data/a@b/mlflow.db", "sqlite:////data/a@b/mlflow.db"),  # no authority: a path with an @
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("databricks", "databricks"),
])
def test_every_user_password_form_is_redacted(uri, public):
    assert redact_uri(uri) == public
    if uri != public:
        assert split_credentials(uri)[1] in ("alice", SECRET)


@pytest.mark.parametrize("uri", [f"http://alice:{SECRET}@host:5000", "http://alice:12/3@host", "http://[::1",
                                 "http://alice:pw@host:p0rt", "http://host:99999", "  "])
def test_an_unparseable_uri_is_refused_without_showing_it(uri):
    with pytest.raises(ConfigError) as refused:
        check_tracking_uri(uri, "mlflow.tracking_uri")
    message = str(refused.value)
    assert message.startswith("mlflow.tracking_uri ") and "\n" not in message
    for part in ("s3cr", "alice", "12/3", "p0rt", "99999"):
        assert part not in message


def test_a_component_refuses_an_unencoded_password_in_one_line_that_does_not_show_it(tmp_path):
    (tmp_path / "mlflow_run.json").write_text('{"run_id": "0"}')  # a training to log into
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "final.pt").write_bytes(b"a checkpoint")  # evaluate names it before it connects
    uri = f"http://alice:{SECRET}@127.0.0.1:1"
    for variable, overrides in ((None, ["-S", f"mlflow.tracking_uri={uri}"]), (uri, [])):
        env = {**os.environ, "PYTHONPATH": str(REPO), **({"MLFLOW_TRACKING_URI": variable} if variable else {})}
        command = [sys.executable, "-m", "components.evaluate", "-S", f"train.out_dir={tmp_path}",
                   "-S", f"evaluate.out_dir={tmp_path / 'eval'}", *overrides]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "cannot be parsed as a URI" in lines[0], result.stderr[-2000:]
        assert "s3cr" not in result.stderr + result.stdout and "alice" not in result.stderr + result.stdout
