"""``manifest.json`` of a prepared dataset (docs/ARCHITECTURE.md, "Data on disk").

The manifest describes the label layout (class names and colours, ``num_classes``, don't care,
instance maps), the splits with their row counts, the splits that have no photos, and every
Parquet shard with its row count and SHA-256 checksum.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dagan.atomic import atomic_write_text
from dagan.data.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Shard:
    path: str  # file name relative to the prepared directory
    split: str
    rows: int
    sha256: str
    size: int | None = None  # bytes; None in manifests written before sizes were recorded


@dataclass(frozen=True)
class Manifest:
    dataset: str
    class_names: list[str]
    class_colors: list[list[int]]  # RGB per label id, for visualising label maps
    num_classes: int  # label ids 0..num_classes-1
    contain_dontcare_label: bool  # don't care pixels carry id num_classes
    has_instance: bool
    load_size: int
    splits: dict[str, int]  # split -> rows
    label_only_splits: list[str] = field(default_factory=list)  # splits without photos (generation input)
    shards: list[Shard] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def semantic_nc(self) -> int:
        """Label-input channels of the networks: one-hot + don't care + instance edge."""
        return self.num_classes + int(self.contain_dontcare_label) + int(self.has_instance)

    @property
    def num_label_channels(self) -> int:
        """One-hot channels of the label map: classes plus the don't-care channel where present."""
        return self.num_classes + int(self.contain_dontcare_label)

    def shards_of(self, split: str) -> list[Shard]:
        if split not in self.splits:
            raise DataError(f"split {split!r} is not in this prepared dataset; it has: {', '.join(self.splits)}")
        return [s for s in self.shards if s.split == split]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["semantic_nc"] = self.semantic_nc
        return {"format_version": data.pop("format_version"), **data}


def manifest_from_dict(data: dict, source: str = "<dict>") -> Manifest:
    data = dict(data)
    version = data.pop("format_version", None)
    if version != FORMAT_VERSION:
        raise DataError(f"{source}: format_version {version!r} is not {FORMAT_VERSION}; prepare the dataset again")
    data.pop("semantic_nc", None)
    try:
        shards = [Shard(**s) for s in data.pop("shards")]
        return Manifest(**data, shards=shards)
    except (KeyError, TypeError) as err:
        raise DataError(f"{source}: not a valid manifest ({err}); prepare the dataset again") from None


def read_manifest(prepared_dir: str | Path) -> Manifest:
    """Read ``prepared_dir/manifest.json``; a missing or broken manifest is a DataError."""
    path = Path(prepared_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; prepare the dataset first "
            "(python -m components.prepare or dvc repro prepare)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}); prepare the dataset again") from None
    return manifest_from_dict(data, str(path))


def write_manifest(manifest: Manifest, directory: Path) -> Path:
    return atomic_write_text(directory / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")
