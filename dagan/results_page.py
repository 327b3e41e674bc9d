"""The results page of ``generate``: ``index.html`` with label | generated (| real) side by side.

The page the official SPADE/DAGAN ``test.py`` writes, for the same habit: open one file in a
browser and look at every result next to its input. The generated images stay where they are
(``<out>/<name>.png``); the page's own pictures (colourised label maps, copies of the real
photos) live in ``<out>/html/``, so ``<out>/*.png`` is still exactly the generated images.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from dagan.atomic import atomic_write_text

PAGE_FILE = "index.html"
ASSET_DIR = "html"


@dataclass(frozen=True)
class ResultRow:
    name: str  # the label map's file name (the generated image has the same)
    label: str  # page-relative path of the colourised label map
    generated: str  # page-relative path of the generated image
    real: str | None = None  # page-relative path of the real photo, when given


def _cell(path: str | None, alt: str) -> str:
    if path is None:
        return "<td></td>"
    source = html.escape(path, quote=True)
    return f'<td><a href="{source}"><img src="{source}" alt="{html.escape(alt, quote=True)}"></a></td>'


def render_page(rows: list[ResultRow], title: str) -> str:
    """The HTML of the page (images scale up without blurring: label maps stay crisp)."""
    with_real = any(row.real for row in rows)
    header = "".join(f"<th>{name}</th>" for name in ("name", "label", "generated", *(["real"] if with_real else [])))
    body = []
    for row in rows:
        cells = [f"<td>{html.escape(row.name)}</td>", _cell(row.label, f"label {row.name}"),
                 _cell(row.generated, f"generated {row.name}")]
        if with_real:
            cells.append(_cell(row.real, f"real {row.name}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
             "td,th{padding:4px;border-bottom:1px solid #ddd;text-align:center}"
             "img{width:256px;image-rendering:pixelated}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            f"<table>\n<tr>{header}</tr>\n" + "\n".join(body) + "\n</table>\n</body></html>\n")


def write_page(out_dir: str | Path, rows: list[ResultRow], title: str) -> Path:
    """Write ``<out_dir>/index.html`` atomically."""
    path = Path(out_dir) / PAGE_FILE
    return atomic_write_text(path, render_page(rows, title))
