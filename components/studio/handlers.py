"""What each event of the studio page does (:mod:`components.studio.page` lays the page out and wires them).

Handlers take the page's values in the order the page lists them and return one value per
output. Two output sets recur: a new canvas (``canvas, base layout, photo, status, download``)
for everything that starts a painting (the first layout, fill, a validation layout, an upload,
clear) and a new photo (``photo, status, download``) for a stroke or a style change. The style
values follow in one order everywhere: the seed box's text, the style photo, the CA2SIS
reference layout and its classes, and the page's session token.

The image editor reports tool changes (picking the brush, a new brush colour) as edits too: a
stroke whose canvas reads as the label map the page already shows is skipped without generating.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from secrets import randbelow
from typing import Any

import gradio as gr
import numpy as np

from components.studio.engine import Result, Studio
from components.studio.layouts import Layout
from dagan.atomic import atomic_write_bytes
from dagan.data.png import encode_png
from dagan.inference import InputError

SEED_RANGE = 2**31  # "new style" draws seeds below this (any seed in [0, 2**63) can be typed in)
MAX_SEED = 2**63 - 1


class Handlers:
    """The page's event handlers over one :class:`Studio`; label-map downloads are written to ``scratch``."""

    def __init__(self, studio: Studio, scratch: Path):
        self.studio, self.scratch = studio, scratch
        self.shown = LastLabels()
        palette = studio.palette
        self.colors: list[str | tuple[str, float]] = [palette.hex(index) for index in range(len(palette))]
        self.brush_size = max(1, min(studio.size) // 16)

    def brush(self, class_id: int) -> gr.Brush:
        """The brush of one class: the palette's colours only, that class's picked."""
        return gr.Brush(colors=self.colors, color_mode="fixed", default_color=self.colors[int(class_id)],
                        default_size=self.brush_size)

    def choose_class(self, class_id: int) -> Any:
        return gr.update(brush=self.brush(class_id))

    # A new canvas: (canvas, base, photo, status, download)
    def start(self, layout: Layout, seed: str | None, photo: Any, reference: str, classes: list[str],
              token: str) -> tuple[Any, ...]:
        result = self.studio.generate(layout.label, layout, parse_seed(seed), photo,
                                      self.studio.style_edit(reference, classes))
        painted = {"background": self.studio.palette.paint(layout.label), "layers": [], "composite": None}
        return (painted, layout, *self._show(result, token))

    def first_layout(self, *styles: Any) -> tuple[Any, ...]:
        layouts = self.studio.layouts
        first = self.studio.validation_layout(layouts.ids[0]) if layouts and layouts.ids else self.studio.blank(0)
        return self.start(first, *styles)

    def fill(self, class_id: int, *styles: Any) -> tuple[Any, ...]:
        return self.start(self.studio.blank(int(class_id)), *styles)

    def choose_layout(self, name: str, *styles: Any) -> tuple[Any, ...]:
        return self.start(self.studio.validation_layout(name), *styles)

    def upload(self, path: str, *styles: Any) -> tuple[Any, ...]:
        return self.start(self.studio.read_upload(Path(path).read_bytes(), Path(path).name), *styles)

    # A new photo: (photo, status, download)
    def render(self, value: dict | None, layout: Layout | None, seed: str | None, photo: Any, reference: str,
               classes: list[str], token: str, *, only_if_changed: bool = False) -> tuple[Any, ...]:
        label = self._canvas_label(value)
        if label is None or layout is None or only_if_changed and self.shown.same(token, label):
            return gr.skip(), gr.skip(), gr.skip()  # an empty editor, or a tool change: nothing new to draw
        edit = self.studio.style_edit(reference, classes)
        return self._show(self.studio.generate(label, layout, parse_seed(seed), photo, edit), token)

    def stroke(self, value: dict | None, layout: Layout | None, seed: str | None, photo: Any, reference: str,
               classes: list[str], token: str) -> tuple[Any, ...]:
        return self.render(value, layout, seed, photo, reference, classes, token, only_if_changed=True)

    # (seed, photo, status, download)
    def new_style(self, value: dict | None, layout: Layout | None, photo: Any, reference: str, classes: list[str],
                  token: str) -> tuple[Any, ...]:
        seed = str(randbelow(SEED_RANGE))
        return (seed, *self.render(value, layout, seed, photo, reference, classes, token))

    def mean_style(self, value: dict | None, layout: Layout | None, photo: Any, reference: str, classes: list[str],
                   token: str) -> tuple[Any, ...]:
        return ("", *self.render(value, layout, "", photo, reference, classes, token))

    # (style photo, its view, photo, status, download)
    def take_style(self, path: str | None, value: dict | None, layout: Layout | None, seed: str | None,
                   reference: str, classes: list[str], token: str) -> tuple[Any, ...]:
        photo = None if path is None else self.studio.read_style_photo(Path(path).read_bytes(), Path(path).name)
        return (photo, photo, *self.render(value, layout, seed, photo, reference, classes, token))

    def drop_style(self, *values: Any) -> tuple[Any, ...]:
        return self.take_style(None, *values)

    def _show(self, result: Result, token: str) -> tuple[Any, str, str]:
        """The photo, the status line and the label map's download file of ``result``."""
        self.shown.remember(token, result.label)
        target = self.scratch / f"label-{token}.png"
        ids = result.label.astype(np.uint8 if len(self.studio.palette) <= 256 else np.uint16)
        atomic_write_bytes(target, encode_png(ids))
        height, width = result.label.shape
        line = f"photo {result.number}: {width}x{height} label map, generated in {result.seconds:.2f} s"
        return result.image, line, str(target)

    def _canvas_label(self, value: dict | None) -> np.ndarray | None:
        """The label map the editor's picture shows (its composite, else its background; None when empty)."""
        value = value or {}
        picture = value.get("composite") if value.get("composite") is not None else value.get("background")
        return None if picture is None else self.studio.read_canvas(picture)


class LastLabels:
    """The label map each page (session token) shows, for the newest ``size`` pages."""

    def __init__(self, size: int = 64):
        self.size = size
        self.labels: OrderedDict[str, np.ndarray] = OrderedDict()

    def remember(self, token: str, label: np.ndarray) -> None:
        self.labels[token] = label
        self.labels.move_to_end(token)
        while len(self.labels) > self.size:
            self.labels.popitem(last=False)

    def same(self, token: str, label: np.ndarray) -> bool:
        known = self.labels.get(token)
        return known is not None and known.shape == label.shape and bool((known == label).all())


def parse_seed(text: str | None) -> int | None:
    """The seed box's text as a seed; None (the mean style) for an empty box."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > MAX_SEED:
        raise InputError(f"style seed {text!r}: give a whole number from 0 to {MAX_SEED}, or leave the box empty")
    return int(text)
