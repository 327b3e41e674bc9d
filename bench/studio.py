"""Benchmark: paint-to-photo latency of the studio page, in a real browser (docs/STUDIO.md).

    python -m bench.studio                                      # synthetic fp32 + Cityscapes B6 bf16-cl
    python -m bench.studio --out bench/results/studio.json     # also write the results
    python -m bench.studio --report bench/results/studio.json  # the table of a results file (docs/STUDIO.md)

For each model the studio serves a checkpoint of rule-initialised weights (speed does not depend
on training) as ``python -m components.studio`` in its own process; headless chromium
(bench/studio_page.py) draws ``--strokes`` brush strokes after ``--warmup`` untimed ones, and
each latency runs from the mouse button going up to the new photo shown in the page: the
canvas's upload, reading it, the generator, the photo's encoding and download. The generator's
own time is the one the page's status line reports. Models:

* ``synthetic``: the default ``make run`` model, B6 with ngf 16 at 64x64 (10 classes);
* ``cityscapes``: the paper's B6 with ngf 64 at 512x256 (35 classes).

Modes as in bench.inference: ``fp32`` (exact, the studio's default), ``bf16-cl`` (``--precision
bf16 --channels-last``). The load average before and after each configuration is recorded: other
work on the machine slows every number down. Writes JSON only with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import command_line, load_average, machine, print_table, stats, write_results
from bench.studio_page import StudioPage, browser, studio_server

MODELS = {  # name: (preset, ngf, height, width)
    "synthetic": ("synthetic", 16, 64, 64),
    "cityscapes": ("cityscapes", 64, 256, 512),
}
MODES = {"fp32": [], "bf16-cl": ["--precision", "bf16", "--channels-last"], "bf16": ["--precision", "bf16"],
         "fp32-cl": ["--channels-last"]}
DEFAULT_RUNS = ["synthetic:fp32", "synthetic:bf16-cl", "cityscapes:bf16-cl", "cityscapes:fp32"]
GENERATED = re.compile(r"generated in ([0-9.]+) s")


def write_model(name: str, folder: Path) -> tuple[Path, list[str]]:
    """A B6 checkpoint of rule-initialised weights with the dataset's label layout, and its class names."""
    from dagan.config import config_from_dict
    from dagan.data.classes import class_table
    from dagan.data.synthetic import CLASSES
    from dagan.generator import build_generator
    from dagan.inference import LabelLayout, export_generator
    from dagan.presets import get_preset

    preset_name, ngf, height, width = MODELS[name]
    preset = get_preset(preset_name)
    config = config_from_dict({"dataset": {"name": preset_name, "crop_size": width, "aspect_ratio": width / height},
                               "model": {"variant": "B6", "ngf": ngf}}, "bench").resolved()
    if preset_name == "synthetic":
        names, colors = [n for n, _ in CLASSES], [list(c) for _, c in CLASSES]
    else:
        names, colors = class_table(preset_name)
    layout = LabelLayout(preset.num_classes, preset.contain_dontcare_label, preset.has_instance, names, colors)
    generator = build_generator(config, layout.semantic_nc, layout.num_label_channels).eval()
    return export_generator(folder / f"{name}.pt", generator, config, layout), names


def measure(name: str, mode: str, strokes: int, warmup: int, folder: Path, screenshot: str | None = None
            ) -> dict[str, Any]:
    """Latencies of ``warmup`` + ``strokes`` strokes on a fresh studio serving model ``name`` in ``mode``
    (and a picture of the page after them in ``screenshot``)."""
    _, _, height, width = MODELS[name]
    checkpoint, names = write_model(name, folder)
    load_before = load_average()
    latencies, generator_seconds = [], []
    args = ["--model", str(checkpoint), "--port", "0", *MODES[mode]]
    with studio_server(args, folder / f"{name}-{mode}.log") as url, browser(folder / f"profile-{name}-{mode}") as (
            page, _):
        studio = StudioPage(page, url)
        studio.choose_class(f"1: {names[1]}")  # the canvas starts as class 0: every stroke changes the label map
        studio.select_brush()
        for index in range(warmup + strokes):
            row = height * (index + 1) // (warmup + strokes + 1)
            number = studio.photo_number()
            up = studio.stroke([(width * 0.1, row), (width * 0.9, row)], (height, width), select_brush=False)
            shown = studio.wait_for_photo(number)
            if index >= warmup:
                latencies.append(shown - up)
                found = GENERATED.search(studio.status())
                generator_seconds.append(float(found.group(1)) if found else float("nan"))
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
    median = statistics.median(latencies)
    return {"model": name, "mode": mode, "height": height, "width": width, "strokes": strokes, "warmup": warmup,
            "paint_to_photo_s": stats(latencies), "generator_s": stats(generator_seconds),
            "overhead_s": median - statistics.median(generator_seconds),
            "load_before": load_before, "load_after": load_average()}


def print_rows(rows: list[dict[str, Any]]) -> None:
    table = [{**row, "size": f"{row['width']}x{row['height']}", "latency": row["paint_to_photo_s"]["median"],
              "slowest": row["paint_to_photo_s"]["max"], "generator": row["generator_s"]["median"],
              "load": f"{row['load_before']}-{row['load_after']}"} for row in rows]
    print_table([("model", "model"), ("size", "size"), ("mode", "mode"), ("latency", "paint-to-photo s (median)"),
                 ("slowest", "slowest s"), ("generator", "generator s (median)"), ("overhead_s", "page + transfer s"),
                 ("load", "load 1 min before-after")], table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.studio", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, metavar="MODEL:MODE",
                        help=f"models {', '.join(MODELS)}; modes {', '.join(MODES)} "
                             f"(default: {' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--strokes", type=int, default=7, help="timed strokes per run; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed strokes first")
    parser.add_argument("--out", help="write the results as JSON here (e.g. bench/results/studio.json)")
    parser.add_argument("--screenshot", metavar="PNG", help="a picture of the page after the first run's strokes "
                                                             "(docs/images/studio.png)")
    parser.add_argument("--report", metavar="JSON", help="print the table of a results file, measure nothing")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads(Path(args.report).read_text())
        print(f"machine: {results['machine']}")
        print_rows(results["rows"])
        return 0
    for run in args.runs:
        model, _, mode = run.partition(":")
        if model not in MODELS or mode not in MODES:
            parser.error(f"--runs {run}: MODEL:MODE with a model of {', '.join(MODELS)} and a mode of "
                         f"{', '.join(MODES)}")
    print(f"machine: {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as scratch:
        for index, run in enumerate(args.runs):
            model, _, mode = run.partition(":")
            shot = args.screenshot if index == 0 else None
            row = measure(model, mode, args.strokes, args.warmup, Path(scratch), shot)
            print(f"  {model} {mode}: {row['paint_to_photo_s']['median']:.3f} s paint-to-photo", flush=True)
            rows.append(row)
    print_rows(rows)
    write_results(args.out, {"benchmark": "studio", "command": command_line("bench.studio", argv), "machine": machine(),
                             "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
