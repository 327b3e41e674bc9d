"""``python -m components.evaluate``: score the trained generator on the validation split.

    python -m components.evaluate [--params FILE] [-S key=value ...]

Generates the ``evaluate.split`` images with the (EMA) generator and reports, beside the real
images (the judge's ceiling) and the mean-colour baseline (the floor): judge mIoU, pixel
accuracy and per-class IoU, the judge Fréchet distance, FID and LPIPS or the recorded reason
they are unavailable (dagan/evaluation.py, paper section 4), and for multimodal models
(``model.style=vae|noise3d``) the diversity of ``evaluate.num_style_samples`` samples per label
map. Writes into ``evaluate.out_dir``: ``metrics.json`` (DVC metrics), ``per_class_iou.json``,
``figures/samples.png`` (label | generated | real; label | K samples | real for multimodal
models), ``figures/attention.png`` (SAM maps and CAM channel weights, paper Fig. 9;
only for variants with attention) and ``config.yaml``,
and logs all of it into the training's MLflow run (``<train.out_dir>/mlflow_run.json``). The
tracking URI is ``$MLFLOW_TRACKING_URI`` when set, else ``mlflow.tracking_uri``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow
import torch
from PIL import Image
from torch.utils.data import DataLoader

from components.cli import entry, load, log, make_parser, run_main
from components.outputs import checkpoint_path, judge_path, tracking_uri, training_run_id, write_json
from dagan.baseline import class_mean_colors
from dagan.checkpoint import load_generator
from dagan.config import Config, save_config
from dagan.data import PairedDataset, read_manifest
from dagan.distributed import resolve_device
from dagan.evaluation import evaluate_generator
from dagan.fid import build_inception, build_lpips, load_optional_metric
from dagan.judge import load_judge
from dagan.labels import semantic_input
from dagan.visualize import attention_figure, sample_grid


def _loader(config: Config, split: str, batch_size: int) -> DataLoader:
    dataset = PairedDataset(config.dataset.prepared_dir, split, crop_size=config.dataset.crop_size,
                            aspect_ratio=config.dataset.aspect_ratio, train=False, flip=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=config.dataset.num_workers)


def save_png(image, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
    return path


@torch.no_grad()
def _attention(generator, config: Config, num_label_channels: int, colors, device):
    """The paper's Fig. 9 for the first validation samples (None when the variant has no attention)."""
    batch = next(iter(_loader(config, config.evaluate.split, config.evaluate.num_attention_samples)))
    label = batch["label"].to(device)
    instance = batch["instance"].to(device) if "instance" in batch else None
    image, attention = generator(semantic_input(label, num_label_channels, instance), return_attention=True)
    if not attention:
        return None
    return attention_figure(label.cpu(), image.cpu(), {k: v.cpu() for k, v in attention.items()}, colors)


def _run(config: Config) -> int:
    out_dir = Path(config.evaluate.out_dir)
    device = resolve_device(config.evaluate.device, key="evaluate.device")
    run_id = training_run_id(config)
    manifest = read_manifest(config.dataset.prepared_dir)
    generator, _, semantic_nc = load_generator(checkpoint_path(config), use_ema=config.evaluate.use_ema)
    if semantic_nc != manifest.semantic_nc:
        raise ValueError(f"{checkpoint_path(config)} takes {semantic_nc} label channels but the prepared dataset "
                         f"{config.dataset.prepared_dir} has {manifest.semantic_nc}: evaluate the model on the "
                         "dataset it was trained on")
    generator = generator.to(device)
    judge = load_judge(judge_path(config), config).to(device)
    mean_colors = class_mean_colors(_loader(config, "train", config.evaluate.batch_size), manifest.num_classes)
    download = config.evaluate.download_weights
    inception, fid_reason = load_optional_metric(
        config.evaluate.fid, lambda: build_inception(config.evaluate.fid_weights, download))
    lpips, lpips_reason = load_optional_metric(config.evaluate.lpips, lambda: build_lpips(download))
    result = evaluate_generator(
        generator, judge, _loader(config, config.evaluate.split, config.evaluate.batch_size),
        num_classes=manifest.num_classes, num_label_channels=manifest.num_label_channels,
        class_names=manifest.class_names, mean_colors=mean_colors, device=device,
        inception=inception.to(device) if inception is not None else None,
        lpips=lpips.to(device) if lpips is not None else None, num_samples=config.evaluate.num_grid_samples,
        num_style_samples=config.evaluate.num_style_samples, style_latent=config.evaluate.style_latent,
    )
    figure = _attention(generator, config, manifest.num_label_channels, manifest.class_colors, device)
    metrics = {k: round(v, 6) for k, v in result.metrics.items()}
    unavailable = {name: reason for name, reason in (("fid", fid_reason), ("lpips", lpips_reason)) if reason}

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", {**metrics, "unavailable": unavailable})
    write_json(out_dir / "per_class_iou.json", result.per_class_iou)
    figures = out_dir / "figures"
    figures.mkdir(exist_ok=True)
    generated = result.samples.get("multimodal", result.samples["generated"])  # K samples per label map
    images = [save_png(sample_grid(result.samples["label"], generated, result.samples["real"], manifest.class_colors),
                       figures / "samples.png")]
    if figure is not None:
        images.append(save_png(figure, figures / "attention.png"))
    save_config(config, out_dir / "config.yaml")

    mlflow.set_tracking_uri(tracking_uri(config))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"eval/{k}": v for k, v in metrics.items()})
        mlflow.set_tags({f"eval/{name}_unavailable": reason[:4000] for name, reason in unavailable.items()})
        for path in [out_dir / "metrics.json", out_dir / "per_class_iou.json", out_dir / "config.yaml", *images]:
            mlflow.log_artifact(str(path), artifact_path="eval/figures" if path.suffix == ".png" else "eval")
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
    args = make_parser(__doc__.splitlines()[0]).parse_args(argv)
    return run_main(lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
