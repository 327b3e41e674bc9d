"""The studio's web page: a Gradio canvas beside the generated photo (docs/STUDIO.md).

Built from Gradio's own components, no hand-written JavaScript: ``gr.ImageEditor`` is the canvas
(a brush with the palette's colours only, brush size, eraser, undo/redo, clear), and every stroke
the person finishes sends the canvas to :class:`~components.studio.engine.Studio`, whose photo
replaces the previous one. Each handler turns a user's mistake (an
:class:`~dagan.inference.InputError` or a :class:`~dagan.data.errors.DataError`) into one line in
the page's status box and leaves the rest of the page as it was; the server goes on serving.

Offline: the theme's fonts are files Gradio ships (served by this server, never a font CDN);
telemetry and its version check are off (``analytics_enabled=False``); the launcher turns share
links off (:mod:`components.studio.cli`).
"""

from __future__ import annotations

import html
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from secrets import randbelow, token_hex
from typing import Any

import gradio as gr
import numpy as np

from components.studio.engine import Result, Studio
from components.studio.layouts import Layout
from dagan.atomic import atomic_write_bytes
from dagan.data.errors import DataError
from dagan.data.png import encode_png
from dagan.inference import InputError

THEME = gr.themes.Default(font=(gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"),
                          font_mono=(gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"))
CSS = """
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 0.9em; }
.legend .swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #888; vertical-align: middle;
                  margin-right: 4px; }
#photo img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""
VIEW_HEIGHT = 420  # pixels of the canvas and the photo on the page (small label maps are shown enlarged)
SEED_RANGE = 2**31  # "new style" draws seeds below this (any seed in [0, 2**63) can be typed in)
MISTAKES = (InputError, DataError)  # a user's mistake: one line in the status box, no traceback


def build_page(studio: Studio, scratch: Path) -> gr.Blocks:
    """The page; ``scratch`` is a private folder for the label-map downloads (one file per browser tab)."""
    palette = studio.palette
    colors: list[str | tuple[str, float]] = [palette.hex(index) for index in range(len(palette))]
    class_names = [(f"{index}: {name}", index) for index, name in enumerate(palette.names)]
    brush_size = max(1, min(studio.size) // 16)
    layout_ids = studio.layouts.ids if studio.layouts is not None else []

    def brush(class_id: int) -> gr.Brush:
        return gr.Brush(colors=colors, color_mode="fixed", default_color=colors[class_id], default_size=brush_size)

    with gr.Blocks(title="DAGAN studio", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        session = gr.State(lambda: token_hex(8))  # a new value for every page load: names its download file
        base = gr.State()  # the Layout the painting started from
        style_photo = gr.State()  # the uploaded style photo, (H, W, 3) uint8
        gr.Markdown(f"## DAGAN studio: `{html.escape(studio.model)}`\nPaint with the classes' colours; the photo "
                    f"follows when you lift the brush. {_source_line(studio)}")
        with gr.Row():
            with gr.Column():
                canvas = gr.ImageEditor(label="layout", elem_id="canvas", image_mode="RGBA", sources=[],
                                        transforms=[], layers=False, format="png", brush=brush(0),
                                        eraser=gr.Eraser(default_size=brush_size),
                                        canvas_size=(studio.size[1], studio.size[0]), height=VIEW_HEIGHT)
                with gr.Row():
                    class_choice = gr.Dropdown(class_names, value=0, label="class", elem_id="class", scale=3)
                    fill = gr.Button("Fill the canvas", elem_id="fill", scale=1)
                with gr.Row():
                    layout_choice = gr.Dropdown(layout_ids, value=layout_ids[0] if layout_ids else None,
                                                label="start from a validation layout", elem_id="layout",
                                                interactive=bool(layout_ids))
                    upload = gr.UploadButton("Upload a label map (PNG)", elem_id="upload")
                    download = gr.DownloadButton("Download the label map", elem_id="download")
            with gr.Column():
                photo = gr.Image(label="generated", elem_id="photo", interactive=False, format="png",
                                 height=VIEW_HEIGHT)
                status = gr.Markdown(elem_id="status")
                with gr.Row(visible=studio.takes_seeds):
                    new_style = gr.Button("New style", elem_id="new-style")
                    mean_style = gr.Button("Mean style", elem_id="mean-style")
                    seed = gr.Textbox("", label="style seed (empty: the mean style)", elem_id="seed")
                with gr.Row(visible=studio.takes_style_photo):
                    style_upload = gr.UploadButton("Style photo", elem_id="style-upload")
                    no_style = gr.Button("No style photo", elem_id="no-style")
                    style_view = gr.Image(label="style photo", interactive=False, height=160)
                with gr.Row(visible=studio.takes_style_reference):
                    reference = gr.Dropdown([("class means of training", "")] + [(name, name) for name in layout_ids],
                                            value="", label="styles from the photo of", elem_id="reference")
                    restyled = gr.Dropdown(list(palette.names), multiselect=True, value=[],
                                           label="for the classes (empty: all it shows)", elem_id="restyled")
        gr.HTML(_legend(studio), elem_id="legend")

        shown = LastLabels()

        def show(result: Result, token: str) -> tuple[Any, str, str]:
            shown.remember(token, result.label)
            target = scratch / f"label-{token}.png"
            atomic_write_bytes(target, encode_png(result.label.astype(np.uint8 if len(palette) <= 256 else np.uint16)))
            height, width = result.label.shape
            line = f"photo {result.number}: {width}x{height} label map, generated in {result.seconds:.2f} s"
            return result.image, line, str(target)

        def render(value: dict | None, layout: Layout | None, seed_value: str | None, photo_value: Any, ref: str,
                   classes: list[str], token: str, *, only_if_changed: bool = False) -> tuple[Any, ...]:
            label = _canvas_label(studio, value)
            if label is None or layout is None or only_if_changed and shown.same(token, label):
                return gr.skip(), gr.skip(), gr.skip()  # an empty editor, or a tool change: nothing new to draw
            edit = studio.style_edit(ref, classes)
            return show(studio.generate(label, layout, _seed(seed_value), photo_value, edit), token)

        def stroke(value: dict | None, layout: Layout | None, seed_value: str | None, photo_value: Any, ref: str,
                   classes: list[str], token: str) -> tuple[Any, ...]:
            return render(value, layout, seed_value, photo_value, ref, classes, token, only_if_changed=True)

        def start(layout: Layout, seed_value: str | None, photo_value: Any, ref: str, classes: list[str],
                  token: str) -> tuple[Any, ...]:
            result = studio.generate(layout.label, layout, _seed(seed_value), photo_value,
                                     studio.style_edit(ref, classes))
            painted = {"background": palette.paint(layout.label), "layers": [], "composite": None}
            return (painted, layout, *show(result, token))

        def first_layout(*styles: Any) -> tuple[Any, ...]:
            return start(studio.validation_layout(layout_ids[0]) if layout_ids else studio.blank(0), *styles)

        def restyle(new_seed: str, value: dict | None, layout: Layout | None, photo_value: Any, ref: str,
                    classes: list[str], token: str) -> tuple[Any, ...]:
            return (new_seed, *render(value, layout, new_seed, photo_value, ref, classes, token))

        def take_style(path: str | None, value: dict | None, layout: Layout | None, seed_value: str | None,
                       ref: str, classes: list[str], token: str) -> tuple[Any, ...]:
            photo_value = None if path is None else studio.read_style_photo(Path(path).read_bytes(), Path(path).name)
            return (photo_value, photo_value, *render(value, layout, seed_value, photo_value, ref, classes, token))

        styles = [seed, style_photo, reference, restyled, session]
        painting = [canvas, base, *styles]
        restart = [canvas, base, photo, status, download]
        redraw = [photo, status, download]
        listen = _guarded(status)
        listen(page.load, first_layout, styles, restart)
        listen(canvas.input, stroke, painting, redraw, trigger_mode="always_last")
        listen(canvas.clear, start, [base, *styles], restart)
        listen(fill.click, lambda class_id, *rest: start(studio.blank(int(class_id)), *rest),
               [class_choice, *styles], restart)
        listen(layout_choice.input, lambda name, *rest: start(studio.validation_layout(name), *rest),
               [layout_choice, *styles], restart)
        listen(upload.upload, lambda path, *rest: start(studio.read_upload(Path(path).read_bytes(), Path(path).name),
                                                        *rest), [upload, *styles], restart)
        class_choice.change(lambda class_id: gr.update(brush=brush(int(class_id))), class_choice, canvas)
        without_seed = [canvas, base, style_photo, reference, restyled, session]
        listen(new_style.click, lambda *rest: restyle(str(randbelow(SEED_RANGE)), *rest), without_seed,
               [seed, *redraw])
        listen(mean_style.click, lambda *rest: restyle("", *rest), without_seed, [seed, *redraw])
        for event in (seed.submit, reference.input, restyled.input):
            listen(event, render, painting, redraw)
        style_inputs = [canvas, base, seed, reference, restyled, session]
        listen(style_upload.upload, take_style, [style_upload, *style_inputs], [style_photo, style_view, *redraw])
        listen(no_style.click, lambda *rest: take_style(None, *rest), style_inputs, [style_photo, style_view, *redraw])
    return page


def _guarded(status: gr.Markdown) -> Callable[..., None]:
    """``listen(event, handler, inputs, outputs)``: register ``handler``; a user's mistake it raises becomes one
    line in ``status`` (every other output unchanged), success clears the line (``outputs`` lists ``status``)."""

    def listen(event: Callable[..., Any], handler: Callable[..., tuple], inputs: Any, outputs: list,
               **options: Any) -> None:
        def guarded(*args: Any) -> tuple:
            try:
                return handler(*args)
            except MISTAKES as err:
                return tuple(f"**Not used:** {err}" if output is status else gr.skip() for output in outputs)

        event(guarded, inputs, outputs, **options)

    return listen


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


def _canvas_label(studio: Studio, value: dict | None) -> np.ndarray | None:
    """The label map the editor's picture shows (its composite, else its background; None when empty)."""
    value = value or {}
    picture = value.get("composite") if value.get("composite") is not None else value.get("background")
    return None if picture is None else studio.read_canvas(picture)


def _seed(text: str | None) -> int | None:
    """The seed box's text as a seed; None (the mean style) for an empty box."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) >= 2**63:
        raise InputError(f"style seed {text!r}: give a whole number from 0 to {2**63 - 1}, or leave the box empty")
    return int(text)


def _source_line(studio: Studio) -> str:
    if studio.layouts is None:
        return "No validation layouts: start the studio with `--data data/prepared/<dataset>` to have them."
    return f"Validation layouts: `{html.escape(studio.layouts.source)}`."


def _legend(studio: Studio) -> str:
    items = [f'<span><span class="swatch" style="background:{studio.palette.hex(index)}"></span>{index} '
             f"{html.escape(name)}</span>" for index, name in enumerate(studio.palette.names)]
    return f'<div class="legend">{"".join(items)}</div>'
