"""The evaluation of a generator on a labelled split (paper section 4, "Evaluation Metrics").

For every batch of (label map, real image) the generator's image, the real image and the
mean-colour baseline's image (:mod:`dagan.baseline`) are each segmented by the judge
(:mod:`dagan.judge`) and scored against the label map. Reported per source
(``generated`` / ``real`` / ``baseline``): judge mIoU, pixel accuracy and per-class IoU. Against
the real images: the judge Fréchet distance (``fd_judge``, in the judge's features), FID
(standard Inception features) and LPIPS when those networks are passed in. Networks with side
effects (judge, Inception, LPIPS) are arguments; nothing is loaded here.

The main images of a multimodal generator (``model.style=vae|noise3d``) use z = 0, the prior's
mean, so their scores are deterministic. Its diversity is measured on K more samples of every
label map, z ~ N(0, I) from a fixed seed: ``diversity_judge`` is the mean distance (L2) between
the judge features of two samples of the same label map, over all K(K-1)/2 pairs and all label
maps, and ``diversity_lpips`` the mean LPIPS between them (the LPIPS diversity of BicycleGAN,
CC-FPSE and OASIS) when LPIPS is passed in. Higher means more varied images; 0 means one image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from dagan.baseline import paint_mean_colors
from dagan.judge import evaluated_target
from dagan.labels import semantic_input
from dagan.latent import seeded_normal
from dagan.metrics import confusion_matrix, frechet_distance, mean_iou, per_class_iou, pixel_accuracy

SOURCES = ("generated", "real", "baseline")


@dataclass
class Evaluation:
    metrics: dict[str, float]  # flat name -> value (DVC/MLflow metrics)
    per_class_iou: dict[str, dict[str, float | None]]  # source -> class name -> IoU (None: class absent)
    # first images: label, generated, real, and for multimodal models "multimodal" (N, K, 3, H, W)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


def is_multimodal(generator: nn.Module) -> bool:
    return getattr(generator, "style", "off") != "off"


def _pairwise_mean(samples: list[torch.Tensor], distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Per label map, the mean distance over every pair of its K samples: (B,) from K tensors (B, ...)."""
    pairs = [distance(samples[i], samples[j]) for i in range(len(samples)) for j in range(i + 1, len(samples))]
    return torch.stack(pairs).mean(dim=0)


def _multimodal_samples(generator: nn.Module, semantic: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """(B, K, 3, H, W): K images per label map, z ~ N(0, I) drawn from ``seed`` (the same on every device)."""
    batch = semantic.shape[0]
    z = seeded_normal(seed, (num_samples, batch, generator.z_dim)).to(semantic.device)
    return torch.stack([generator(semantic, z[k]) for k in range(num_samples)], dim=1)


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
    num_style_samples: int = 4,
    style_seed: int = 0,
) -> Evaluation:
    """Score generated, real and baseline images of ``batches`` (dicts: label, image, [instance]).

    ``num_samples``: images kept for the sample grid; ``num_style_samples`` K and ``style_seed``:
    the samples of a multimodal generator's diversity score (ignored for ``style=off``).
    """
    multimodal = is_multimodal(generator)
    if multimodal and num_style_samples < 2:
        raise ValueError(f"the diversity score needs at least 2 samples per label map, got {num_style_samples}")
    diversity: dict[str, list[torch.Tensor]] = {"judge": [], "lpips": []}
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
        images = {
            "generated": generator(semantic),
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
        if multimodal:
            variants = _multimodal_samples(generator, semantic, num_style_samples, style_seed + batch_index)
            samples = list(variants.unbind(1))
            features = [judge.features(image) for image in samples]
            diversity["judge"].append(_pairwise_mean(features, lambda a, b: (a - b).norm(dim=1)).cpu())
            if lpips is not None:
                diversity["lpips"].append(_pairwise_mean(samples, lpips).cpu())
            kept.setdefault("multimodal", []).append(variants[:take].cpu())
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
    for name, values in diversity.items():
        if values:
            metrics[f"diversity_{name}"] = float(torch.cat(values).mean())
    samples = {name: torch.cat(tensors) for name, tensors in kept.items()}
    return Evaluation(metrics, per_class, samples)
