"""Built-in synthetic outdoor scenes: label map, instance map and a textured "photo" per sample.

The offline stand-in for a real dataset. Ten classes (sky, mountain, water, grass, sand, road,
building, tree, car, person); building, tree, car and person are objects with instance ids
(``class_id * 1000 + k``), the others are "stuff" whose instance id is the class id (the
Cityscapes convention). Appearance is stochastic so that painting each class one flat colour
is clearly not the photo: per-image colour jitter, fractal texture noise, clouds, windows,
lane markings, reflections, a lighting gradient and a colour cast. Scenes are drawn in
fractional coordinates, so any size works; sample ``i`` of a split depends only on
``(seed, split, i)``. The scenes are written as raw files in the ``custom`` folder layout
and imported through the same path as real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dagan.data.png import encode_png
from dagan.data.shards import staging_directory

CLASSES: list[tuple[str, tuple[int, int, int]]] = [
    ("sky", (70, 130, 180)), ("mountain", (120, 100, 80)), ("water", (30, 80, 200)), ("grass", (90, 180, 60)),
    ("sand", (220, 200, 140)), ("road", (128, 64, 128)), ("building", (70, 70, 70)), ("tree", (20, 110, 30)),
    ("car", (0, 0, 142)), ("person", (220, 20, 60)),
]
SKY, MOUNTAIN, WATER, GRASS, SAND, ROAD, BUILDING, TREE, CAR, PERSON = range(len(CLASSES))
BASE_COLOR = {  # mean photo colour of each stuff class
    SKY: (120, 170, 230), MOUNTAIN: (110, 100, 95), WATER: (40, 90, 140), GRASS: (70, 130, 50),
    SAND: (200, 180, 130), ROAD: (90, 90, 95), TREE: (35, 85, 35),
}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated Gaussian noise on a grid of ``cell`` pixels."""
    cell = max(cell, 1.0)
    grid = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2))
    ys, xs = np.arange(height) / cell, np.arange(width) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _fractal(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    size = max(height, width)
    noise = sum(0.5**o * _smooth_noise(rng, height, width, size / 4 / 2**o) for o in range(octaves))
    return noise / np.abs(noise).max()


class _Canvas:
    """Label, instance and float RGB photo being painted together."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng, self.height, self.width = rng, height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float64)
        self.yy, self.xx = (self.yy + 0.5) / height, (self.xx + 0.5) / width
        self.label = np.zeros((height, width), np.uint8)
        self.instance = np.zeros((height, width), np.uint16)
        self.photo = np.zeros((height, width, 3))
        self.counts: dict[int, int] = {}

    def paint(self, mask: np.ndarray, class_id: int, color, texture: float = 0.0, instance: bool = False) -> None:
        if instance:
            self.counts[class_id] = self.counts.get(class_id, 0) + 1
            ident = class_id * 1000 + self.counts[class_id]
        else:
            ident = class_id
        self.label[mask] = class_id
        self.instance[mask] = ident
        color = np.asarray(color, np.float64) * self.rng.uniform(0.85, 1.15, 3)
        shade = 1.0 + texture * _fractal(self.rng, self.height, self.width)
        self.photo[mask] = (color[None, None, :] * shade[..., None])[mask]


def _sky_and_ground(c: _Canvas, horizon: float) -> None:
    rng = c.rng
    sky = c.yy < horizon
    c.paint(sky, SKY, BASE_COLOR[SKY], 0.03)
    c.photo[sky] *= (0.75 + 0.35 * c.yy[sky] / horizon)[:, None]  # lighter towards the horizon
    clouds = np.clip(_fractal(rng, c.height, c.width, 3) - rng.uniform(0.0, 0.4), 0, None)
    c.photo[sky] += (255 * clouds[..., None] * np.ones(3))[sky]
    ground_class = GRASS if rng.random() < 0.7 else SAND
    c.paint(~sky, ground_class, BASE_COLOR[ground_class], 0.25)
    if rng.random() < 0.6:  # mountain range on the horizon
        ridge = horizon - rng.uniform(0.08, 0.25) * (0.6 + 0.4 * _smooth_noise(rng, 1, c.width, c.width / 5)[0])
        mountain = (c.yy >= ridge[None, :]) & sky
        c.paint(mountain, MOUNTAIN, BASE_COLOR[MOUNTAIN], 0.3)
        snow = mountain & (c.yy < ridge[None, :] + 0.03)
        c.photo[snow] = c.photo[snow] * 0.4 + 150
    if rng.random() < 0.5:  # a lake or the sea, with a beach
        top, depth = horizon, rng.uniform(0.08, 0.25)
        water = (c.yy >= top) & (c.yy < top + depth)
        c.paint((c.yy >= top + depth) & (c.yy < top + depth + 0.04), SAND, BASE_COLOR[SAND], 0.2)
        c.paint(water, WATER, BASE_COLOR[WATER], 0.0)
        streaks = _smooth_noise(rng, c.height, c.width * 8, c.width / 2)[:, ::8]
        c.photo[water] *= (1.0 + 0.25 * streaks[water])[:, None]


def _road(c: _Canvas, horizon: float) -> tuple[float, float] | None:
    if c.rng.random() > 0.7:
        return None
    center, bottom_half = c.rng.uniform(0.3, 0.7), c.rng.uniform(0.2, 0.45)
    t = np.clip((c.yy - horizon) / (1 - horizon), 0, 1)
    half_width = 0.01 + t * bottom_half
    mid = 0.5 + (center - 0.5) * t
    road = (c.yy > horizon) & (np.abs(c.xx - mid) < half_width) & (c.label != WATER)
    c.paint(road, ROAD, BASE_COLOR[ROAD], 0.12)
    dashes = road & (np.abs(c.xx - mid) < 0.015 + 0.01 * t) & (np.sin(40 * t**0.5) > 0.2)
    c.photo[dashes] = 230
    return center, bottom_half


def _object_masks(c: _Canvas, kind: int, x: float, base: float, scale: float) -> list[np.ndarray]:
    dx, dy = c.xx - x, c.yy - base
    if kind == BUILDING:
        width, height = scale * c.rng.uniform(0.6, 1.6), scale * c.rng.uniform(1.0, 3.0)
        return [(np.abs(dx) < width / 2) & (dy < 0) & (dy > -height)]
    if kind == TREE:
        radius = scale * c.rng.uniform(0.35, 0.55)
        trunk = (np.abs(dx) < scale * 0.06) & (dy < 0) & (dy > -scale * 0.6)
        canopy = dx**2 + (dy + scale * 0.6 + radius * 0.8) ** 2 < radius**2
        return [trunk, canopy]
    if kind == CAR:
        width = scale * c.rng.uniform(0.7, 1.0)
        body = (np.abs(dx) < width / 2) & (dy < 0) & (dy > -scale * 0.3)
        cabin = (np.abs(dx) < width / 3) & (dy <= -scale * 0.3) & (dy > -scale * 0.5)
        return [body, cabin]
    height = scale * 0.9  # person: body ellipse and head
    body = (dx / (scale * 0.12)) ** 2 + ((dy + height * 0.4) / (height * 0.4)) ** 2 < 1
    head = dx**2 + (dy + height * 0.9) ** 2 < (scale * 0.1) ** 2
    return [body, head]


def _object_color(c: _Canvas, kind: int) -> tuple[float, float, float]:
    rng = c.rng
    if kind == CAR:
        return tuple(rng.choice([[200, 30, 30], [230, 230, 230], [30, 30, 40], [40, 70, 160], [180, 180, 60]]))
    if kind == PERSON:
        return tuple(rng.uniform(30, 220, 3))
    if kind == BUILDING:
        return tuple(rng.choice([[150, 150, 150], [160, 90, 70], [200, 185, 150], [110, 110, 125]]))
    return BASE_COLOR[TREE]


def _objects(c: _Canvas, horizon: float, road: tuple[float, float] | None) -> None:
    rng = c.rng
    placed = []  # (base y, class, x)
    for _ in range(rng.integers(0, 4)):
        placed.append((horizon + rng.uniform(0.0, 0.02), BUILDING, rng.uniform(0.05, 0.95)))
    for _ in range(rng.integers(1, 5)):
        placed.append((rng.uniform(horizon + 0.05, 1.0), TREE, rng.uniform(0.0, 1.0)))
    for _ in range(rng.integers(0, 4)):
        base = rng.uniform(horizon + 0.1, 1.0)
        if road is not None:
            t = (base - horizon) / (1 - horizon)
            x = 0.5 + (road[0] - 0.5) * t + rng.uniform(-0.6, 0.6) * road[1] * t
        else:
            x = rng.uniform(0.1, 0.9)
        placed.append((base, CAR, x))
    for _ in range(rng.integers(0, 3)):
        placed.append((rng.uniform(horizon + 0.08, 1.0), PERSON, rng.uniform(0.05, 0.95)))
    for base, kind, x in sorted(placed):  # far (high on screen) first, near objects occlude
        scale = 0.06 + 0.35 * (base - horizon) / (1 - horizon) if kind != BUILDING else rng.uniform(0.1, 0.2)
        masks = _object_masks(c, kind, x, base, scale)
        mask = np.logical_or.reduce(masks)
        if not mask.any():
            continue
        c.paint(mask, kind, _object_color(c, kind), 0.15, instance=True)
        if kind == BUILDING:  # a grid of windows
            windows = mask & (np.sin(c.xx * np.pi / 0.02) > 0.3) & (np.sin(c.yy * np.pi / 0.025) > 0.3)
            c.photo[windows] = c.photo[windows] * 0.35 + rng.uniform(0, 120)
        elif kind in (TREE, CAR):  # trunk brown, car windows dark
            c.photo[masks[0 if kind == TREE else 1]] *= np.array([1.6, 0.8, 0.6]) if kind == TREE else 0.4


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: (photo uint8 (H, W, 3), label uint8 (H, W), instance uint16 (H, W))."""
    c = _Canvas(rng, height, width)
    horizon = rng.uniform(0.3, 0.55)
    _sky_and_ground(c, horizon)
    _objects(c, horizon, _road(c, horizon))
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.1, 0.35) * ((c.xx - 0.5) * np.cos(angle) + (c.yy - 0.5) * np.sin(angle))
    cast = rng.uniform(0.9, 1.1, 3)
    photo = c.photo * light[..., None] * cast + rng.normal(0, 4, c.photo.shape)
    return np.clip(photo, 0, 255).astype(np.uint8), c.label, c.instance


def write_synthetic(out_dir: str | Path, seed: int, num_train: int, num_val: int, size: int) -> dict[str, int]:
    """Write scenes as ``<split>/{images,labels,instances}/NNNNN.png`` + ``classes.json`` atomically."""
    if size < 8 or num_train < 1 or num_val < 0:
        raise ValueError(f"synthetic: size {size} (needs >= 8), num_train {num_train} (>= 1), num_val {num_val} "
                         "(>= 0); fix the synthetic section of params.yaml")
    counts = {"train": num_train, "val": num_val}
    with staging_directory(Path(out_dir), "classes.json") as staging:
        for split, count in counts.items():
            for sub in ("images", "labels", "instances") if count else ():
                (staging / split / sub).mkdir(parents=True)
            for index in range(count):
                rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
                photo, label, instance = render_scene(rng, size, size)
                name = f"{index:05d}.png"
                for sub, array in (("images", photo), ("labels", label), ("instances", instance)):
                    (staging / split / sub / name).write_bytes(encode_png(array))
        classes = {
            "class_names": [n for n, _ in CLASSES],
            "class_colors": [list(col) for _, col in CLASSES],
            "synthetic": {"seed": seed, "num_train": num_train, "num_val": num_val, "size": size},
        }
        (staging / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    return {k: v for k, v in counts.items() if v}
