"""Where a sweep keeps its trials (components/tune.py): ``tune.storage_path``, a folder or S3.

Ray Tune stores the experiment (its state, every trial's reports and checkpoints) under
``<storage_path>/<tune.name>``; ``--resume`` restores it from there, from any machine that reaches
the storage (another driver pod, a new head node). The sweep's MLflow parent run is recorded
beside it (:data:`RECORD`), so a resumed sweep keeps logging into the same parent run wherever it
runs. S3 goes through ``pyarrow.fs.S3FileSystem`` (endpoint from ``$AWS_ENDPOINT_URL``, credentials
from the standard AWS variables); a local folder through pyarrow's local filesystem.

Everything here runs before any trial starts: a storage the user cannot write, an experiment that
already exists (without ``--resume``) or is missing (with it) stops the sweep with one line.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dagan.config import ConfigError

RECORD = "dagan_sweep.json"  # the parent MLflow run of the sweep, beside Ray Tune's experiment state


@dataclass(frozen=True)
class SweepStorage:
    """``tune.storage_path`` resolved for Ray Tune: a path on ``filesystem`` (None: the local filesystem)."""

    uri: str  # as the user wrote it (s3://bucket/prefix or a folder), for messages
    path: str  # bucket/prefix for S3, an absolute folder otherwise
    filesystem: Any  # pyarrow.fs.S3FileSystem, or None for a local folder (Ray's default)
    name: str  # tune.name: the experiment's folder under path

    @property
    def experiment(self) -> str:
        return f"{self.path}/{self.name}"

    def files(self):
        """The pyarrow filesystem of the storage (the local one for a folder)."""
        from pyarrow import fs

        return self.filesystem or fs.LocalFileSystem()

    def uri_of(self, path: str) -> str:
        """A path on this storage as the user can name it: s3://... or the local path."""
        return f"s3://{path}" if self.filesystem is not None else path

    def write_text(self, relative: str, text: str) -> None:
        with self.files().open_output_stream(f"{self.experiment}/{relative}") as stream:
            stream.write(text.encode("utf-8"))

    def read_text(self, relative: str) -> str | None:
        from pyarrow import fs

        path = f"{self.experiment}/{relative}"
        if self.files().get_file_info(path).type != fs.FileType.File:
            return None
        with self.files().open_input_stream(path) as stream:
            return stream.read().decode("utf-8")

    def write_record(self, record: dict[str, str]) -> None:
        self.write_text(RECORD, json.dumps(record, indent=2) + "\n")

    def read_record(self) -> dict[str, str]:
        text = self.read_text(RECORD)
        if text is None:
            raise FileNotFoundError(f"{self.uri}/{self.name}/{RECORD} does not exist: it records the sweep's MLflow "
                                    "parent run, which --resume continues; start a new sweep without --resume")
        return json.loads(text)


def resolve_storage(uri: str, name: str) -> SweepStorage:
    """An absolute folder, or S3 via pyarrow (endpoint from ``$AWS_ENDPOINT_URL``)."""
    if uri.startswith("s3://"):
        from pyarrow import fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if endpoint:
            parts = urlsplit(endpoint)
            options.update(endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https")
        return SweepStorage(uri.rstrip("/"), uri[len("s3://"):].rstrip("/"), fs.S3FileSystem(**options), name)
    if "://" in uri:
        raise ConfigError(f"tune.storage_path={uri}: only a local folder or s3://bucket/prefix is supported")
    return SweepStorage(uri, str(Path(uri).resolve()), None, name)


def check_writable(storage: SweepStorage) -> None:
    """Write and delete a probe file in the experiment's folder: a storage the sweep cannot write stops it here."""
    probe = f".write-check-{uuid.uuid4().hex}"
    try:
        storage.files().create_dir(storage.experiment, recursive=True)
        storage.write_text(probe, "ok")
        storage.files().delete_file(f"{storage.experiment}/{probe}")
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tune.storage_path={storage.uri}: cannot write {storage.uri}/{storage.name} ({reason}); "
                          "choose a folder or bucket you can write (-S tune.storage_path=... or --storage), or fix "
                          "its permissions / the AWS credentials") from None


def check_experiment(storage: SweepStorage, resume: bool) -> None:
    """``--resume`` needs the experiment; a new sweep must not overwrite one."""
    from ray import tune

    exists = tune.Tuner.can_restore(storage.experiment, storage_filesystem=storage.filesystem)
    if resume and not exists:
        raise FileNotFoundError(f"no Ray Tune experiment to resume at {storage.uri}/{storage.name}")
    if exists and not resume:
        raise ConfigError(f"a Ray Tune experiment already exists at {storage.uri}/{storage.name}: pass --resume "
                          "to continue it, or choose a new -S tune.name=...")
