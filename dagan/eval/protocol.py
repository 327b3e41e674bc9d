"""The evaluation of a generator on a labelled split (paper section 4, "Evaluation Metrics").

For every batch of (label map, real image) the generator's image, the real image and the
mean-colour baseline's image (:mod:`dagan.eval.baseline`) are each segmented by the judge
(:mod:`dagan.eval.judge`) and scored against the label map. Reported per source
(``generated`` / ``real`` / ``baseline``): judge mIoU, pixel accuracy and per-class IoU. Against
the real images: the judge Fréchet distance (``fd_judge``, in the judge's features), FID
(standard Inception features) and LPIPS when those networks are passed in. Networks with side
effects (judge, Inception, LPIPS) are arguments; nothing is loaded here.

A style-encoding generator (CA2SIS) takes each scene's styles from its photo (``style_from="photo"``,
the CA2SIS paper's reconstruction protocol) or from its class-mean styles (``"class_mean"``, no photo
seen); DAGAN ignores the photo.

The scored images of a multimodal generator (``model.style=vae|noise3d``) use z = 0, the prior's
mean, so the scores are deterministic; ``style_latent="real_photo"`` scores a ``vae`` model as
the official test script does instead (z sampled from each real photo's encoded style, with a
fixed seed). Its diversity on K more samples per label map comes from :mod:`dagan.eval.diversity`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from dagan.eval.baseline import paint_mean_colors
from dagan.eval.diversity import DiversityMeter, is_multimodal, real_photo_latent
from dagan.eval.judge import Judge, evaluated_target
from dagan.eval.metrics import confusion_matrix, frechet_distance, mean_iou, per_class_iou, pixel_accuracy
from dagan.generator import run_generator
from dagan.labels import semantic_input

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
    # first images: label, generated, real, and for multimodal models "multimodal" (N, K, 3, H, W)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def evaluate_generator(
    generator: nn.Module,
    judge: Judge,
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
    num_style_samples: int = 4,
    style_latent: str = "mean",
    seed: int = 0,
) -> Evaluation:
    """Score generated, real and baseline images of ``batches`` (dicts: label, image, [instance]).

    ``num_samples``: images kept for the sample grid. Multimodal generators only (ignored for
    ``style=off``): ``num_style_samples`` K per label map for the diversity score, ``style_latent``
    ``mean`` (z = 0) or ``real_photo`` (vae: the real photo's sampled style), ``seed`` of their noise.
    """
    diversity = None
    if is_multimodal(generator):
        diversity = DiversityMeter(generator, judge, lpips, num_style_samples, seed)
    if style_latent not in ("mean", "real_photo"):
        raise ValueError(f"style_latent must be 'mean' or 'real_photo', got {style_latent!r}")
    if style_latent == "real_photo" and getattr(generator, "style", "off") != "vae":
        raise ValueError("evaluate.style_latent=real_photo needs a model trained with model.style=vae "
                         "(it encodes the real photos); use evaluate.style_latent=mean")
    generator.eval()
    judge.eval()
    matrices: dict[str, torch.Tensor] = {}
    judge_features: dict[str, list[torch.Tensor]] = {source: [] for source in SOURCES}
    inception_features: dict[str, list[torch.Tensor]] = {source: [] for source in SOURCES}
    lpips_values: dict[str, list[torch.Tensor]] = {"generated": [], "baseline": []}
    kept: dict[str, list[torch.Tensor]] = {"label": [], "generated": [], "real": []}
    count = 0
    for batch_index, batch in enumerate(batches):
        label = batch["label"].to(device)
        real = batch["image"].to(device)
        instance = batch["instance"].to(device) if "instance" in batch else None
        semantic = semantic_input(label, num_label_channels, instance)
        z = real_photo_latent(generator, real, seed + batch_index) if style_latent == "real_photo" else None
        images = {
            "generated": (run_generator(generator, semantic, style_photo(real, style_from)) if z is None
                          else generator(semantic, z)),
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
        if diversity is not None:
            diversity.add(semantic, take)
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
    if diversity is not None:
        metrics.update(diversity.metrics())
        samples["multimodal"] = diversity.samples()
    return Evaluation(metrics, per_class, samples)
