"""``python -m components.studio``: serve the painting page for a model (docs/STUDIO.md).

    python -m components.studio --model models:/dagan-synthetic@champion --data data/prepared/synthetic

The model comes through ``components.generate``'s loader: a registry URI, a run URI or a
checkpoint path (weights-only loads). The page binds 127.0.0.1 unless ``--host`` says otherwise,
and a port already in use is one line naming it and the way out (exit 2), checked before the
model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.cli import run_main
from components.generate import load_model
from components.studio.engine import Studio
from components.studio.layouts import ValidationLayouts
from dagan.console import add_log_level_arguments
from dagan.disk import DISK_FULL
from dagan.distributed import resolve_device
from dagan.inference import PRECISIONS, SERVE_MAX_IMAGE_PIXELS

LOCAL_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "20mb"  # bytes per upload (Gradio refuses larger files); pixels are checked from the PNG header
DESCRIPTION = ("Serve a local web page to paint a label map with the model's classes and see the generated photo "
               "beside it (docs/STUDIO.md).")
log = logging.getLogger("components.studio")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m components.studio", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, "
                                                       "runs:/RUN_ID/dagan-generator or a checkpoint path")
    parser.add_argument("--data", metavar="DIR", help="a prepared dataset with the model's classes (e.g. "
                                                      "data/prepared/synthetic): its validation layouts to start from, "
                                                      "and the label layout of a training checkpoint")
    parser.add_argument("--split", default="val", help="the split of --data whose layouts the page offers")
    parser.add_argument("--host", default=LOCAL_HOST, help="address to bind (default 127.0.0.1: this machine only; "
                                                           "the page has no login)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free port)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU when PyTorch "
                                                         "sees one)")
    parser.add_argument("--precision", choices=PRECISIONS, default="off",
                        help="off: float32, exact; bf16: bfloat16 autocast (faster on CPUs with AMX and on GPUs)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last tensors (with --precision bf16 "
                                                                     "the fastest setting on CPUs)")
    parser.add_argument("--max-pixels", type=int, default=SERVE_MAX_IMAGE_PIXELS,
                        help="largest uploaded label map, in pixels (default: the served model's 512x512)")
    add_log_level_arguments(parser)
    return parser.parse_args(argv)


def free_port(host: str, port: int) -> int:
    """``port`` if nothing listens on it at ``host`` (0: a free one), else a ValueError saying what to do."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"--port {port}: {host}:{port} is already in use ({err.strerror}); stop what serves "
                             "there, or pass another --port (0 picks a free one)") from None
        return probe.getsockname()[1]


def load_studio(args: argparse.Namespace) -> Studio:
    synthesizer = load_model(args.model, args.data).to(resolve_device(args.device, key="--device"))
    synthesizer.set_precision(args.precision, args.channels_last)
    studio = Studio(synthesizer, args.model, max_pixels=args.max_pixels)
    if args.data is not None:
        studio.layouts = ValidationLayouts(args.data, args.split, synthesizer.layout, studio.size)
    start = time.perf_counter()  # the first generation pays for allocations: not the person's first stroke
    synthesizer(np.zeros(studio.size, dtype=np.int64), edges_from_labels=True)
    log.info("%s: %d classes, %dx%d, %s%s on %s; first generation %.2f s", args.model, len(studio.palette),
             studio.size[1], studio.size[0], "bf16" if args.precision == "bf16" else "float32",
             " + channels_last" if args.channels_last else "", synthesizer.device, time.perf_counter() - start)
    return studio


def serve(studio: Studio, host: str, port: int) -> None:
    """Launch the page and block until Ctrl-C or SIGTERM."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check (also set per page)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up self-checks, one line per request
    from components.studio.page import CSS, THEME, build_page  # gradio: imported only to serve

    scratch = Path(tempfile.mkdtemp(prefix="dagan-studio-"))
    try:
        page = build_page(studio, scratch)
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
                    prevent_thread_lock=True, max_file_size=MAX_UPLOAD, ssr_mode=False, pwa=False, mcp_server=False,
                    enable_monitoring=False, run_history=False, footer_links=["gradio"], theme=THEME, css=CSS)
        shown = "127.0.0.1" if host == LOCAL_HOST else host
        print(f"studio: http://{shown}:{port}/ serves {studio.model} (Ctrl-C stops)", flush=True)
        if host != LOCAL_HOST:
            log.warning("--host %s: the page is reachable from other machines and has no login", host)
        page.block_thread()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(args, lambda: run(args))


def run(args: argparse.Namespace) -> int:
    port = free_port(args.host, args.port)
    studio = load_studio(args)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the page as Ctrl-C does, cleaning up
    try:
        serve(studio, args.host, port)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise
        raise ValueError(f"--port {port}: the page could not start ({err}); pass another --port") from None
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
