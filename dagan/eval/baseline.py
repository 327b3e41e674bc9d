"""The trivial mean-colour baseline: every metric of the evaluation gets a floor beside it.

It paints each pixel with the mean colour its class has in the real training images, so it
reproduces the layout perfectly and the texture not at all. A generator that does not beat it
on the Fréchet distance has learnt nothing beyond flat colours. Pixels of classes never seen
in training (and don't care) get the mean colour of all training pixels.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def class_mean_colors(batches: Iterable[dict[str, torch.Tensor]], num_classes: int) -> torch.Tensor:
    """(num_classes + 1, 3) mean RGB in [-1, 1] per label id; the last row is the overall mean.

    ``batches`` yield dicts with ``image`` (B, 3, H, W) in [-1, 1] and ``label`` (B, H, W).
    Classes without any pixel (and label ids >= num_classes) take the overall mean colour.
    """
    sums = torch.zeros(num_classes + 1, 3, dtype=torch.float64)
    counts = torch.zeros(num_classes + 1, dtype=torch.float64)
    for batch in batches:
        image, label = batch["image"].double(), batch["label"].long()
        label = torch.where((label >= 0) & (label < num_classes), label, num_classes).reshape(-1)
        pixels = image.permute(0, 2, 3, 1).reshape(-1, 3)
        sums.index_add_(0, label, pixels)
        counts += torch.bincount(label, minlength=num_classes + 1).double()
    if counts.sum() == 0:
        raise ValueError("no training pixels to compute the mean-colour baseline from")
    overall = sums.sum(dim=0) / counts.sum()
    colors = overall.repeat(num_classes + 1, 1)
    seen = counts > 0
    colors[seen] = sums[seen] / counts[seen, None]
    colors[num_classes] = overall
    return colors.float()


def paint_mean_colors(label: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """(B, H, W) label ids -> (B, 3, H, W) image painted with ``colors`` from :func:`class_mean_colors`."""
    num_classes = colors.shape[0] - 1
    label = label.long()
    label = torch.where((label >= 0) & (label < num_classes), label, num_classes)
    return colors.to(label.device)[label].permute(0, 3, 1, 2).contiguous()
