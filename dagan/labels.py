"""Label maps -> the generator's semantic input (one-hot + don't care + instance edges).

The semantic input has ``semantic_nc`` channels (docs/MODEL.md, "Semantic input"): one per class, one
more for "don't care" where the dataset has one (label id ``num_classes``), and one more for
instance edges where the dataset has instance maps. A pixel is an instance edge where its
instance id differs from one of its 4-neighbours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def instance_edges(instance: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) integer instance ids -> (B, 1, H, W) float edge map in {0, 1}."""
    if instance.dim() == 3:
        instance = instance.unsqueeze(1)
    edge = torch.zeros_like(instance, dtype=torch.bool)
    horizontal = instance[..., :, 1:] != instance[..., :, :-1]
    vertical = instance[..., 1:, :] != instance[..., :-1, :]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    return edge.float()


def semantic_input(
    label: torch.Tensor,
    num_label_channels: int,
    instance: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-hot encode ``label`` (B, H, W) ints into ``num_label_channels`` channels.

    ``num_label_channels`` = num_classes (+1 with a don't-care label). With ``instance``
    given, its edge map is appended as one more channel. Values outside
    ``[0, num_label_channels)`` raise a ValueError naming the offending values.
    """
    if label.dim() == 4:
        label = label.squeeze(1)
    label = label.long()
    low, high = int(label.min()), int(label.max())
    if low < 0 or high >= num_label_channels:
        raise ValueError(
            f"label values span [{low}, {high}] but the model expects ids in [0, {num_label_channels - 1}]; "
            "check the dataset's num_classes / don't-care settings"
        )
    one_hot = F.one_hot(label, num_label_channels).permute(0, 3, 1, 2).float()
    if instance is None:
        return one_hot
    return torch.cat([one_hot, instance_edges(instance)], dim=1)
