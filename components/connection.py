"""The tracking store a step talks to: where it is, who may create it, how long a call may wait.

* **Where.** A relative sqlite path (the default ``sqlite:///mlflow.db``) is resolved against the
  repository the run comes from: ``$DVC_ROOT`` when DVC runs the step (DVC sets it for every stage;
  in a queued or temporary experiment, ``dvc exp run --queue`` / ``--temp``, it names the project,
  not the throwaway copy the experiment runs in), else the working directory. So every experiment
  of a DVC queue, parallel workers included, tracks into the project's one store, and a new MLflow
  experiment keeps its artifacts in ``mlruns/`` beside that store (:func:`artifact_location`).
* **Who creates it.** A new sqlite store is created under an exclusive lock (``<store>.lock``), so
  processes that start at once (the workers of ``dvc queue start -j 2``) never both create its
  tables; :func:`store_lock` also serialises the registry's champion decision on such a store.
  Writers of one sqlite file then take turns (SQLite's own lock).
* **How long.** A call to a tracking server gives up after bounded retries: MLflow's
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_TIMEOUT`` / ``_BACKOFF_FACTOR`` default here to
  ``SERVER_RETRIES`` retries of up to ``SERVER_TIMEOUT_S`` each (values set in the environment win), so a
  server that refuses connections fails a call in seconds and one that hangs in about a minute and a
  half, instead of MLflow's own minutes; :func:`outage_line` turns that failure into one line.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.settings import redact_uri

SQLITE = "sqlite:///"
DVC_ROOT_ENV = "DVC_ROOT"  # set by DVC for every stage: the project's root, also in queued experiments
SERVER_RETRIES = 2  # retries after the first try of a call to a tracking server
SERVER_TIMEOUT_S = 30  # seconds each try may wait for the server's answer
SERVER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(SERVER_RETRIES),
              "MLFLOW_HTTP_REQUEST_TIMEOUT": str(SERVER_TIMEOUT_S),
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false"}  # a Retry-After header must not unbound the wait
ARTIFACTS_DIR = "mlruns"  # MLflow's own default beside a local store
# what MLflow's REST client says when the server did not answer (any HTTP status >= 500 included)
OUTAGE_MARKS = ("API request to", "Max retries exceeded", "Connection refused", "Read timed out",
                "failed with error code 5")


def repository_root() -> Path:
    """Where relative store paths point: ``$DVC_ROOT`` (the project, also for queued experiments), else here."""
    return Path(os.environ.get(DVC_ROOT_ENV) or os.getcwd())


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store (relative paths resolved against :func:`repository_root`), else None."""
    if not uri.startswith(SQLITE):
        return None
    path = Path(uri[len(SQLITE):].split("?", 1)[0])
    return path if path.is_absolute() else repository_root() / path


def resolve_store_uri(uri: str) -> str:
    """``uri`` with a relative sqlite path made absolute (see the module docstring); other URIs unchanged."""
    path = sqlite_path(uri)
    if path is None or Path(uri[len(SQLITE):]).is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"{SQLITE}{path}" + (f"?{query}" if query else "")


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local store keeps its artifacts: ``mlruns/`` beside the store (MLflow's own
    default, but never inside a DVC experiment's throwaway copy); None for a server (it decides)."""
    path = sqlite_path(uri)
    return (path.parent / ARTIFACTS_DIR).resolve().as_uri() if path is not None else None


def bound_server_waits() -> None:
    """MLflow's HTTP retry settings for a tracking server, bounded (values already in the environment win)."""
    for name, value in SERVER_ENV.items():
        os.environ.setdefault(name, value)


def check_sqlite_store_writable(uri: str) -> None:
    """A sqlite store needs a folder this user can write (the database and its journal; MLflow creates missing
    folders): say so in one line."""
    database = sqlite_path(uri)
    if database is None:
        return
    folder = database.absolute().parent
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"MLflow tracking store {redact_uri(uri)}: {existing} is not a folder this user (uid "
                         f"{os.getuid()}) can write; set MLFLOW_TRACKING_URI (a tracking server, or "
                         "sqlite:////PATH/mlflow.db in a writable folder) or -S mlflow.tracking_uri=...")


_held: set[Path] = set()  # the store locks this process holds (store_lock is re-entrant)


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held by one process at a time for a sqlite store (a lock file beside it, released when the process dies);
    nothing for a server, which serialises its own writes. Re-entrant: a process holding it may take it again."""
    path = sqlite_path(uri)
    if path is None or path.resolve() in _held:
        yield
        return
    check_sqlite_store_writable(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _held.add(path.resolve())
        try:
            yield
        finally:
            _held.discard(path.resolve())
            fcntl.flock(lock, fcntl.LOCK_UN)


def create_store(uri: str) -> None:
    """Open the store once under :func:`store_lock`: a new sqlite store gets its tables from one process only."""
    if sqlite_path(uri) is None:
        return
    from mlflow import MlflowClient

    with store_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the tables when missing


def outage_cause(error: BaseException) -> str | None:
    """Why an MLflow call failed when the tracking server did not answer (refused, timed out, HTTP 5xx); None for
    every other error."""
    classes = {cls.__name__ for cls in type(error).__mro__}
    if "RequestException" not in classes and (  # requests' own error, or MLflow's REST client's
            "MlflowException" not in classes or not any(mark in str(error) for mark in OUTAGE_MARKS)):
        return None
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (cause.split("(Caused by ", 1)[-1].rstrip(")'\"") if "(Caused by " in cause else cause)[:200]


def outage_line(error: BaseException) -> str | None:
    """One line for an MLflow call that failed because the tracking server did not answer; None for other errors."""
    cause = outage_cause(error)
    if cause is None:
        return None
    import mlflow  # already loaded: the error is MLflow's

    tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", SERVER_RETRIES)) + 1
    timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", SERVER_TIMEOUT_S)
    return (f"the MLflow tracking server {redact_uri(mlflow.get_tracking_uri())} did not answer ({cause}; "
            f"{tries} tries of up to {timeout} s); "
            "start it, or point mlflow.tracking_uri / $MLFLOW_TRACKING_URI at a running one, then run the same "
            "command again")
