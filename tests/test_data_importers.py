"""Importers of every real layout (tiny fixtures built here) and their bad-input errors."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_fixtures import (
    ade20k,
    celebamask_hq,
    cityscapes_flat,
    cityscapes_nested,
    coco_stuff,
    custom,
    deepfashion,
    facades,
    photo,
    save,
)
from PIL import Image

from dagan.data import DataError, read_manifest
from dagan.data.imaging import resize_nearest, target_size
from dagan.data.importers import import_celebamask_hq
from dagan.data.prepare import prepare_dataset
from dagan.data.shards import sha256_of


def rows(prepared, split):
    manifest = read_manifest(prepared)
    tables = [pq.read_table(prepared / s.path).to_pylist() for s in manifest.shards_of(split)]
    return [row for table in tables for row in table]


def decode(data):
    return np.asarray(Image.open(io.BytesIO(data)))


def bomb_png(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR claiming ``width`` x ``height`` (a few bytes that decode to gigabytes)."""
    ihdr = png[12:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:8] + png[8:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_cityscapes_nested_layout_with_label_only_test_split(tmp_path, rng):
    source = cityscapes_nested(tmp_path / "raw", rng)
    manifest = prepare_dataset("cityscapes", source, tmp_path / "out", load_size=32, aspect_ratio=2.0)
    assert manifest.splits == {"test": 1, "train": 3, "val": 2}
    assert manifest.label_only_splits == ["test"]
    assert (manifest.num_classes, manifest.contain_dontcare_label, manifest.has_instance) == (35, False, True)
    assert manifest.semantic_nc == 36 and manifest.class_names[26] == "car"
    train = rows(tmp_path / "out", "train")
    assert [r["id"] for r in train] == ["aachen_000000_000019", "aachen_000001_000019", "aachen_000002_000019"]
    first = train[0]
    label, inst, image = decode(first["label"]), decode(first["instance"]), decode(first["image"])
    assert label.shape == (16, 32) and image.shape == (16, 32, 3) and (first["height"], first["width"]) == (16, 32)
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 7, 11, 23, 24, 26, 34}
    assert inst.dtype == np.uint16 and set(np.unique(inst)) <= {0, 7, 11, 23, 24001, 26001, 34001}
    assert np.array_equal(np.where(inst > 1000, inst // 1000, inst), label)  # 16-bit ids survive, aligned
    assert all(r["image"] is None and r["instance"] is not None for r in rows(tmp_path / "out", "test"))
    for shard in manifest.shards:
        assert sha256_of(tmp_path / "out" / shard.path) == shard.sha256


def test_cityscapes_flattened_layout(tmp_path, rng):
    source = cityscapes_flat(tmp_path / "raw", rng)
    manifest = prepare_dataset("cityscapes", source, tmp_path / "out", load_size=32, aspect_ratio=2.0)
    assert manifest.splits == {"test": 2, "train": 3} and manifest.label_only_splits == ["test"]
    assert rows(tmp_path / "out", "train")[0]["id"] == "aachen_000000_000019"


def test_ade20k_zero_becomes_dont_care_and_ids_shift_down(tmp_path, rng):
    source = ade20k(tmp_path / "raw", rng)
    manifest = prepare_dataset("ade20k", source, tmp_path / "out", load_size=16, aspect_ratio=1.0)
    assert manifest.splits == {"train": 3, "val": 2}
    assert (manifest.num_classes, manifest.contain_dontcare_label, manifest.semantic_nc) == (150, True, 151)
    labels = [decode(r["label"]) for r in rows(tmp_path / "out", "train")]
    assert labels[0].shape == (16, 24)  # 48x32 keeps its aspect: shorter side -> 16
    assert set(np.unique(np.stack(labels))) == {0, 2, 149, 150}  # raw 1, 3, 150, 0
    assert manifest.class_names[0] == "wall" and manifest.class_names[149] == "flag"


def test_celebamask_hq_parts_are_painted_into_19_classes(tmp_path, rng):
    source = celebamask_hq(tmp_path / "raw", rng)
    spec, pairs = import_celebamask_hq(source, val_from=3)
    assert [(p.split, p.sample_id) for p in pairs] == [("train", "0"), ("train", "1"), ("train", "2"), ("val", "3")]
    manifest = prepare_dataset("celebamask_hq", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.num_classes == 19 and manifest.splits == {"train": 4}
    row = rows(tmp_path / "out", "train")[0]
    label = decode(row["label"])
    assert decode(row["image"]).shape == (32, 32, 3)  # 64 px photo, 32 px masks: both at load size
    assert label[15, 15] == 2 and label[20, 10] == 1 and label[2, 2] == 13 and label[30, 2] == 0  # nose over skin


def test_facades_palette_labels_and_base_extended_splits(tmp_path, rng):
    source = facades(tmp_path / "raw", rng)
    manifest = prepare_dataset("facades", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.splits == {"train": 3, "val": 2} and manifest.num_classes == 13
    values = np.unique(np.stack([decode(r["label"]) for r in rows(tmp_path / "out", "train")]))
    assert set(values) == {1, 2, 3, 12}


def test_coco_stuff_unlabelled_becomes_dont_care(tmp_path, rng):
    source = coco_stuff(tmp_path / "raw", rng)
    manifest = prepare_dataset("coco_stuff", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.semantic_nc == 184 and manifest.splits == {"train": 3, "val": 2}
    values = np.unique(np.stack([decode(r["label"]) for r in rows(tmp_path / "out", "val")]))
    assert set(values) == {0, 5, 90, 181, 182}
    assert manifest.class_names[0] == "person" and manifest.class_names[181] == "wood"


def test_deepfashion_uses_the_dagan_authors_layout_and_ids(tmp_path, rng):
    source = deepfashion(tmp_path / "raw", rng)
    manifest = prepare_dataset("deepfashion", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.semantic_nc == 20 and manifest.splits == {"train": 3, "val": 2} and not manifest.has_instance
    values = np.unique(np.stack([decode(r["label"]) for r in rows(tmp_path / "out", "train")]))
    assert set(values) <= {0, 2, 5, 13, 19} and len(values) > 1


def test_custom_layout_with_classes_json_and_dont_care(tmp_path, rng):
    classes = {"class_names": ["sky", "road", "car"], "dont_care": 255}
    source = custom(tmp_path / "raw", rng, classes, splits=True, instances=True, values=(0, 1, 2, 255))
    manifest = prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.class_names == ["sky", "road", "car"] and manifest.contain_dontcare_label
    assert manifest.has_instance and manifest.semantic_nc == 5 and manifest.splits == {"train": 3, "val": 2}
    values = np.unique(np.stack([decode(r["label"]) for r in rows(tmp_path / "out", "train")]))
    assert set(values) == {0, 1, 2, 3}


def test_custom_layout_without_classes_json_counts_classes(tmp_path, rng):
    source = custom(tmp_path / "raw", rng, values=(0, 4))
    manifest = prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert manifest.num_classes == 5 and manifest.splits == {"train": 3} and not manifest.has_instance


def test_resize_rules():
    assert target_size(2048, 1024, 512, 2.0) == (512, 256)
    assert target_size(640, 480, 286, 1.0) == (381, 286)
    assert target_size(300, 600, 256, 1.0) == (256, 512)
    values = np.arange(16).reshape(4, 4)
    assert np.array_equal(resize_nearest(values, (8, 8))[::2, ::2], values)


# --- bad input: each a DataError naming the file, the value and the fix --------------------------------


def test_corrupt_file_is_named(tmp_path, rng):
    source = ade20k(tmp_path / "raw", rng)
    bad = source / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000002.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png.*corrupt"):
        prepare_dataset("ade20k", source, tmp_path / "out", load_size=16, aspect_ratio=1.0)
    assert not (tmp_path / "out").exists()


def test_size_mismatch_names_both_files(tmp_path, rng):
    source = coco_stuff(tmp_path / "raw", rng)
    save(source / "train_img" / "000000000002.jpg", photo(rng, 40, 32))
    with pytest.raises(DataError, match=r"000000000002\.jpg is 40x32 but its label map .*000000000002\.png is 48x32"):
        prepare_dataset("coco_stuff", source, tmp_path / "out", load_size=16, aspect_ratio=1.0)


def test_label_values_out_of_range_name_file_values_and_fix(tmp_path, rng):
    source = cityscapes_flat(tmp_path / "raw", rng)
    path = next((source / "train_label").iterdir())
    label = np.asarray(Image.open(path)).copy()
    label[0, :3] = [40, 41, 200]
    save(path, label)
    with pytest.raises(DataError) as err:
        prepare_dataset("cityscapes", source, tmp_path / "out", load_size=32, aspect_ratio=2.0)
    message = str(err.value)
    assert path.name in message and "40, 41, 200" in message and "labelIds 0..34" in message
    assert "gtFine_labelIds.png" in message  # the fix


def test_colour_label_maps_are_rejected(tmp_path, rng):
    source = custom(tmp_path / "raw", rng)
    save(source / "labels" / "img1.png", photo(rng))
    with pytest.raises(DataError, match=r"img1\.png is a RGB image; labels must be single-channel"):
        prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)


def test_missing_pairs_are_named(tmp_path, rng):
    source = facades(tmp_path / "raw", rng)
    (source / "base" / "cmp_b0002.jpg").unlink()
    with pytest.raises(DataError, match=r"1 label map\(s\) have no photo, e.g. .*cmp_b0002\.png"):
        prepare_dataset("facades", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    source = coco_stuff(tmp_path / "raw2", rng)
    (source / "val_label" / "000000000001.png").unlink()
    with pytest.raises(DataError, match=r"photo\(s\) have no label map, e.g. .*000000000001\.jpg"):
        prepare_dataset("coco_stuff", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    source = cityscapes_flat(tmp_path / "raw3", rng)
    next((source / "train_inst").iterdir()).unlink()
    with pytest.raises(DataError, match=r"no instance map"):
        prepare_dataset("cityscapes", source, tmp_path / "out", load_size=32, aspect_ratio=2.0)


def test_empty_split_and_missing_layout(tmp_path, rng):
    source = custom(tmp_path / "raw", rng, splits=True)
    for path in (source / "val" / "labels").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"split 'val' .* has no label maps"):
        prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"expected the Cityscapes layout"):
        prepare_dataset("cityscapes", tmp_path / "empty", tmp_path / "out", load_size=32, aspect_ratio=2.0)
    with pytest.raises(DataError, match=r"does not exist"):
        prepare_dataset("ade20k", tmp_path / "nowhere", tmp_path / "out", load_size=32, aspect_ratio=1.0)


def test_16_bit_photos_are_scaled_to_8_bit_not_clipped_to_white(tmp_path, rng):
    source = custom(tmp_path / "raw", rng)
    gray16 = (np.arange(32 * 48).reshape(32, 48) * 42).astype(np.uint16)  # 0..64470
    save(source / "images" / "img0.png", gray16)
    assert Image.open(source / "images" / "img0.png").mode == "I;16"
    prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    stored = decode(next(r for r in rows(tmp_path / "out", "train") if r["id"] == "img0")["image"])
    expected = (gray16.astype(np.int64) * 255 + 32767) // 65535
    assert stored.shape == (32, 48, 3) and np.array_equal(stored[..., 0], expected)
    assert stored.min() == 0 and 250 <= stored.max() <= 255


def test_a_decompression_bomb_header_is_refused_by_name(tmp_path, rng):
    source = custom(tmp_path / "raw", rng)
    bomb = source / "images" / "img2.png"
    header = Image.new("L", (1, 1))
    header.save(bomb)
    bomb.write_bytes(bomb_png(bomb.read_bytes(), 100_000, 100_000))
    with pytest.raises(DataError, match=r"img2\.png is refused as a decompression bomb"):
        prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    assert not (tmp_path / "out").exists()


def test_a_custom_dataset_with_too_many_label_values_is_capped(tmp_path, rng):
    source = custom(tmp_path / "raw", rng, values=(0, 1, 2))
    label = np.asarray(Image.open(source / "labels" / "img1.png")).astype(np.uint16)
    label[0, 0] = 65535  # a 16-bit "ignore" value
    save(source / "labels" / "img1.png", label)
    with pytest.raises(DataError) as err:
        prepare_dataset("custom", source, tmp_path / "out", load_size=32, aspect_ratio=1.0)
    message = str(err.value)
    assert "65536 label ids (label values 0..65535), more than dataset.max_classes=256" in message
    assert "classes.json" in message and "dont_care" in message
    with pytest.raises(DataError, match="more than dataset.max_classes=2;"):
        prepare_dataset("custom", custom(tmp_path / "raw2", rng), tmp_path / "out", load_size=32,
                        aspect_ratio=1.0, max_classes=2)
