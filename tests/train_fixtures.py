"""Tiny configs and a tiny prepared dataset (documented Parquet + manifest format) for training tests."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dagan.config import Config, config_from_dict

NUM_CLASSES = 4
SIZE = 32


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_prepared(directory: Path, num_train: int = 8, size: int = SIZE, seed: int = 0) -> Path:
    """A prepared dataset with ``num_train`` random scenes (4 classes + instance maps) at size x size."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = {"id": [], "split": [], "image": [], "label": [], "instance": [], "height": [], "width": []}
    for index in range(num_train):
        # Blocks of random classes: the 1x1 and 2x2 label maps the generator starts from differ
        # between samples (identical ones would give BatchNorm a zero variance there).
        blocks = rng.integers(0, NUM_CLASSES, (4, 4)).astype(np.uint8)
        label = np.kron(blocks, np.ones((size // 4, size // 4), np.uint8))
        top, left = rng.integers(0, size - 8, 2)
        label[top:top + 6, left:left + 6] = rng.integers(0, NUM_CLASSES)
        instance = (label.astype(np.uint16) * 1000 + (np.arange(size)[None, :] > size // 2)).astype(np.uint16)
        image = np.clip(label[..., None] * 60 + rng.integers(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        rows["id"].append(f"sample-{index:03d}")
        rows["split"].append("train")
        rows["image"].append(_png(image))
        rows["label"].append(_png(label))
        rows["instance"].append(_png(instance))
        rows["height"].append(size)
        rows["width"].append(size)
    table = pa.table({**rows, "height": pa.array(rows["height"], pa.int32()),
                      "width": pa.array(rows["width"], pa.int32())})
    shard = directory / "train-00000.parquet"
    pq.write_table(table, shard)
    manifest = {
        "format_version": 1, "dataset": "synthetic",
        "class_names": [f"class{i}" for i in range(NUM_CLASSES)],
        "class_colors": [[60 * i, 255 - 60 * i, 30 * i] for i in range(NUM_CLASSES)],
        "num_classes": NUM_CLASSES, "contain_dontcare_label": False, "has_instance": True,
        "semantic_nc": NUM_CLASSES + 1, "load_size": size, "splits": {"train": num_train},
        "label_only_splits": [],
        "shards": [{"path": shard.name, "split": "train", "rows": num_train,
                    "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()}],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


# The exact fp32 path without an EMA generator (the official computation): tests compare weights and losses
# across runs, processes and resumes exactly. params.yaml's defaults (bf16 autocast, channels_last, EMA) differ.
EXACT_FP32 = {"amp": "off", "channels_last": False, "ema_decay": 0.0, "ema_rampup": 0.0, "ema_bn_batches": 0}


def tiny_settings(prepared_dir: Path, out_dir: Path, **train: object) -> dict:
    """Nested config dict: ngf/ndf 8, 32x32 crops, batch 2, a few steps, CPU, exact fp32 (EXACT_FP32), no VGG."""
    return {
        "dataset": {"name": "synthetic", "prepared_dir": str(prepared_dir), "load_size": SIZE, "crop_size": SIZE,
                    "aspect_ratio": 1.0, "num_workers": 0},
        "model": {"ngf": 8, "ndf": 8, "num_upsampling_layers": "normal"},
        "loss": {"lambda_vgg": 0.0},
        "train": {**EXACT_FP32, "batch_size": 2, "epochs": 1, "epochs_decay": 1, "device": "cpu",
                  "out_dir": str(out_dir), "checkpoint_every": 2, "keep_last": 2, "log_every": 1, "sample_every": 2,
                  **train},
    }


def tiny_config(prepared_dir: Path, out_dir: Path, **train: object) -> Config:
    return config_from_dict(tiny_settings(prepared_dir, out_dir, **train), "tiny").resolved()
