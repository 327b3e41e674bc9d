"""Pictures of the evaluation: sample grids and attention maps (paper Fig. 9).

* :func:`sample_grid`: one row per sample, columns label map (colourised) | generated | real
  (| K generated samples | for multimodal models).
* :func:`attention_figure`: one row per sample, columns label | generated | SAM spatial
  attention map A_s | CAM channel weights delta (one cell per channel, dark = low).

Everything returns uint8 RGB arrays (H, W, 3); writing them is the caller's business.
"""

from __future__ import annotations

import numpy as np
import torch

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
    """Rows of label (colourised) | generated | real for (B, H, W) labels and (B, 3, H, W) images.

    ``generated`` (B, K, 3, H, W), K samples per label map of a multimodal model, gives rows of
    label | sample 1 | ... | sample K | real.
    """
    if generated.dim() == 4:
        generated = generated[:, None]
    rows = [
        [colorize(label.cpu().numpy(), colors), *map(image_to_uint8, fakes), image_to_uint8(photo)]
        for label, fakes, photo in zip(labels, generated, real, strict=True)
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


def attention_figure(
    labels: torch.Tensor, generated: torch.Tensor, attention: dict[str, torch.Tensor], colors: list[list[int]]
) -> np.ndarray:
    """Rows of label | generated | SAM map | CAM weights (the columns of the modules that exist)."""
    rows = []
    for index, label in enumerate(labels):
        row = [colorize(label.cpu().numpy(), colors), image_to_uint8(generated[index])]
        if "sam" in attention:
            row.append(heatmap(attention["sam"][index, 0].detach().float().cpu().numpy()))
        if "cam" in attention:
            row.append(channel_strip(attention["cam"][index], label.shape[0]))
        rows.append(row)
    return tile(rows)
