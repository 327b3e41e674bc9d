"""The training's tracking outbox: training never waits on the MLflow tracking server.

components.train's logger puts what it tracks (metrics, sample grids, checkpoints as logged
models, the run's end) into an :class:`Outbox` and returns at once; one background thread sends
the entries in order. While the server does not answer, the thread retries every
``RETRY_PAUSE_S`` seconds and training goes on, the entries waiting in memory (a metrics entry is a
few hundred bytes; sample grids beyond the newest ``KEPT_IMAGES`` are dropped while waiting).

When training ends the outbox waits for the entries to go out as long as they keep going out
(at most ``IDLE_LIMIT_S`` without progress, ``SIGNAL_IDLE_LIMIT_S`` after a stop signal, so that
a preempted pod exits within its grace period), then writes what is left to
``<train.out_dir>/mlflow_pending.jsonl`` (metrics, checkpoints and the run's end; sample grids
stay in ``samples/latest.png``) and says so in one line. The next ``components.train`` or
``components.evaluate`` with that ``train.out_dir`` sends them first.

No metric step is sent twice: before the first metrics of a run that this process did not
create (a resumed run, pending entries), the steps the run already holds are read back, and a
metric (or sample grid) at or below the last step the run holds for that key is not sent again.
So a resumed run, which recomputes the steps after its checkpoint, adds no duplicate steps.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric

from components.connection import outage_cause
from components.logged_models import log_checkpoint_model
from components.outputs import write_png
from components.settings import redact_uri
from dagan.atomic import atomic_write_text

log = logging.getLogger("components")

PENDING_FILE = "mlflow_pending.jsonl"  # in train.out_dir
RETRY_PAUSE_S = 5.0
IDLE_LIMIT_S = 60.0  # at the end: stop waiting once nothing went out for this long
SIGNAL_IDLE_LIMIT_S = 10.0  # the same after SIGTERM / SIGINT
KEPT_IMAGES = 4  # sample grids kept while the server does not answer (the newest)


@dataclass
class Entry:
    """One thing to send to run ``run_id``; ``kind``: metrics | image | checkpoint | end."""

    kind: str
    run_id: str
    step: int = 0
    values: dict[str, Any] = field(default_factory=dict)  # metrics; image: {"key"}; checkpoint: {"path"};
    # end: {"status", "tags"}
    timestamp: int = field(default_factory=lambda: int(time.time() * 1000))
    image: np.ndarray | None = None

    def record(self) -> dict[str, Any] | None:
        """The JSON line of ``mlflow_pending.jsonl`` (None for a sample grid: it stays in samples/latest.png)."""
        if self.kind == "image":
            return None
        return {"kind": self.kind, "run_id": self.run_id, "step": self.step, "values": self.values,
                "timestamp": self.timestamp}


def is_transient(error: BaseException) -> bool:
    """The server did not answer (or a sqlite store was busy): send again later."""
    return outage_cause(error) is not None or "database is locked" in str(error)


class Outbox:
    """Entries sent in order by one background thread; see the module docstring."""

    def __init__(self, out_dir: Path):
        self.pending_file = out_dir / PENDING_FILE
        self.entries: deque[Entry] = deque()
        self.changed = threading.Condition()
        self.sent = 0  # entries done (sent or dropped)
        self.loaded = 0  # entries read from the pending file at the start
        self.failing_since: float | None = None
        self.own_runs: set[str] = set()  # runs created by this process: nothing to read back
        self.last_steps: dict[tuple[str, str], int] = {}  # (run, metric key) -> last step the run holds
        self.held_steps: dict[str, int] = {}  # run -> the last training step it held when read back
        self.last_metrics: dict[str, Entry] = {}  # run -> the last metrics entry sent (linked to checkpoints)
        self.task: Callable[[], Any] | None = None
        self.task_result: tuple[bool, Any] | None = None
        self.thread = threading.Thread(target=self._work, name="mlflow-outbox", daemon=True)
        self.client: MlflowClient | None = None

    # -- the training thread's side --------------------------------------------------------------------
    def start(self, begin: Callable[[], tuple[str, bool]] | None) -> tuple[str, bool] | None:
        """Load the pending file, start the thread and run ``begin`` on it first: its result, (run id, whether the
        run is new). ``begin``'s MLflow calls are bounded (components/connection.py); its error is raised here, and a
        SIGTERM or SIGINT while it waits ends the wait at once (one line: nothing was trained yet).

        A new run needs no read-back of its steps; a continued run drops the end an earlier process kept for it."""
        self.entries.extend(read_pending(self.pending_file))
        self.loaded = len(self.entries)
        self.task = begin
        self.thread.start()
        try:
            with _signals_end_the_wait(), self.changed:
                self.changed.wait_for(lambda: self.task_result is not None)
        except _StopSignalError as signal_name:
            raise ValueError(f"{signal_name} while the MLflow tracking server {redact_uri(mlflow.get_tracking_uri())} "
                             "was still opening the run: nothing was trained in this process; run the same command "
                             "again to go on") from None
        assert self.task_result is not None
        succeeded, value = self.task_result
        if not succeeded:
            raise value
        return value

    def put(self, entry: Entry) -> None:
        with self.changed:
            if entry.kind == "image" and self.failing_since is not None:
                images = [queued for queued in self.entries if queued.kind == "image"]
                for old in images[:max(0, len(images) - KEPT_IMAGES + 1)]:
                    self.entries.remove(old)
            self.entries.append(entry)
            self.changed.notify_all()

    def close(self, end: Entry | None, idle_limit_s: float) -> int:
        """Send ``end`` after everything else, waiting while entries go out (at most ``idle_limit_s`` without
        progress; a SIGTERM or SIGINT ends the wait at once); keep what is left in the pending file. Returns the
        number of entries kept."""
        if end is not None:
            self.put(end)
        try:
            with _signals_end_the_wait():
                with self.changed:
                    while self.entries and self.thread.is_alive():
                        before = self.sent
                        self.changed.wait_for(lambda before=before: self.sent != before or not self.entries,  # type: ignore[misc]
                                              timeout=idle_limit_s)
                        if self.sent == before:
                            break
        except _StopSignalError as signal_name:
            log.warning("%s: not waiting for the MLflow tracking server any longer", signal_name)
        with self.changed:
            left = list(self.entries)
        return self.keep(left)

    # -- the outbox thread --------------------------------------------------------------------------
    def _work(self) -> None:
        self.client = MlflowClient()
        try:
            opened = self.task() if self.task is not None else None
        except BaseException as err:  # noqa: BLE001 - handed to the training thread, which raises it
            with self.changed:
                self.task_result = (False, err)
                self.changed.notify_all()
            return
        with self.changed:
            if opened is not None:
                run_id, created = opened
                if created:
                    self.own_runs.add(run_id)
                for stale in [entry for entry in self.entries if entry.kind == "end" and entry.run_id == run_id]:
                    self.entries.remove(stale)  # the run goes on: its earlier end is void
                    self.sent += 1
            self.task_result = (True, opened)
            self.changed.notify_all()
        while True:
            with self.changed:
                self.changed.wait_for(lambda: bool(self.entries))
                entry = self.entries[0]
            if not self._try(entry):
                time.sleep(RETRY_PAUSE_S)
                continue
            with self.changed:
                if self.entries and self.entries[0] is entry:
                    self.entries.popleft()
                self.sent += 1
                if self.loaded and self.sent >= self.loaded:
                    self.pending_file.unlink(missing_ok=True)  # the entries it held went out
                    self.loaded = 0
                self.changed.notify_all()

    def _try(self, entry: Entry) -> bool:
        """Send ``entry``: True when done (sent, or dropped for an error that retrying cannot cure)."""
        try:
            self._send(entry)
        except Exception as err:  # noqa: BLE001 - every failure is reported; only a transient one is retried
            if not is_transient(err):
                log.warning("MLflow refused the %s of step %d (%s); dropped", entry.kind, entry.step,
                            str(err).splitlines()[0][:300])
                return True
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                log.warning("the MLflow tracking server %s does not answer (%s); training goes on, and what it "
                            "tracks waits to be sent", redact_uri(mlflow.get_tracking_uri()),
                            outage_cause(err) or str(err).splitlines()[0][:200])
            return False
        if self.failing_since is not None:
            log.warning("the MLflow tracking server answers again after %.0f s; sending what waited",
                        time.monotonic() - self.failing_since)
            self.failing_since = None
        return True

    def _send(self, entry: Entry) -> None:
        client = self.client
        assert client is not None
        if entry.kind == "metrics":
            fresh = self._fresh(entry)
            if fresh:
                client.log_batch(entry.run_id, metrics=[Metric(key, value, entry.timestamp, entry.step)
                                                        for key, value in fresh.items()], synchronous=True)
            for key in fresh:  # sent: never again
                self.last_steps[(entry.run_id, key)] = entry.step
            self.last_metrics[entry.run_id] = entry
        elif entry.kind == "image":
            self._send_image(client, entry)
        elif entry.kind == "checkpoint":
            path = Path(entry.values["path"])
            if path.is_file():  # pruned meanwhile (train.keep_last): nothing left to point at
                last = self.last_metrics.get(entry.run_id)
                log_checkpoint_model(client, entry.run_id, entry.step, path,
                                     (last.step, last.timestamp, last.values) if last else None)
        elif entry.kind == "end":
            for key, value in entry.values.get("tags", {}).items():
                client.set_tag(entry.run_id, key, value)
            active = mlflow.active_run()
            if active is not None and active.info.run_id == entry.run_id:
                mlflow.end_run(entry.values["status"])
            else:
                client.set_terminated(entry.run_id, entry.values["status"])

    def _read_back(self, run_id: str) -> None:
        """The last step of every metric that ``run_id`` holds, once, unless this process created the run."""
        if run_id in self.own_runs or run_id in self.held_steps:
            return
        assert self.client is not None
        for key in self.client.get_run(run_id).data.metrics:
            history = self.client.get_metric_history(run_id, key)
            self.last_steps[(run_id, key)] = max((point.step for point in history), default=-1)
        self.held_steps[run_id] = max((step for (run, key), step in self.last_steps.items()
                                       if run == run_id and not key.startswith("system/")), default=-1)

    def _fresh(self, entry: Entry) -> dict[str, float]:
        """The metrics of ``entry`` at a step the run does not hold yet for their key."""
        self._read_back(entry.run_id)
        return {key: value for key, value in entry.values.items()
                if entry.step > self.last_steps.get((entry.run_id, key), -1)}

    def _send_image(self, client: MlflowClient, entry: Entry) -> None:
        """The grid in the run's Images panel and, unless a newer one waits, as ``<key>/latest.png``."""
        self._read_back(entry.run_id)
        if entry.run_id not in self.own_runs and entry.step <= self.held_steps[entry.run_id]:
            return  # a resumed run recomputes this step: its grid was sent before
        assert entry.image is not None
        key = entry.values["key"]
        client.log_image(entry.run_id, entry.image, key=key, step=entry.step, synchronous=True)
        with self.changed:
            newer = any(queued.kind == "image" and queued.values["key"] == key for queued in list(self.entries)[1:])
        if not newer:
            with tempfile.TemporaryDirectory() as tmp:
                client.log_artifact(entry.run_id, str(write_png(Path(tmp) / "latest.png", entry.image)), key)

    def keep(self, left: list[Entry]) -> int:
        """Write the entries still waiting to the pending file (removing it when none is left)."""
        records = [record for entry in left if (record := entry.record()) is not None]
        if records:
            atomic_write_text(self.pending_file, "".join(json.dumps(record) + "\n" for record in records))
            return len(records)
        if not self.loaded:
            self.pending_file.unlink(missing_ok=True)
        return 0


class _StopSignalError(Exception):
    """A stop signal arrived while the outbox waited for the server."""


@contextmanager
def _signals_end_the_wait() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`_StopSignalError` in the waiting (main) thread; the earlier handlers return."""
    def interrupt(signum: int, frame: object) -> None:
        raise _StopSignalError(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def read_pending(path: Path) -> list[Entry]:
    """The entries an earlier process kept in ``path`` (none when it does not exist)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            entries.append(Entry(record["kind"], record["run_id"], record["step"], record["values"],
                                 record["timestamp"]))
    return entries


def send_pending(out_dir: Path, idle_limit_s: float = IDLE_LIMIT_S) -> int:
    """Send what an earlier training kept in ``<out_dir>/mlflow_pending.jsonl``; returns the entries still kept."""
    outbox = Outbox(out_dir)
    if not outbox.pending_file.is_file():
        return 0
    outbox.start(None)
    return outbox.close(None, idle_limit_s)
