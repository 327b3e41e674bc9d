"""Pictures of the evaluation: sample grids and attention maps (paper Fig. 9).

* :func:`sample_grid`: one row per sample, columns layout (the colourised label map) |
  generated | real (| K generated samples | for multimodal models), under a header that names
  them.
* :func:`attention_figure`: one row per sample, columns layout | generated | then the maps the
  model has: SAM's spatial attention map A_s with its colour scale (shared by the samples) |
  CAM's channel weights delta as a bar chart | SPAP gates of the generator, one per cascade
  step (how much the step takes from its new pyramid level; channel means) | SPAP gates of the
  discriminator's finest scale (on the generated image) | CA2SIS cross-attention of the finest
  layer: the class whose style each position takes most (in the class colours) and that weight
  (heat map).
* :func:`bar_chart`: horizontal bars per class for a few series (per-class IoU of generated,
  real and baseline images).

Cells are enlarged to at least ``MIN_TILE`` pixels (nearest neighbour: label maps stay crisp).
Everything returns uint8 RGB arrays (H, W, 3); writing them is the caller's business.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from dagan.data.classes import colorize

# A perceptually ordered dark-blue -> teal -> yellow ramp (anchor colours, linearly interpolated).
HEAT_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
GAP = 2  # pixels between cells
MIN_TILE = 128  # cells are enlarged to at least this many pixels high
HEADER = 22  # pixels of the column titles
SERIES_COLORS = [(31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def heatmap(values: np.ndarray) -> np.ndarray:
    """2-D array in [0, 1] -> (H, W, 3) uint8 on the HEAT_ANCHORS ramp."""
    position = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(max=len(HEAT_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    return (HEAT_ANCHORS[low] * (1 - fraction) + HEAT_ANCHORS[low + 1] * fraction).round().astype(np.uint8)


def _font(size: int = 14) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def enlarge(cell: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor."""
    return cell if factor == 1 else np.kron(cell, np.ones((factor, factor, 1), dtype=cell.dtype))


def header(widths: list[int], titles: list[str]) -> np.ndarray:
    """A white band with each title centred over its column (columns separated by GAP)."""
    image = Image.new("RGB", (sum(widths) + GAP * (len(widths) - 1), HEADER), (255, 255, 255))
    draw, font, x = ImageDraw.Draw(image), _font(), 0
    for title, width in zip(titles, widths, strict=True):
        draw.text((x + width / 2, HEADER / 2), title, fill=(0, 0, 0), font=font, anchor="mm")
        x += width + GAP
    return np.asarray(image)


def tile(rows: list[list[np.ndarray]], titles: list[str] | None = None) -> np.ndarray:
    """Arrange equally tall cells into a white-separated grid (cells of a column share a width), enlarged
    to at least MIN_TILE pixels, under a header of column ``titles`` when given."""
    height = max(cell.shape[0] for row in rows for cell in row)
    factor = max(1, -(-MIN_TILE // height))
    rows = [[enlarge(cell, factor) for cell in row] for row in rows]
    height *= factor
    widths = [max(row[c].shape[1] for row in rows) for c in range(len(rows[0]))]
    canvas = np.full((len(rows) * (height + GAP) - GAP, sum(widths) + GAP * (len(widths) - 1), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = 0
        for cell, width in zip(row, widths, strict=True):
            top = r * (height + GAP)
            canvas[top : top + cell.shape[0], x : x + cell.shape[1]] = cell
            x += width + GAP
    if titles is None:
        return canvas
    return np.concatenate([header(widths, titles), canvas])


def sample_grid(
    labels: torch.Tensor, generated: torch.Tensor, real: torch.Tensor, colors: list[list[int]]
) -> np.ndarray:
    """Rows of layout (colourised) | generated | real for (B, H, W) labels and (B, 3, H, W) images, titled.

    ``generated`` (B, K, 3, H, W), K samples per label map of a multimodal model, gives rows of
    layout | sample 1 | ... | sample K | real.
    """
    if generated.dim() == 4:
        generated = generated[:, None]
    rows = [
        [colorize(label.cpu().numpy(), colors), *map(image_to_uint8, fakes), image_to_uint8(photo)]
        for label, fakes, photo in zip(labels, generated, real, strict=True)
    ]
    samples = generated.shape[1]
    titles = ["generated"] if samples == 1 else [f"sample {k + 1}" for k in range(samples)]
    return tile(rows, ["layout", *titles, "real"])


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
    """Rows of layout | generated | SAM map with its colour scale | CAM weights (bar chart) | SPAP gates
    (G, D) | CA2SIS cross-attention (the columns of the maps that exist; see the module docstring).

    Images are enlarged (nearest) to at least MIN_TILE pixels tall. The SAM maps share one colour
    scale, the range of A_s over the samples shown; CAM's bars share the axis 0..1.
    """
    factor = max(1, -(-MIN_TILE // labels.shape[-2]))
    height = labels.shape[-2] * factor
    sam = attention["sam"][:, 0].detach().float().cpu().numpy() if "sam" in attention else None
    low, high = (float(sam.min()), float(sam.max())) if sam is not None else (0.0, 1.0)
    span = max(high - low, 1e-6)
    rows = []
    for index, label in enumerate(labels):
        size = tuple(label.shape)
        row = [colorize(label.cpu().numpy(), colors), image_to_uint8(generated[index])]
        if sam is not None:
            row.append(heatmap((sam[index] - low) / span))
        for key in ("spap", "spap_d"):
            if key in attention:
                row.extend(_heat_columns(attention[key][index], size))
        if "ca2sis" in attention:
            row.extend(cross_attention_columns(attention["ca2sis"][index], colors))
        row = [enlarge(cell, factor) for cell in row]
        if sam is not None:
            row.insert(3, colour_bar(low, high, height))
        if "cam" in attention:
            row.insert(4 if sam is not None else 2, channel_chart(attention["cam"][index], height))
        rows.append(row)
    titles = ["layout", "generated", *(["SAM map A_s", "scale"] if sam is not None else []),
              *(["CAM weights delta per channel"] if "cam" in attention else []),
              *(f"SPAP G step {k + 1}" for k in range(attention["spap"].shape[1] if "spap" in attention else 0)),
              *(f"SPAP D step {k + 1}" for k in range(attention["spap_d"].shape[1] if "spap_d" in attention else 0)),
              *(["CA2SIS class", "CA2SIS weight"] if "ca2sis" in attention else [])]
    return tile(rows, titles)


def bar_chart(categories: list[str], series: dict[str, list[float | None]], title: str) -> np.ndarray:
    """Horizontal bars in [0, 1]: one group per category, one bar per series (None: no bar, marked n/a)."""
    font, bar, width = _font(12), 9, 300
    label_width = max(60, *(int(font.getlength(name)) + 8 for name in categories))
    group = bar * len(series) + 6
    start = HEADER + 14  # the title, then the tick values
    image = Image.new("RGB", (label_width + width + 60, start + group * len(categories) + HEADER), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, HEADER / 2), title, fill=(0, 0, 0), font=_font(), anchor="lm")
    bottom = start + group * len(categories)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):  # light grid lines with their values at the top
        x = label_width + round(tick * width)
        draw.line([x, start, x, bottom - 4], fill=(225, 225, 225))
        draw.text((x, start - 2), f"{tick:g}", fill=(110, 110, 110), font=_font(9), anchor="mb")
    for index, name in enumerate(categories):
        top = start + index * group
        draw.text((label_width - 4, top + group / 2), name, fill=(0, 0, 0), font=font, anchor="rm")
        for offset, (values, color) in enumerate(zip(series.values(), SERIES_COLORS, strict=False)):
            y, value = top + offset * bar, values[index]
            if value is None:
                draw.text((label_width + 2, y + bar / 2), "n/a", fill=(120, 120, 120), font=_font(9), anchor="lm")
                continue
            draw.rectangle([label_width, y, label_width + max(1, round(value * width)), y + bar - 2], fill=color)
    legend_y, x = bottom + 4, label_width
    for name, color in zip(series, SERIES_COLORS, strict=False):
        draw.rectangle([x, legend_y + 3, x + 10, legend_y + 13], fill=color)
        draw.text((x + 14, legend_y + 8), name, fill=(0, 0, 0), font=font, anchor="lm")
        x += 24 + int(font.getlength(name))
    return np.asarray(image)
