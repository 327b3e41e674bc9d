"""Pictures of the evaluation: sample grids and attention maps (paper Fig. 9).

* :func:`sample_grid`: one row per sample, columns label map (colourised) | generated | real.
* :func:`attention_figure`: one row per sample, columns label | generated | then the maps the
  model has: SAM spatial attention map A_s | CAM channel weights delta (one cell per channel,
  dark = low) | SPAP gates of the generator, one per cascade step (how much the step takes from
  its new pyramid level; channel means) | SPAP gates of the discriminator's finest scale (on the
  generated image) | CA2SIS cross-attention of the finest layer: the class whose style each
  position takes most (in the class colours) and that weight (heat map).

Everything returns uint8 RGB arrays (H, W, 3); writing them is the caller's business.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dagan.generate import colorize

# A perceptually ordered dark-blue -> teal -> yellow ramp (anchor colours, linearly interpolated).
HEAT_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
GAP = 2  # pixels between cells


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def heatmap(values: np.ndarray) -> np.ndarray:
    """2-D array in [0, 1] -> (H, W, 3) uint8 on the HEAT_ANCHORS ramp."""
    position = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(max=len(HEAT_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    return (HEAT_ANCHORS[low] * (1 - fraction) + HEAT_ANCHORS[low + 1] * fraction).round().astype(np.uint8)


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Arrange equally tall cells into a white-separated grid (cells of a column share a width)."""
    widths = [max(row[c].shape[1] for row in rows) for c in range(len(rows[0]))]
    height = max(cell.shape[0] for row in rows for cell in row)
    canvas = np.full((len(rows) * (height + GAP) - GAP, sum(widths) + GAP * (len(widths) - 1), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = 0
        for cell, width in zip(row, widths, strict=True):
            top = r * (height + GAP)
            canvas[top : top + cell.shape[0], x : x + cell.shape[1]] = cell
            x += width + GAP
    return canvas


def sample_grid(
    labels: torch.Tensor, generated: torch.Tensor, real: torch.Tensor, colors: list[list[int]]
) -> np.ndarray:
    """Rows of label (colourised) | generated | real for (B, H, W) labels and (B, 3, H, W) images."""
    rows = [
        [colorize(label.cpu().numpy(), colors), image_to_uint8(fake), image_to_uint8(photo)]
        for label, fake, photo in zip(labels, generated, real, strict=True)
    ]
    return tile(rows)


def channel_strip(weights: torch.Tensor, height: int) -> np.ndarray:
    """CAM weights delta (C,) in [0, 1] -> a near-square block of C cells, row-major, ``height`` tall."""
    values = weights.detach().float().cpu().numpy().reshape(-1)
    columns = int(np.ceil(np.sqrt(values.size)))
    grid = np.full(columns * columns, np.nan)
    grid[: values.size] = values
    cells = heatmap(np.nan_to_num(grid.reshape(columns, columns), nan=0.0))
    cells[np.isnan(grid.reshape(columns, columns))] = 255
    cell = max(height // columns, 1)
    return np.kron(cells, np.ones((cell, cell, 1), dtype=np.uint8))


def _heat_columns(maps: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray]:
    """(K, h, w) maps in [0, 1] -> K heat maps resized (nearest) to ``size``."""
    resized = F.interpolate(maps[None].detach().float().cpu(), size=size, mode="nearest")[0]
    return [heatmap(channel.numpy()) for channel in resized]


def cross_attention_columns(logits: torch.Tensor, colors: list[list[int]]) -> list[np.ndarray]:
    """(C, h, w) head-averaged cross-attention logits -> [the most attended class, coloured; its weight]."""
    weights = logits.detach().float().cpu().softmax(dim=0)
    top, classes = weights.max(dim=0)
    return [colorize(classes.numpy(), colors), heatmap(top.numpy())]


def attention_figure(
    labels: torch.Tensor, generated: torch.Tensor, attention: dict[str, torch.Tensor], colors: list[list[int]]
) -> np.ndarray:
    """Rows of label | generated | SAM map | CAM weights | SPAP gates (G, D) | CA2SIS cross-attention
    (the columns of the maps that exist; see the module docstring)."""
    rows = []
    for index, label in enumerate(labels):
        size = tuple(label.shape)
        row = [colorize(label.cpu().numpy(), colors), image_to_uint8(generated[index])]
        if "sam" in attention:
            row.append(heatmap(attention["sam"][index, 0].detach().float().cpu().numpy()))
        if "cam" in attention:
            row.append(channel_strip(attention["cam"][index], label.shape[0]))
        for key in ("spap", "spap_d"):
            if key in attention:
                row.extend(_heat_columns(attention[key][index], size))
        if "ca2sis" in attention:
            row.extend(cross_attention_columns(attention["ca2sis"][index], colors))
        rows.append(row)
    return tile(rows)
