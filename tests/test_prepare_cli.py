"""components.synthesize and components.prepare as commands: synthetic scenes, statistics, errors,
and the guarantee that a failed preparation leaves the earlier prepared data untouched."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from disk_fixtures import run_on_small_disk
from PIL import Image

from components import prepare, synthesize
from dagan.data import read_manifest
from dagan.data.shards import sha256_of
from dagan.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
PARAMS = str(ROOT / "params.yaml")
SMALL = ["-S", "synthetic.num_train=12", "-S", "synthetic.num_val=4", "-S", "synthetic.size=32"]


def synthesize_to(out: Path, *extra: str) -> Path:
    assert synthesize.main(["--params", PARAMS, "--out", str(out), *SMALL, *extra]) == 0
    return out


def prepare_to(source: Path, out: Path, *extra: str) -> int:
    return prepare.main(["--params", PARAMS, "--dataset", "synthetic", "--source", str(source), "--out", str(out),
                         "-S", "dataset.load_size=32", *extra])


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_of(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_synthesize_is_deterministic_from_the_seed(tmp_path):
    first = snapshot(synthesize_to(tmp_path / "a"))
    assert first == snapshot(synthesize_to(tmp_path / "b"))
    assert first != snapshot(synthesize_to(tmp_path / "c", "-S", "synthetic.seed=1"))
    assert len([k for k in first if k.startswith("train/images/")]) == 12
    classes = json.loads((tmp_path / "a" / "classes.json").read_text())
    preset = get_preset("synthetic")
    assert len(classes["class_names"]) == preset.num_classes >= 8 and len(classes["class_colors"]) == 10


def test_synthetic_scenes_are_textured_with_object_instances(tmp_path):
    source = synthesize_to(tmp_path / "raw", "-S", "synthetic.num_train=24")
    labels, photos, instances = [], [], []
    for path in sorted((source / "train" / "labels").iterdir()):
        labels.append(np.asarray(Image.open(path)))
        photos.append(np.asarray(Image.open(source / "train" / "images" / path.name)).astype(float))
        instances.append(np.asarray(Image.open(source / "train" / "instances" / path.name)))
    labels, photos, instances = np.stack(labels), np.stack(photos), np.stack(instances)
    present = np.unique(labels)
    assert len(present) >= 8
    for class_id in present:  # a class is never one flat colour: texture, jitter and lighting vary it
        pixels = photos[labels == class_id]
        if len(pixels) > 50:
            assert pixels.std(axis=0).mean() > 5.0, class_id
    assert instances.dtype == np.uint16
    cars = [len(np.unique(inst[lbl == 8])) for inst, lbl in zip(instances, labels, strict=True) if (lbl == 8).any()]
    assert max(cars) >= 2  # several cars, each its own instance; stuff (grass) keeps its class id
    assert all(set(np.unique(inst[lbl == 3])) <= {3} for inst, lbl in zip(instances, labels, strict=True))


def test_prepare_writes_shards_manifest_and_statistics(tmp_path):
    source = synthesize_to(tmp_path / "raw")
    assert prepare_to(source, tmp_path / "out", "--workers", "1") == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.splits == {"train": 12, "val": 4} and manifest.semantic_nc == 11 and manifest.has_instance
    for shard in manifest.shards:
        table = pq.read_table(tmp_path / "out" / shard.path)
        assert table.num_rows == shard.rows and table.column_names == [
            "id", "split", "image", "label", "instance", "height", "width"]
        assert sha256_of(tmp_path / "out" / shard.path) == shard.sha256
    row = pq.read_table(tmp_path / "out" / "train-00000.parquet").slice(0, 1).to_pylist()[0]
    assert np.asarray(Image.open(io.BytesIO(row["instance"]))).dtype == np.uint16
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["train"]["rows"] == 12 and stats["train"]["pixels"] == 12 * 32 * 32
    assert abs(sum(stats["val"]["class_frequency"].values()) - 1.0) < 1e-4
    with (tmp_path / "out" / "class_frequency" / "train.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["class"] for r in table] == manifest.class_names
    assert abs(sum(float(r["frequency"]) for r in table) - 1.0) < 1e-4


def test_failed_prepare_leaves_earlier_prepared_data_untouched(tmp_path):
    source = synthesize_to(tmp_path / "raw")
    out = tmp_path / "prepared" / "synthetic"
    assert prepare_to(source, out) == 0
    before = snapshot(out)
    (source / "val" / "labels" / "00002.png").write_bytes(b"\x89PNG broken")
    result = subprocess.run(
        [sys.executable, "-m", "components.prepare", "--params", PARAMS, "--dataset", "synthetic",
         "--source", str(source), "--out", str(out), "-S", "dataset.load_size=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "00002.png" in errors[0] and "corrupt" in errors[0]
    assert "Traceback" not in result.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["synthetic"]  # no staging leftovers
    read_manifest(out)


def test_prepare_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    source = synthesize_to(tmp_path / "raw")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    assert prepare_to(source, foreign) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert (foreign / "holiday.jpg").read_bytes() == b"precious"


def test_prepare_and_synthesize_errors_exit_non_zero(tmp_path, capsys):
    assert prepare_to(tmp_path / "missing", tmp_path / "out") == 2
    assert "raw dataset folder" in capsys.readouterr().err
    assert prepare.main(["--params", PARAMS, "--dataset", "imagenet", "--source", str(tmp_path)]) == 2
    assert "imagenet" in capsys.readouterr().err
    code = synthesize.main(["--params", PARAMS, "-S", "dataset.name=cityscapes", "-S", "dataset.raw_dir=x"])
    assert code == 2 and "pass --out" in capsys.readouterr().err
    assert not (ROOT / "x").exists()


def test_disk_full_during_prepare_is_one_line_and_leaves_nothing_half_written(tmp_path):
    source = synthesize_to(tmp_path / "raw")
    disk = tmp_path / "small-disk"
    result, left = run_on_small_disk(disk, "16k", [
        sys.executable, "-m", "components.prepare", "--params", PARAMS, "--dataset", "synthetic", "--source",
        str(source), "--out", str(disk / "prepared"), "-S", "dataset.load_size=32"], ROOT)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and "prepared" in errors[0]
    assert "Traceback" not in result.stderr
    assert left == []  # no staging folder or partial shard left on the full disk
