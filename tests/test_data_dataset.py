"""PairedDataset over prepared shards: crops, flips applied to all maps together, eval determinism,
label-only splits, DataLoader workers with a DistributedSampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import save
from torch.utils.data import DataLoader, DistributedSampler

from dagan.data import DataError, PairedDataset, read_manifest
from dagan.data.prepare import prepare_dataset

COLORS = np.array([[10, 20, 30], [200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
SIZE = 24


def _scenes(root, rng, split, count, photos=True):
    for i in range(count):
        label = rng.integers(0, 4, (SIZE // 4, SIZE // 4)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
        label[:, : 2 + i % 5] = 3  # left edge differs from the right edge: a flip is visible
        save(root / split / "labels" / f"s{i:03d}.png", label)
        save(root / split / "instances" / f"s{i:03d}.png", label.astype(np.uint16) * 1000 + 7)
        if photos:
            save(root / split / "images" / f"s{i:03d}.png", COLORS[label])  # photo = function of the label


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    _scenes(root / "raw", rng, "train", 40)
    _scenes(root / "raw", rng, "test", 3, photos=False)
    # 25 rows per shard and 16-row groups: indexing crosses shard and row-group boundaries
    prepare_dataset("custom", root / "raw", root / "prepared", load_size=SIZE, aspect_ratio=1.0, rows_per_shard=25)
    return root / "prepared"


def _image_to_label(image: torch.Tensor) -> torch.Tensor:
    rgb = ((image + 1) * 127.5).round().to(torch.int64).permute(1, 2, 0)
    return (rgb[..., None, :] == torch.from_numpy(COLORS).long()).all(-1).long().argmax(-1)


def test_items_types_and_ranges(prepared):
    dataset = PairedDataset(prepared, "train", crop_size=16, aspect_ratio=1.0, train=False)
    assert len(dataset) == 40 and read_manifest(prepared).semantic_nc == 5
    item = dataset[0]
    assert set(item) == {"id", "label", "instance", "image"} and item["id"] == "s000"
    assert item["label"].dtype == torch.int64 and item["label"].shape == (16, 16)
    assert item["instance"].dtype == torch.int64 and item["instance"].shape == (16, 16)
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert [dataset[i]["id"] for i in (15, 16, 24, 25, 39)] == ["s015", "s016", "s024", "s025", "s039"]
    with pytest.raises(IndexError):
        dataset[40]


def test_training_crops_and_flips_label_instance_and_image_together(prepared):
    torch.manual_seed(0)
    full = PairedDataset(prepared, "train", crop_size=SIZE, train=False)
    dataset = PairedDataset(prepared, "train", crop_size=16, aspect_ratio=2.0, train=True, flip=True)
    flipped = unflipped = 0
    for index in range(20):
        item = dataset[index]
        assert item["label"].shape == (8, 16)
        assert torch.equal(_image_to_label(item["image"]), item["label"])
        assert torch.equal(item["instance"], item["label"] * 1000 + 7)
        whole = full[index]["label"]
        windows = [whole[t:t + 8, c:c + 16] for t in range(SIZE - 7) for c in range(SIZE - 15)]
        if any(torch.equal(item["label"], w) for w in windows):
            unflipped += 1
        if any(torch.equal(item["label"], w.flip(-1)) for w in windows):
            flipped += 1
    assert flipped > 0 and unflipped > 0


def test_eval_mode_centre_crop_is_deterministic(prepared):
    dataset = PairedDataset(prepared, "train", crop_size=16, train=False, flip=True)
    whole = PairedDataset(prepared, "train", crop_size=SIZE, train=False)[3]
    first, second = dataset[3], dataset[3]
    assert torch.equal(first["label"], second["label"]) and torch.equal(first["image"], second["image"])
    assert torch.equal(first["label"], whole["label"][4:20, 4:20])


def test_label_only_split_has_no_image(prepared):
    assert read_manifest(prepared).label_only_splits == ["test"]
    item = PairedDataset(prepared, "test", crop_size=16)[0]
    assert "image" not in item and item["label"].shape == (16, 16) and "instance" in item


def test_dataloader_workers_with_distributed_sampler(prepared):
    dataset = PairedDataset(prepared, "train", crop_size=16, train=True)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=2)
        batches = list(loader)
        assert batches[0]["label"].shape == (4, 16, 16) and batches[0]["image"].shape == (4, 3, 16, 16)
        seen.append({i for batch in batches for i in batch["id"]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40


def test_bad_requests_are_clear(prepared, tmp_path):
    with pytest.raises(DataError, match=r"smaller than the crop 32x32"):
        PairedDataset(prepared, "train", crop_size=32)[0]
    with pytest.raises(DataError, match=r"split 'val' is not in this prepared dataset; it has: test, train"):
        PairedDataset(prepared, "val", crop_size=16)
    with pytest.raises(DataError, match=r"manifest.json does not exist; prepare the dataset first"):
        PairedDataset(tmp_path, "train", crop_size=16)
