"""The evaluation of a generator on a labelled split (paper section 4, "Evaluation Metrics").

For every batch of (label map, real image) the generator's image, the real image and the
mean-colour baseline's image (:mod:`dagan.baseline`) are each segmented by the judge
(:mod:`dagan.judge`) and scored against the label map. Reported per source
(``generated`` / ``real`` / ``baseline``): judge mIoU, pixel accuracy and per-class IoU. Against
the real images: the judge Fréchet distance (``fd_judge``, in the judge's features), FID
(standard Inception features) and LPIPS when those networks are passed in. Networks with side
effects (judge, Inception, LPIPS) are arguments; nothing is loaded here.

A style-encoding generator (CA2SIS) takes each scene's styles from its photo (``style_from="photo"``,
the CA2SIS paper's reconstruction protocol) or from its class-mean styles (``"class_mean"``, no photo
seen); DAGAN ignores the photo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from dagan.baseline import paint_mean_colors
from dagan.generator import run_generator
from dagan.judge import evaluated_target
from dagan.labels import semantic_input
from dagan.metrics import confusion_matrix, frechet_distance, mean_iou, per_class_iou, pixel_accuracy

SOURCES = ("generated", "real", "baseline")
STYLE_SOURCES = ("photo", "class_mean")


def style_photo(photo: torch.Tensor, style_from: str) -> torch.Tensor | None:
    """The ``style_image`` a generator gets in evaluation: the scene's photo, or None (class means)."""
    if style_from not in STYLE_SOURCES:
        raise ValueError(f"style_from must be one of {', '.join(STYLE_SOURCES)}, got {style_from!r}")
    return photo if style_from == "photo" else None


@dataclass
class Evaluation:
    metrics: dict[str, float]  # flat name -> value (DVC/MLflow metrics)
    per_class_iou: dict[str, dict[str, float | None]]  # source -> class name -> IoU (None: class absent)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # first images: label, generated, real


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    judge: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    num_classes: int,
    num_label_channels: int,
    class_names: list[str],
    mean_colors: torch.Tensor,
    device: torch.device,
    inception: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    num_samples: int = 8,
    style_from: str = "photo",
) -> Evaluation:
    """Score generated, real and baseline images of ``batches`` (dicts: label, image, [instance])."""
    generator.eval()
    judge.eval()
    matrices: dict[str, torch.Tensor] = {}
    judge_features: dict[str, list[torch.Tensor]] = {source: [] for source in SOURCES}
    inception_features: dict[str, list[torch.Tensor]] = {source: [] for source in SOURCES}
    lpips_values: dict[str, list[torch.Tensor]] = {"generated": [], "baseline": []}
    kept: dict[str, list[torch.Tensor]] = {"label": [], "generated": [], "real": []}
    count = 0
    for batch in batches:
        label = batch["label"].to(device)
        real = batch["image"].to(device)
        instance = batch["instance"].to(device) if "instance" in batch else None
        images = {
            "generated": run_generator(generator, semantic_input(label, num_label_channels, instance),
                                       style_photo(real, style_from)),
            "real": real,
            "baseline": paint_mean_colors(label, mean_colors.to(device)),
        }
        target = evaluated_target(judge, label)
        for source, image in images.items():
            matrix = confusion_matrix(judge.predict(image), target, num_classes)
            matrices[source] = matrix if source not in matrices else matrices[source] + matrix
            judge_features[source].append(judge.features(image).cpu())
            if inception is not None:
                inception_features[source].append(inception(image).cpu())
        if lpips is not None:
            for source in lpips_values:
                lpips_values[source].append(lpips(images[source], real).cpu())
        take = max(num_samples - count, 0)
        for name, tensor in (("label", label), ("generated", images["generated"]), ("real", real)):
            kept[name].append(tensor[:take].cpu())
        count += label.shape[0]
    if count == 0:
        raise ValueError("the evaluation split yielded no batch")

    metrics: dict[str, float] = {"num_images": float(count)}
    per_class: dict[str, dict[str, float | None]] = {}
    for source in SOURCES:
        metrics[f"judge_miou_{source}"] = mean_iou(matrices[source])
        metrics[f"judge_accuracy_{source}"] = pixel_accuracy(matrices[source])
        iou = per_class_iou(matrices[source])
        per_class[source] = {
            name: (None if torch.isnan(value) else float(value)) for name, value in zip(class_names, iou, strict=False)
        }
    metrics["judge_miou_ratio"] = metrics["judge_miou_generated"] / max(metrics["judge_miou_real"], 1e-12)
    real_features = torch.cat(judge_features["real"])
    for source in ("generated", "baseline"):
        metrics[f"fd_judge_{source}"] = frechet_distance(real_features, torch.cat(judge_features[source]))
        if inception is not None:
            metrics[f"fid_{source}"] = frechet_distance(
                torch.cat(inception_features["real"]), torch.cat(inception_features[source])
            )
        if lpips is not None:
            metrics[f"lpips_{source}"] = float(torch.cat(lpips_values[source]).mean())
    samples = {name: torch.cat(tensors) for name, tensors in kept.items()}
    return Evaluation(metrics, per_class, samples)
