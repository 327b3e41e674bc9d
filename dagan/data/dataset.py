"""A torch Dataset over prepared Parquet shards (docs/ARCHITECTURE.md, "Data on disk").

The constructor reads the manifest and verifies the split's shards against it (size and
SHA-256: :func:`dagan.data.shards.verify_shards`); each DataLoader worker opens the shards lazily
(in the process that reads them) and decodes the PNG bytes there, so the Dataset pickles
cheaply into workers and works with a DistributedSampler. Training mode takes a random crop of
``crop_size`` x ``crop_size / aspect_ratio`` and flips label, instance and photo together;
evaluation mode takes the centre crop, deterministically. With ``seed`` given, the crop and flip
of sample ``index`` are drawn from an RNG seeded by (seed, epoch, index) (``set_epoch``), so
they do not depend on the worker or process that loads the sample (exact resume, DDP).
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from dagan.data.errors import DataError
from dagan.data.manifest import Manifest, read_manifest
from dagan.data.png import decode_png
from dagan.data.shards import verify_shards


class PairedDataset(Dataset):
    """Items: ``label`` LongTensor (H, W), ``instance`` LongTensor (H, W) when the dataset has
    instances, ``image`` FloatTensor (3, H, W) in [-1, 1] (absent in label-only splits), ``id``."""

    def __init__(
        self, prepared_dir: str | Path, split: str, crop_size: int, aspect_ratio: float = 1.0,
        train: bool = False, flip: bool = True, seed: int | None = None,
    ):
        self.prepared_dir = Path(prepared_dir)
        self.manifest: Manifest = read_manifest(self.prepared_dir)
        self.split = split
        self.shards = self.manifest.shards_of(split)
        verify_shards(self.prepared_dir, self.shards)  # a replaced or damaged shard stops here, named
        self.crop_width = crop_size
        self.crop_height = max(1, round(crop_size / aspect_ratio))
        self.train = train
        self.flip = flip and train
        self.seed = seed  # None: crops and flips from torch's global RNG
        self.epoch = 0
        self.has_image = split not in self.manifest.label_only_splits
        self._ends = np.cumsum([s.rows for s in self.shards]).tolist()
        self._files: dict[int, tuple[pq.ParquetFile, list[int]]] = {}  # shard -> (file, row-group ends)
        self._cache: tuple[tuple[int, int], dict] | None = None
        self._pid = os.getpid()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops and flips ``seed`` determines (call before each epoch)."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_cache"] = {}, None  # open files do not travel to workers
        return state

    def _row(self, index: int) -> dict:
        if self._pid != os.getpid():  # forked worker: never share file handles with the parent
            self._files, self._cache, self._pid = {}, None, os.getpid()
        shard_index = bisect.bisect_right(self._ends, index)
        offset = index - (self._ends[shard_index - 1] if shard_index else 0)
        parquet, group_ends = self._open(shard_index)
        group = bisect.bisect_right(group_ends, offset)
        row = offset - (group_ends[group - 1] if group else 0)
        key = (shard_index, group)
        if self._cache is None or self._cache[0] != key:
            columns = ["id", "label", "instance"] + (["image"] if self.has_image else [])
            self._cache = (key, parquet.read_row_group(group, columns=columns).to_pydict())
        table = self._cache[1]
        return {name: values[row] for name, values in table.items()}

    def _open(self, shard_index: int) -> tuple[pq.ParquetFile, list[int]]:
        if shard_index not in self._files:
            shard = self.shards[shard_index]
            path = self.prepared_dir / shard.path
            if not path.is_file():
                raise DataError(f"shard {path} is missing; run dvc pull or prepare the dataset again")
            parquet = pq.ParquetFile(path)
            if parquet.metadata.num_rows != shard.rows:
                raise DataError(f"shard {path} has {parquet.metadata.num_rows} rows, the manifest says {shard.rows}; "
                                "run dvc pull or prepare the dataset again")
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            self._files[shard_index] = (parquet, np.cumsum(sizes).tolist())
        return self._files[shard_index]

    def _crop_box(self, height: int, width: int, sample_id: str,
                  generator: torch.Generator | None = None) -> tuple[int, int]:
        if height < self.crop_height or width < self.crop_width:
            raise DataError(
                f"sample {sample_id} is {width}x{height}, smaller than the crop {self.crop_width}x{self.crop_height}; "
                "lower dataset.crop_size or prepare with a larger dataset.load_size"
            )
        if self.train:
            top = int(torch.randint(0, height - self.crop_height + 1, (), generator=generator))
            left = int(torch.randint(0, width - self.crop_width + 1, (), generator=generator))
        else:
            top, left = (height - self.crop_height) // 2, (width - self.crop_width) // 2
        return top, left

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for split {self.split!r} with {len(self)} rows")
        row = self._row(index)
        label = decode_png(row["label"])
        generator = self._generator(index)
        height, width = label.shape
        top, left = self._crop_box(height, width, row["id"], generator)
        window = (slice(top, top + self.crop_height), slice(left, left + self.crop_width))
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)

        def prepare(array: np.ndarray) -> np.ndarray:
            array = array[window]
            return np.ascontiguousarray(array[:, ::-1] if flip else array)

        item: dict = {"id": row["id"], "label": torch.from_numpy(prepare(label).astype(np.int64))}
        if self.manifest.has_instance:
            item["instance"] = torch.from_numpy(prepare(decode_png(row["instance"]).astype(np.int64)))
        if self.has_image:
            photo = torch.from_numpy(prepare(decode_png(row["image"])))
            item["image"] = photo.permute(2, 0, 1).float().div(127.5).sub(1.0)
        return item
