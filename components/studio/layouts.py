"""Validation layouts to start painting from: a prepared dataset's label maps, at the model's size.

``--data DIR`` names a prepared dataset (docs/DATA.md); its split (``--split``, default ``val``)
gives the layouts, centre-cropped to the model's training size as evaluation crops them
(:class:`dagan.data.PairedDataset` in evaluation mode, which also verifies the shards against the
manifest). Each layout brings its instance map and photo where the dataset has them. The
dataset must have the model's classes: a registered model carries its class names and colours,
the dataset is only where the layouts come from, so a mismatch is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dagan.data.dataset import PairedDataset
from dagan.data.errors import DataError
from dagan.data.manifest import read_manifest
from dagan.inference import LabelLayout


@dataclass(frozen=True)
class Layout:
    """A label map to paint on, with what came with it."""

    name: str
    label: np.ndarray  # (H, W) int64 ids
    instance: np.ndarray | None = None  # (H, W) int64 instance ids; None: instance edges = class boundaries
    photo: np.ndarray | None = None  # (H, W, 3) uint8: the real photo of a dataset layout


class ValidationLayouts:
    """The layouts of one split of a prepared dataset, by id, at ``image_size`` (height, width)."""

    def __init__(self, prepared_dir: str | Path, split: str, layout: LabelLayout, image_size: tuple[int, int]):
        directory = Path(prepared_dir)
        if not (directory / "manifest.json").is_file():
            raise DataError(f"--data {directory}: no manifest.json there; pass a prepared dataset folder such as "
                            "data/prepared/synthetic (python -m components.prepare writes them)")
        manifest = read_manifest(directory)
        theirs = (manifest.num_classes, manifest.contain_dontcare_label, list(manifest.class_names))
        ours = (layout.num_classes, layout.contain_dontcare_label, list(layout.class_names))
        if theirs != ours:
            raise DataError(f"--data {directory}: its classes ({manifest.num_classes}: "
                            f"{_short(manifest.class_names)}) are not the model's ({layout.num_classes}: "
                            f"{_short(layout.class_names)}); pass the prepared dataset the model was trained on")
        if split not in manifest.splits:
            raise DataError(f"--split {split}: {directory} has the splits {', '.join(manifest.splits)}; choose one")
        height, width = image_size
        self.dataset = PairedDataset(directory, split, crop_size=width, aspect_ratio=width / height, train=False)
        self.ids = [str(name) for shard in self.dataset.shards
                    for name in pq.read_table(directory / shard.path, columns=["id"]).column("id").to_pylist()]
        self.source = f"{directory} ({split}, {len(self.ids)} layouts)"

    def get(self, name: str) -> Layout:
        if name not in self.ids:
            raise DataError(f"layout {name!r} is not in {self.source}")
        item = self.dataset[self.ids.index(name)]
        instance = item["instance"].numpy() if "instance" in item else None
        photo = None
        if "image" in item:
            photo = ((item["image"] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        return Layout(name, item["label"].numpy(), instance, photo)


def _short(names: list[str], count: int = 4) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")
