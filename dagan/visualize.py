"""Pictures of the evaluation: sample grids and attention maps (paper Fig. 9).

* :func:`sample_grid`: one row per sample, columns label map (colourised) | generated | real.
* :func:`attention_figure`: one row per sample, columns label | generated | SAM's spatial
  attention map A_s with its colour scale | CAM's channel weights delta as a bar chart.

Everything returns uint8 RGB arrays (H, W, 3); writing them is the caller's business.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dagan.generate import colorize

# A perceptually ordered dark-blue -> teal -> yellow ramp (anchor colours, linearly interpolated).
HEAT_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
GAP = 2  # pixels between cells
MIN_CELL = 128  # small images are enlarged (nearest neighbour) to at least this height in the figures


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
    """Arrange cells into a white-separated grid (cells of a column share a width, of a row a height)."""
    widths = [max(row[c].shape[1] for row in rows) for c in range(len(rows[0]))]
    heights = [max(cell.shape[0] for cell in row) for row in rows]
    canvas = np.full((sum(heights) + GAP * (len(rows) - 1), sum(widths) + GAP * (len(widths) - 1), 3), 255, np.uint8)
    top = 0
    for row, height in zip(rows, heights, strict=True):
        x = 0
        for cell, width in zip(row, widths, strict=True):
            canvas[top : top + cell.shape[0], x : x + cell.shape[1]] = cell
            x += width + GAP
        top += height + GAP
    return canvas


def sample_grid(
    labels: torch.Tensor, generated: torch.Tensor, real: torch.Tensor, colors: list[list[int]]
) -> np.ndarray:
    """Column titles, then rows of label (colourised) | generated | real for (B, H, W) labels and (B, 3, H, W)
    images, enlarged (nearest) to at least MIN_CELL pixels tall."""
    factor = _enlargement(labels.shape[-2])
    rows = [
        [_upscale(cell, factor) for cell in (colorize(label.cpu().numpy(), colors), image_to_uint8(fake),
                                             image_to_uint8(photo))]
        for label, fake, photo in zip(labels, generated, real, strict=True)
    ]
    return tile([_header(["label", "generated", "real"], [cell.shape[1] for cell in rows[0]]), *rows])


def _enlargement(height: int) -> int:
    """The integer factor that makes an image of ``height`` pixels at least MIN_CELL tall."""
    return max(1, -(-MIN_CELL // height))


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement: every pixel becomes a factor x factor block."""
    return np.kron(image, np.ones((factor, factor, 1), dtype=np.uint8)) if factor > 1 else image


def colour_bar(low: float, high: float, height: int, width: int = 56) -> np.ndarray:
    """A vertical HEAT_ANCHORS ramp from ``low`` (bottom) to ``high`` (top), ticks labelled, ``height`` tall."""
    canvas = Image.new("RGB", (width, height), "white")
    ramp = heatmap(np.linspace(1, 0, height - 12)[:, None].repeat(12, axis=1))
    canvas.paste(Image.fromarray(ramp), (2, 6))
    draw = ImageDraw.Draw(canvas)
    for fraction in (0.0, 0.5, 1.0):
        y = 6 + round((1 - fraction) * (height - 13))
        draw.line([(14, y), (17, y)], fill="black")
        draw.text((19, y), f"{low + fraction * (high - low):.2f}", fill="black", font=_font(10), anchor="lm")
    return np.asarray(canvas)


def channel_chart(weights: torch.Tensor, height: int, width: int = 200) -> np.ndarray:
    """CAM's channel weights delta (C,) in [0, 1] as a bar chart: one bar per channel, y axis 0..1, their range
    written top right."""
    values = weights.detach().float().cpu().numpy().reshape(-1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    left, right, top, bottom = 28, width - 4, 18, height - 16
    for level in (0.0, 0.5, 1.0):
        y = bottom - level * (bottom - top)
        draw.line([(left, y), (right, y)], fill=(210, 210, 210) if level else "black")
        draw.text((left - 3, y), f"{level:g}", fill="black", font=_font(10), anchor="rm")
    step = (right - left) / max(values.size, 1)
    for index, value in enumerate(np.clip(values, 0, 1)):
        x0 = left + index * step
        draw.rectangle([x0 + step * 0.15, bottom - value * (bottom - top), x0 + step * 0.85, bottom],
                       fill=(59, 82, 139))
    draw.text((left, bottom + 2), "0", fill="black", font=_font(10), anchor="lt")
    draw.text((right, bottom + 2), f"channel {values.size - 1}", fill="black", font=_font(10), anchor="rt")
    draw.text((right, 0), f"{values.min():.3f} - {values.max():.3f}", fill="black", font=_font(10), anchor="rt")
    return np.asarray(canvas)


def _header(titles: list[str], widths: list[int]) -> list[np.ndarray]:
    cells = []
    for title, width in zip(titles, widths, strict=True):
        canvas = Image.new("RGB", (width, 18), "white")
        ImageDraw.Draw(canvas).text((width // 2, 9), title, fill="black", font=_font(12), anchor="mm")
        cells.append(np.asarray(canvas))
    return cells


def attention_figure(
    labels: torch.Tensor, generated: torch.Tensor, attention: dict[str, torch.Tensor], colors: list[list[int]]
) -> np.ndarray:
    """Rows of label | generated | SAM map A_s with its colour scale | CAM channel weights delta (bar chart).

    Images are enlarged (nearest) to at least MIN_CELL pixels tall. The SAM maps share one colour
    scale, the range of A_s over the samples shown; CAM's bars share the axis 0..1.
    """
    factor = _enlargement(labels.shape[-2])
    height = labels.shape[-2] * factor
    sam = attention["sam"][:, 0].detach().float().cpu().numpy() if "sam" in attention else None
    low, high = (float(sam.min()), float(sam.max())) if sam is not None else (0.0, 1.0)
    span = max(high - low, 1e-6)
    rows = []
    for index, label in enumerate(labels):
        row = [_upscale(colorize(label.cpu().numpy(), colors), factor), _upscale(image_to_uint8(generated[index]),
                                                                                  factor)]
        if sam is not None:
            row += [_upscale(heatmap((sam[index] - low) / span), factor), colour_bar(low, high, height)]
        if "cam" in attention:
            row.append(channel_chart(attention["cam"][index], height))
        rows.append(row)
    titles = ["label", "generated"] + (["SAM map A_s", "scale"] if sam is not None else []) + (
        ["CAM weights delta per channel"] if "cam" in attention else [])
    return tile([_header(titles, [cell.shape[1] for cell in rows[0]]), *rows])
