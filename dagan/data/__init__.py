"""Datasets: raw layouts -> prepared Parquet shards + manifest, and the torch Dataset over them."""

from dagan.data.dataset import PairedDataset
from dagan.data.errors import DataError
from dagan.data.manifest import Manifest, read_manifest

__all__ = ["DataError", "Manifest", "PairedDataset", "read_manifest"]
