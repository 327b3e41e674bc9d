"""Fixtures of the evaluation tests: a tiny prepared dataset with train/val splits, a tiny
generator checkpoint in the documented format, and a training run in a real MLflow store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from PIL import Image
from train_fixtures import EXACT_FP32

from components.settings import StepConfig, step_config_from_dict
from dagan.checkpoint import FORMAT_VERSION, save_checkpoint
from dagan.config import Config
from dagan.generator import build_generator

NUM_CLASSES = 4
SIZE = 32
COLORS = np.array([[40, 60, 200], [200, 60, 40], [60, 200, 60], [220, 220, 40]])


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scene(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    label = np.zeros((size, size), np.uint8)
    for class_id in range(1, NUM_CLASSES):
        top, left = rng.integers(0, size - 10, 2)
        label[top:top + 10, left:left + 12] = class_id
    instance = label.astype(np.uint16) * 1000
    image = np.clip(COLORS[label] + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    return label, instance, image


def write_prepared(directory: Path, splits: dict[str, int] | None = None, seed: int = 0, size: int = SIZE) -> Path:
    """Prepared dataset (docs/ARCHITECTURE.md format): 4 classes, instance maps, flat-coloured rectangles."""
    splits = splits or {"train": 16, "val": 8}
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = []
    for split, count in splits.items():
        rows = {"id": [], "split": [], "image": [], "label": [], "instance": [], "height": [], "width": []}
        for index in range(count):
            label, instance, image = scene(rng, size)
            for key, value in (("id", f"{split}-{index:03d}"), ("split", split), ("image", png(image)),
                               ("label", png(label)), ("instance", png(instance)), ("height", size),
                               ("width", size)):
                rows[key].append(value)
        table = pa.table({**rows, "height": pa.array(rows["height"], pa.int32()),
                          "width": pa.array(rows["width"], pa.int32())})
        shard = directory / f"{split}-00000.parquet"
        pq.write_table(table, shard)
        shards.append({"path": shard.name, "split": split, "rows": count,
                       "sha256": hashlib.sha256(shard.read_bytes()).hexdigest()})
    manifest = {
        "format_version": 1, "dataset": "synthetic", "class_names": [f"class{i}" for i in range(NUM_CLASSES)],
        "class_colors": COLORS.tolist(), "num_classes": NUM_CLASSES, "contain_dontcare_label": False,
        "has_instance": True, "semantic_nc": NUM_CLASSES + 1, "load_size": size, "splits": splits,
        "label_only_splits": [], "shards": shards,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def tiny_config(root: Path, size: int = SIZE, **sections: dict) -> StepConfig:
    """ngf/ndf 8, size x size (32), CPU, every output under ``root``, a sqlite MLflow store in ``root``."""
    data = {
        "dataset": {"name": "synthetic", "prepared_dir": str(root / "prepared"), "load_size": size,
                    "crop_size": size, "aspect_ratio": 1.0, "num_workers": 0},
        "model": {"ngf": 8, "ndf": 8, "num_upsampling_layers": "normal"},
        "loss": {"lambda_vgg": 0.0},
        "train": {**EXACT_FP32, "batch_size": 4, "epochs": 1, "epochs_decay": 0, "device": "cpu",
                  "out_dir": str(root / "train")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test"},
        "judge": {"width": 8, "levels": 2, "epochs": 10, "batch_size": 4, "lr": 1.0e-2, "device": "cpu",
                  "out_dir": str(root / "judge")},
        "evaluate": {"batch_size": 4, "device": "cpu", "num_grid_samples": 3, "num_attention_samples": 2,
                     "download_weights": False, "out_dir": str(root / "eval")},
        "register": {"out_dir": str(root / "register")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return step_config_from_dict(data, "tiny").resolved()


def write_params(config: StepConfig, root: Path) -> Path:
    """The resolved config, every section, as a params file for ``--params``."""
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path


def write_checkpoint(config: Config, path: Path, seed: int = 0) -> Path:
    """A generator checkpoint in the documented training-checkpoint format (untrained weights)."""
    torch.manual_seed(seed)
    generator = build_generator(config, NUM_CLASSES + 1, NUM_CLASSES)
    state = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "semantic_nc": NUM_CLASSES + 1,
             "num_label_channels": NUM_CLASSES, "generator": generator.state_dict(), "discriminator": {},
             "ema": None, "optimizer_g": {}, "optimizer_d": {}, "scaler": None, "step": 0, "epoch": 0, "rng": {}}
    return save_checkpoint(state, path)


def write_judge(config: StepConfig) -> Path:
    """An untrained judge checkpoint where evaluate looks for it (the evaluation's plumbing is what is tested)."""
    from dagan.eval.judge import build_judge, save_judge

    path = Path(config.judge.out_dir) / "judge.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_judge(path, build_judge(config, NUM_CLASSES), config, NUM_CLASSES)
    return path


def start_training_run(config: StepConfig, steps: int | None = None) -> str:
    """A finished MLflow run standing in for the training's, and its mlflow_run.json.

    With ``steps``: system metrics at steps 0..2, a final loss at ``steps`` and the training's
    metrics.json saying it ran ``steps`` steps (as components.train writes them)."""
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    experiment = mlflow.set_experiment(config.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="B6-synthetic-stand-in") as run:
        mlflow.log_param("stand_in", "training")
        if steps is not None:
            for step in range(3):
                mlflow.log_metric("system/cpu_utilization_percentage", 50.0 + step, step=step)
            mlflow.log_metric("loss/g_total", 1.5, step=steps)
    out = Path(config.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        (out / "metrics.json").write_text(json.dumps({"steps": steps, "total_steps": steps, "stopped_early": False}))
    (out / "mlflow_run.json").write_text(json.dumps({"run_id": run.info.run_id,
                                                     "experiment_id": experiment.experiment_id,
                                                     "tracking_uri": config.mlflow.tracking_uri}))
    return run.info.run_id


GOOD_METRICS = {"judge_miou_generated": 0.5, "judge_miou_real": 0.6, "fd_judge_generated": 1.0,
                "fd_judge_baseline": 4.0}


def registered_model(root: Path, metrics: dict | None = None, **sections: dict) -> tuple[StepConfig, Path]:
    """Prepared data, a checkpoint, a training run and eval metrics, then ``components.register``.

    ``sections``: config overrides of :func:`tiny_config`, e.g. ``model={"style": "vae"}``.
    """
    from components.register import main as register

    config = tiny_config(root, **sections)
    write_prepared(root / "prepared")
    write_checkpoint(config, root / "train" / "checkpoints" / "final.pt")
    start_training_run(config, steps=5)
    write_metrics(config, metrics or GOOD_METRICS)
    params = write_params(config, root)
    assert register(["--params", str(params)]) == 0
    return config, params


def write_metrics(config: Config, metrics: dict) -> None:
    """``metrics`` as evaluate's metrics.json, naming the checkpoint they belong to (the config's, as it is now)."""
    from components.outputs import SCORED_CHECKPOINT, checkpoint_identity

    out = Path(config.evaluate.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**metrics, SCORED_CHECKPOINT: checkpoint_identity(config)}))
