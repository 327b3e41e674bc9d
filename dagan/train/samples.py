"""Sample grids for tracking: one row per sample, colourised label | fake | real."""

from __future__ import annotations

import numpy as np
import torch


def palette(class_colors: list[list[int]], num_label_channels: int) -> torch.Tensor:
    """(num_label_channels, 3) uint8 colours; ids without a colour (e.g. don't care) are black."""
    colors = torch.zeros(num_label_channels, 3, dtype=torch.uint8)
    for index, rgb in enumerate(class_colors[:num_label_channels]):
        colors[index] = torch.tensor(rgb, dtype=torch.uint8)
    return colors


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def sample_grid(label: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, colors: torch.Tensor,
                max_rows: int = 4) -> np.ndarray:
    """label (B, H, W) ids, fake/real (B, 3, H, W) in [-1, 1] -> (rows*H, 3*W, 3) uint8 array."""
    rows = min(max_rows, label.shape[0])
    label_rgb = colors[label[:rows].cpu().long().clamp(0, colors.shape[0] - 1)]
    panels = torch.cat([label_rgb, _to_uint8(fake[:rows]), _to_uint8(real[:rows])], dim=2)
    return panels.reshape(-1, *panels.shape[2:]).numpy()
