"""The studio's web page: a Gradio canvas beside the generated photo (docs/STUDIO.md).

Built from Gradio's own components, no hand-written JavaScript: ``gr.ImageEditor`` is the canvas
(a brush with the palette's colours only, brush size, eraser, undo/redo, clear), and every stroke
the person finishes sends the canvas to the handlers (:mod:`components.studio.handlers`), whose
photo replaces the previous one. A user's mistake (an :class:`~dagan.inference.InputError` or a
:class:`~dagan.data.errors.DataError`) becomes one line in the page's status box and leaves the
rest of the page as it was; the server goes on serving.

Offline: the theme's fonts are files Gradio ships (served by this server, never a font CDN);
telemetry and its version check are off (``analytics_enabled=False``); the launcher turns share
links off (:mod:`components.studio.cli`).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

import gradio as gr

from components.studio.engine import Studio
from components.studio.handlers import Handlers
from dagan.data.errors import DataError
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
MISTAKES = (InputError, DataError)  # a user's mistake: one line in the status box, no traceback


@dataclass(frozen=True)
class Widgets:
    """The page's components, by what they are for."""

    session: gr.State  # a token per page load: names its download file
    base: gr.State  # the Layout the painting started from
    style_photo: gr.State  # the uploaded style photo, (H, W, 3) uint8
    canvas: gr.ImageEditor
    class_choice: gr.Dropdown
    fill: gr.Button
    layout_choice: gr.Dropdown
    upload: gr.UploadButton
    download: gr.DownloadButton
    photo: gr.Image
    status: gr.Markdown
    new_style: gr.Button
    mean_style: gr.Button
    seed: gr.Textbox
    style_upload: gr.UploadButton
    no_style: gr.Button
    style_view: gr.Image
    reference: gr.Dropdown
    restyled: gr.Dropdown


def build_page(studio: Studio, scratch: Path) -> gr.Blocks:
    """The page; ``scratch`` is a private folder for the label-map downloads (one file per browser tab)."""
    handlers = Handlers(studio, scratch)
    with gr.Blocks(title="DAGAN studio", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"## DAGAN studio: `{html.escape(studio.model)}`\nPaint with the classes' colours; the photo "
                    f"follows when you lift the brush. {_source_line(studio)}")
        widgets = _widgets(studio, handlers)
        gr.HTML(_legend(studio), elem_id="legend")
        _wire(page, widgets, handlers)
    return page


def _widgets(studio: Studio, handlers: Handlers) -> Widgets:
    palette = studio.palette
    layout_ids = studio.layouts.ids if studio.layouts is not None else []
    with gr.Row():
        with gr.Column():
            canvas = gr.ImageEditor(label="layout", elem_id="canvas", image_mode="RGBA", sources=[], transforms=[],
                                    layers=False, format="png", brush=handlers.brush(0),
                                    eraser=gr.Eraser(default_size=handlers.brush_size),
                                    canvas_size=(studio.size[1], studio.size[0]), height=VIEW_HEIGHT)
            with gr.Row():
                class_choice = gr.Dropdown([(f"{index}: {name}", index) for index, name in enumerate(palette.names)],
                                           value=0, label="class", elem_id="class", scale=3)
                fill = gr.Button("Fill the canvas", elem_id="fill", scale=1)
            with gr.Row():
                layout_choice = gr.Dropdown(layout_ids, value=layout_ids[0] if layout_ids else None,
                                            label="start from a validation layout", elem_id="layout",
                                            interactive=bool(layout_ids))
                upload = gr.UploadButton("Upload a label map (PNG)", elem_id="upload")
                download = gr.DownloadButton("Download the label map", elem_id="download")
        with gr.Column():
            photo = gr.Image(label="generated", elem_id="photo", interactive=False, format="png", height=VIEW_HEIGHT)
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
    return Widgets(gr.State(lambda: token_hex(8)), gr.State(), gr.State(), canvas, class_choice, fill,
                   layout_choice, upload, download, photo, status, new_style, mean_style, seed, style_upload,
                   no_style, style_view, reference, restyled)


def _wire(page: gr.Blocks, w: Widgets, handlers: Handlers) -> None:
    """Every event of the page and its handler (inputs and outputs in the orders of components.studio.handlers)."""
    styles = [w.seed, w.style_photo, w.reference, w.restyled, w.session]
    restart = [w.canvas, w.base, w.photo, w.status, w.download]
    redraw = [w.photo, w.status, w.download]
    listen = _guarded(w.status)
    listen(page.load, handlers.first_layout, styles, restart)
    listen(w.canvas.input, handlers.stroke, [w.canvas, w.base, *styles], redraw, trigger_mode="always_last")
    listen(w.canvas.clear, handlers.start, [w.base, *styles], restart)
    listen(w.fill.click, handlers.fill, [w.class_choice, *styles], restart)
    listen(w.layout_choice.input, handlers.choose_layout, [w.layout_choice, *styles], restart)
    listen(w.upload.upload, handlers.upload, [w.upload, *styles], restart)
    w.class_choice.change(handlers.choose_class, w.class_choice, w.canvas)
    without_seed = [w.canvas, w.base, w.style_photo, w.reference, w.restyled, w.session]
    listen(w.new_style.click, handlers.new_style, without_seed, [w.seed, *redraw])
    listen(w.mean_style.click, handlers.mean_style, without_seed, [w.seed, *redraw])
    for event in (w.seed.submit, w.reference.input, w.restyled.input):
        listen(event, handlers.render, [w.canvas, w.base, *styles], redraw)
    without_photo = [w.canvas, w.base, w.seed, w.reference, w.restyled, w.session]
    listen(w.style_upload.upload, handlers.take_style, [w.style_upload, *without_photo],
           [w.style_photo, w.style_view, *redraw])
    listen(w.no_style.click, handlers.drop_style, without_photo, [w.style_photo, w.style_view, *redraw])


def _guarded(status: gr.Markdown) -> Callable[..., None]:
    """``listen(event, handler, inputs, outputs)``: register ``handler``; a user's mistake it raises becomes one
    line in ``status`` (every other output unchanged). Every ``outputs`` list holds ``status``: a handler's
    success writes its own line there."""

    def listen(event: Callable[..., Any], handler: Callable[..., tuple], inputs: Any, outputs: list,
               **options: Any) -> None:
        def guarded(*args: Any) -> tuple:
            try:
                return handler(*args)
            except MISTAKES as err:
                return tuple(f"**Not used:** {err}" if output is status else gr.skip() for output in outputs)

        event(guarded, inputs, outputs, **options)

    return listen


def _source_line(studio: Studio) -> str:
    if studio.layouts is None:
        return "No validation layouts: start the studio with `--data data/prepared/<dataset>` to have them."
    return f"Validation layouts: `{html.escape(studio.layouts.source)}`."


def _legend(studio: Studio) -> str:
    items = [f'<span><span class="swatch" style="background:{studio.palette.hex(index)}"></span>{index} '
             f"{html.escape(name)}</span>" for index, name in enumerate(studio.palette.names)]
    return f'<div class="legend">{"".join(items)}</div>'
