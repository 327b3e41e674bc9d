"""``python -m components.evaluate``: score the trained generator on the validation split.

    python -m components.evaluate [--params FILE] [-S key=value ...]

Generates the ``evaluate.split`` images with the (EMA) generator and reports, beside the real
images (the judge's ceiling) and the mean-colour baseline (the floor): judge mIoU, pixel
accuracy and per-class IoU, the judge Fréchet distance, FID and LPIPS or the recorded reason
they are unavailable (dagan/eval/protocol.py, paper section 4), and for multimodal models
(``model.style=vae|noise3d``) the diversity of ``evaluate.num_style_samples`` samples per label
map. Writes into ``evaluate.out_dir``: ``metrics.json`` (DVC metrics), ``per_class_iou.json`` and
``per_class_iou.csv`` (a DVC bar plot), ``unavailable.txt`` (why FID/LPIPS are missing),
``config.yaml`` and ``figures/``: ``samples.png`` (layout | generated | real; layout | K samples
| real for multimodal models), ``per_class_iou.png`` (bars) and ``attention.png`` (the attention
maps the model has: SAM maps and CAM channel weights, paper Fig. 9; SPAP gates of G and D;
CA2SIS's cross-attention). The outputs of one evaluation appear together or not at all (written
into a new folder beside ``evaluate.out_dir`` and swapped in whole, its hidden files such as dvc's
``.gitignore`` kept; a folder holding anything else is refused), and ``metrics.json`` names the
checkpoint it scored (``checkpoint``: path and sha256 of the file; register refuses another). All
of it goes into the training's MLflow run (``<train.out_dir>/mlflow_run.json``) at the training's
last step: ``eval/*`` metrics, short ``eval/<metric>_unavailable`` tags, ``eval/checkpoint`` and
``eval/checkpoint_sha256``, the per-class IoU table (``mlflow.log_table``), the
validation split as a dataset input. The tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else
``mlflow.tracking_uri``.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch.utils.data import DataLoader

from components.cli import entry, load, log, make_parser, run_main
from components.outputs import (
    EVAL_METRICS_FILE,
    FIGURES_DIR,
    PER_CLASS_IOU_TABLE,
    SCORED_CHECKPOINT,
    UNAVAILABLE_FILE,
    checkpoint_identity,
    checkpoint_path,
    connect_tracking,
    judge_path,
    tracking_uri,
    training_run_id,
    training_step,
    write_json,
    write_png,
)
from components.settings import StepConfig
from components.tracking import EVALUATED_TAG, NOTE_TAG, evaluated_note, log_dataset
from dagan.atomic import atomic_directory, atomic_write_text
from dagan.checkpoint import load_discriminator, load_generator
from dagan.config import Config, resolved_value, save_config
from dagan.console import progress
from dagan.data import PairedDataset, read_manifest
from dagan.disk import DISK_FULL
from dagan.distributed import resolve_device
from dagan.eval.baseline import class_mean_colors
from dagan.eval.fid import build_inception, build_lpips, load_optional_metric
from dagan.eval.judge import load_judge
from dagan.eval.protocol import SOURCES, evaluate_generator, style_photo
from dagan.eval.visualize import attention_figure, bar_chart, sample_grid
from dagan.generator import run_generator
from dagan.labels import semantic_input

DESCRIPTION = """Score the trained generator on evaluate.split against the real images (the judge's ceiling)
and the mean-colour baseline (the floor): judge mIoU, pixel accuracy and per-class IoU, the judge
Fréchet distance, FID and LPIPS when their weights exist. Writes metrics, per-class IoU and figures
into evaluate.out_dir and logs them into the training's MLflow run."""


# what an evaluation writes into evaluate.out_dir (its whole content, but for hidden files)
EVALUATION_OUTPUTS = (EVAL_METRICS_FILE, "per_class_iou.json", PER_CLASS_IOU_TABLE, UNAVAILABLE_FILE, "config.yaml",
                      FIGURES_DIR)


def _loader(config: Config, split: str, batch_size: int) -> DataLoader:
    dataset = PairedDataset(config.dataset.prepared_dir, split, crop_size=resolved_value(config.dataset.crop_size),
                            aspect_ratio=resolved_value(config.dataset.aspect_ratio), train=False, flip=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=config.dataset.num_workers)


def _progress(loader: DataLoader):
    return progress(loader, total=len(loader), desc="evaluate", unit="batch")


@torch.no_grad()
def _attention(generator, discriminator, config: Config, num_label_channels: int, colors, device):
    """The paper's Fig. 9 for the first validation samples (None when the model has no attention maps)."""
    batch = next(iter(_loader(config, config.evaluate.split, config.evaluate.num_attention_samples)))
    label = batch["label"].to(device)
    instance = batch["instance"].to(device) if "instance" in batch else None
    semantic = semantic_input(label, num_label_channels, instance)
    style_image = style_photo(batch["image"].to(device), config.evaluate.style_from)
    image, attention = run_generator(generator, semantic, style_image, return_attention=True)
    if discriminator is not None:
        attention.update(discriminator(semantic, image, return_attention=True)[1])
    if not attention:
        return None
    if "ca2sis" in attention:  # the finest cross-attention layer
        attention["ca2sis"] = attention["ca2sis"][-1]
    return attention_figure(label.cpu(), image.cpu(), {k: v.cpu() for k, v in attention.items()}, colors)


def _evaluate(config: Config, device: torch.device):
    """(Evaluation, attention figure or None, {metric: reason unavailable}) of the generator on evaluate.split."""
    manifest = read_manifest(config.dataset.prepared_dir)
    generator, train_config, semantic_nc = load_generator(checkpoint_path(config), use_ema=config.evaluate.use_ema)
    if semantic_nc != manifest.semantic_nc:
        raise ValueError(f"{checkpoint_path(config)} takes {semantic_nc} label channels but the prepared dataset "
                         f"{config.dataset.prepared_dir} has {manifest.semantic_nc}: evaluate the model on the "
                         "dataset it was trained on")
    generator = generator.to(device)
    discriminator = None
    if train_config.model.spap_in("discriminator"):
        discriminator = load_discriminator(checkpoint_path(config)).to(device)
    judge = load_judge(judge_path(config), config).to(device)
    mean_colors = class_mean_colors(_loader(config, "train", config.evaluate.batch_size), manifest.num_classes)
    download = config.evaluate.download_weights
    inception, fid_reason = load_optional_metric(
        config.evaluate.fid, lambda: build_inception(config.evaluate.fid_weights, download))
    lpips, lpips_reason = load_optional_metric(config.evaluate.lpips, lambda: build_lpips(download))
    result = evaluate_generator(
        generator, judge, _progress(_loader(config, config.evaluate.split, config.evaluate.batch_size)),
        num_classes=manifest.num_classes, num_label_channels=manifest.num_label_channels,
        class_names=manifest.class_names, mean_colors=mean_colors, device=device,
        inception=inception.to(device) if inception is not None else None,
        lpips=lpips.to(device) if lpips is not None else None, num_samples=config.evaluate.num_grid_samples,
        style_from=config.evaluate.style_from,
        num_style_samples=config.evaluate.num_style_samples, style_latent=config.evaluate.style_latent,
    )
    figure = _attention(generator, discriminator, config, manifest.num_label_channels, manifest.class_colors, device)
    unavailable = {name: reason for name, reason in (("fid", fid_reason), ("lpips", lpips_reason)) if reason}
    return result, figure, unavailable


def short_reason(reason: str) -> str:
    """A tag-sized version of an unavailability reason (its first clause); the whole text is an artifact."""
    first = reason.split(": ", 1)[0].split(". ", 1)[0]
    return (first if len(first) <= 80 else first[:77] + "...") + f" (see eval/{UNAVAILABLE_FILE})"


def per_class_rows(per_class: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """One row per class: class, generated, real, baseline (None: the class is absent)."""
    return [{"class": name, **{source: per_class[source][name] for source in SOURCES}}
            for name in per_class[SOURCES[0]]]


def write_per_class_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """``per_class_iou.csv``: class, generated, real, baseline (empty: the class is absent)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["class", *SOURCES], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{key: "" if value is None else value for key, value in row.items()} for row in rows])
    atomic_write_text(path, table.getvalue())


def _check_own_folder(out_dir: Path) -> None:
    """``out_dir`` holds nothing but an evaluation's outputs and hidden files (the .gitignore dvc writes there): it is
    replaced whole."""
    foreign = sorted(path.name for path in out_dir.iterdir() if path.name not in EVALUATION_OUTPUTS
                     and not path.name.startswith(".")) if out_dir.is_dir() else []
    if foreign:
        raise FileExistsError(f"{out_dir} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which "
                              "no evaluation wrote, and an evaluation replaces its folder whole: set evaluate.out_dir "
                              "to a folder of its own")


def _write_outputs(config: Config, out_dir: Path, result, figure, unavailable: dict[str, str],
                   checkpoint: dict[str, str]) -> list[Path]:
    """Every output file into a new folder, which then replaces ``out_dir`` whole (keeping its hidden files):
    ``out_dir`` holds the outputs of the last evaluation or of this one, never some of each (a figure the new
    model has not, e.g. attention.png, goes too); returns the files (in ``out_dir``)."""
    _check_own_folder(out_dir)
    try:
        with atomic_directory(out_dir) as staging:
            files = _write_files(config, staging, result, figure, unavailable, checkpoint)
            for hidden in out_dir.glob(".*") if out_dir.is_dir() else []:
                copy = shutil.copytree if hidden.is_dir() else shutil.copy2
                copy(hidden, staging / hidden.name)
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise OSError(err.errno, f"{err.strerror}; {out_dir} was left as it was", str(out_dir)) from None
    return [out_dir / file.relative_to(staging) for file in files]


def _write_files(config: Config, out_dir: Path, result, figure, unavailable: dict[str, str],
                 checkpoint: dict[str, str]) -> list[Path]:
    """metrics.json (with the checkpoint scored), per_class_iou.json/.csv, unavailable.txt, config.yaml and the
    figures; returns the files."""
    manifest = read_manifest(config.dataset.prepared_dir)
    metrics = {k: round(v, 6) for k, v in result.metrics.items()}
    rows = per_class_rows(result.per_class_iou)
    write_json(out_dir / EVAL_METRICS_FILE, {**metrics, "unavailable": unavailable, SCORED_CHECKPOINT: checkpoint})
    write_json(out_dir / "per_class_iou.json", result.per_class_iou)
    write_per_class_table(out_dir / PER_CLASS_IOU_TABLE, rows)
    atomic_write_text(out_dir / UNAVAILABLE_FILE,
                      "".join(f"{name}: {reason}\n\n" for name, reason in unavailable.items())
                      or "FID and LPIPS were computed.\n")
    save_config(config, out_dir / "config.yaml")
    figures = out_dir / FIGURES_DIR
    generated = result.samples.get("multimodal", result.samples["generated"])  # K samples per label map
    files = [write_png(figures / "samples.png", sample_grid(result.samples["label"], generated,
                                                           result.samples["real"], manifest.class_colors)),
             write_png(figures / "per_class_iou.png", bar_chart(
                 [row["class"] for row in rows], {source: [row[source] for row in rows] for source in SOURCES},
                 f"judge IoU per class on {config.evaluate.split}"))]
    if figure is not None:
        files.append(write_png(figures / "attention.png", figure))
    return [out_dir / name for name in EVALUATION_OUTPUTS if name != FIGURES_DIR] + files


def _log_to_mlflow(config: StepConfig, run_id: str, metrics: dict, rows: list[dict], unavailable: dict[str, str],
                   files: list[Path], checkpoint: dict[str, str]) -> None:
    """Into the training's run, at its last step: eval/* metrics, short tags (the checkpoint scored too), the
    per-class table, the files."""
    step = training_step(config)
    connect_tracking(tracking_uri(config))
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)
        note = evaluated_note(run.data.tags.get(NOTE_TAG, ""), metrics)
        mlflow.set_tags({EVALUATED_TAG: "yes", NOTE_TAG: note, **{f"eval/{name}_unavailable": short_reason(reason)
                                                                  for name, reason in unavailable.items()}})
        mlflow.set_tags({"eval/checkpoint": checkpoint["path"], "eval/checkpoint_sha256": checkpoint["sha256"]})
        mlflow.log_table({"step": [step] * len(rows), **{key: [row[key] for row in rows] for key in rows[0]}},
                         artifact_file="eval/per_class_iou_table.json")
        log_dataset(mlflow.MlflowClient(), run_id, config.dataset.prepared_dir, config.evaluate.split, "evaluation")
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="eval/figures" if path.suffix == ".png" else "eval")


def _run(config: StepConfig) -> int:
    out_dir = Path(config.evaluate.out_dir)
    run_id = training_run_id(config)
    _check_own_folder(out_dir)
    checkpoint = checkpoint_identity(config)
    result, figure, unavailable = _evaluate(config, resolve_device(config.evaluate.device, key="evaluate.device"))
    if checkpoint_identity(config) != checkpoint:
        raise ValueError(f"{checkpoint['path']} was replaced while it was evaluated (a training still writing it?); "
                         "nothing was written: evaluate again once it is final")
    files = _write_outputs(config, out_dir, result, figure, unavailable, checkpoint)
    metrics = {k: round(v, 6) for k, v in result.metrics.items()}
    _log_to_mlflow(config, run_id, metrics, per_class_rows(result.per_class_iou), unavailable, files, checkpoint)
    for name, reason in unavailable.items():
        log.warning("%s unavailable: %s", name, reason)
    log.info("judge mIoU generated %.4f / real %.4f / baseline %.4f; fd_judge generated %.4f vs baseline %.4f",
             metrics["judge_miou_generated"], metrics["judge_miou_real"], metrics["judge_miou_baseline"],
             metrics["fd_judge_generated"], metrics["fd_judge_baseline"])
    if "diversity_judge" in metrics:
        log.info("diversity of %d samples per label map: judge features %.4f, LPIPS %s",
                 config.evaluate.num_style_samples, metrics["diversity_judge"],
                 metrics.get("diversity_lpips", "unavailable"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("components.evaluate", DESCRIPTION)
    args = parser.parse_args(argv)
    return run_main(args, lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
