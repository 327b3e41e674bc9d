"""Parquet shards of prepared samples, written atomically, and the swap of a whole directory (:mod:`dagan.atomic`).

One row per sample (docs/ARCHITECTURE.md): ``id``, ``split``, ``image`` (PNG bytes or null),
``label`` (8-bit PNG bytes), ``instance`` (16-bit PNG bytes or null), ``height``, ``width``.
Each shard is written atomically (:mod:`dagan.atomic`); its size and SHA-256 go into the manifest
and are verified before a Dataset reads it (:func:`verify_shards`).
A preparation writes everything into a staging directory next to the target and swaps it in
only at the end, so a failure leaves the earlier prepared data untouched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dagan.atomic import atomic_directory, atomic_write
from dagan.disk import DISK_FULL
from dagan.data.errors import DataError
from dagan.data.manifest import Shard

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("split", pa.string()),
    ("image", pa.binary()),
    ("label", pa.binary()),
    ("instance", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
])
ROW_GROUP_SIZE = 16  # rows read together by the Dataset; small keeps random access cheap


@dataclass(frozen=True)
class Sample:
    """One prepared row: PNG-encoded maps of one scene at its stored size."""

    id: str
    split: str
    label: bytes
    image: bytes | None
    instance: bytes | None
    height: int
    width: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Buffer samples per split and write ``<split>-NNNNN.parquet`` files of ``rows_per_shard`` rows."""

    def __init__(self, directory: Path, rows_per_shard: int):
        if rows_per_shard < 1:
            raise DataError(f"rows_per_shard is {rows_per_shard}; set dataset.rows_per_shard to 1 or more")
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.shards: list[Shard] = []
        self._buffers: dict[str, list[Sample]] = {}

    def add(self, sample: Sample) -> None:
        buffer = self._buffers.setdefault(sample.split, [])
        buffer.append(sample)
        if len(buffer) == self.rows_per_shard:
            self._flush(sample.split)

    def close(self) -> list[Shard]:
        for split in list(self._buffers):
            if self._buffers[split]:
                self._flush(split)
        return sorted(self.shards, key=lambda s: s.path)

    def _flush(self, split: str) -> None:
        rows = self._buffers[split]
        self._buffers[split] = []
        index = sum(1 for s in self.shards if s.split == split)
        path = self.directory / f"{split}-{index:05d}.parquet"
        columns = {name: [getattr(r, name) for r in rows] for name in SCHEMA.names}
        table = pa.Table.from_pydict(columns, schema=SCHEMA)
        with atomic_write(path) as tmp:  # PNG bytes are already compressed: no Parquet compression, fast random reads
            pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="none")
        self.shards.append(Shard(path=path.name, split=split, rows=len(rows), sha256=sha256_of(path),
                                 size=path.stat().st_size))


@contextmanager
def staging_directory(target: Path, marker: str) -> Iterator[Path]:
    """:func:`dagan.atomic.atomic_directory` for data folders: a full disk is a DataError naming the folder."""
    target = Path(target)
    try:
        with atomic_directory(target, marker) as staging:
            yield staging
    except OSError as err:
        if err.errno in DISK_FULL:
            raise DataError(f"no space left on the device of {target.parent} while preparing {target}; "
                            f"{target} was left as it was: free space there or choose another output folder") from None
        raise


def verify_shards(prepared_dir: str | Path, shards: list[Shard]) -> None:
    """Raise a DataError naming the first shard that is missing or whose size or SHA-256 differs from the
    manifest's. Hashing is fast enough (seconds for a Cityscapes-sized split: docs/PERFORMANCE.md, "Guards")
    that every Dataset verifies afresh rather than trusting a cache keyed by file times."""
    for shard in shards:
        path = Path(prepared_dir) / shard.path
        if not path.is_file():
            raise DataError(f"shard {path} listed in the manifest is missing; run dvc pull or prepare again")
        stat = path.stat()
        if shard.size is not None and stat.st_size != shard.size:
            raise DataError(f"shard {path} has {stat.st_size} bytes, the manifest says {shard.size}: it was "
                            "truncated or replaced since it was prepared; run dvc pull (dvc checkout) or prepare again")
        actual = sha256_of(path)
        if actual != shard.sha256:
            raise DataError(f"shard {path} has sha256 {actual[:16]}..., the manifest says {shard.sha256[:16]}...: it "
                            "was damaged or replaced since it was prepared; run dvc pull (dvc checkout) or prepare "
                            "again")
