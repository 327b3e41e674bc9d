"""Benchmark: the registered model's throughput - label PNGs in, RGB PNGs out, through MLflow's pyfunc.

    python -m bench.pyfunc                                  # cityscapes B6 at 512x256, DAGAN_DEVICE=auto
    DAGAN_DEVICE=cpu python -m bench.pyfunc --size 256 128 --rows 2

The model is saved exactly as ``components.register`` logs it (models from code:
components/pyfunc_model.py, the exported generator as the artifact ``generator``, ``dagan/`` as
code; random weights of the preset's ngf-64 model) into a temporary folder, loaded back with
``mlflow.pyfunc.load_model`` and timed on DataFrames of ``--rows`` label PNGs (with instance
PNGs where the preset has instances): images per second (median over repeats), the first call's
seconds and peak GPU memory. Writes the JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from bench import common
from bench.common import machine, stats, timed
from components.register import pyfunc_model_arguments
from components.settings import RegisterConfig
from dagan.config import config_from_dict
from dagan.data.png import encode_png
from dagan.generator import build_generator
from dagan.inference import export_generator
from dagan.official.convert import label_layout


def frame(preset: str, rows: int, width: int, height: int) -> pd.DataFrame:
    layout = label_layout(preset)
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, layout.num_label_channels, (height // 16, width // 16)).repeat(16, 0).repeat(16, 1)
              for _ in range(rows)]
    data = {"label": [encode_png(label.astype(np.uint8)) for label in labels]}
    if layout.has_instance:
        data["instance"] = [encode_png((label * 1000).astype(np.uint16)) for label in labels]
    return pd.DataFrame(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cityscapes")
    parser.add_argument("--variant", default="B6")
    parser.add_argument("--size", nargs=2, type=int, default=[512, 256], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--rows", type=int, default=8, help="label maps per predict call")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    common.add_out_argument(parser)
    args = parser.parse_args(argv)
    width, height = args.size
    config = config_from_dict({"dataset": {"name": args.preset, "crop_size": width,
                                           "aspect_ratio": width / height},
                               "model": {"variant": args.variant}}, "bench").resolved()
    layout = label_layout(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_generator(Path(tmp) / "generator.pt", build_generator(config, layout.semantic_nc).eval(),
                                    config, layout)
        limits = RegisterConfig(serve_max_image_pixels=width * height,  # a benchmark, not a served endpoint
                                serve_max_request_pixels=args.rows * width * height)
        mlflow.pyfunc.save_model(str(Path(tmp) / "model"), pip_requirements=[],
                                 **pyfunc_model_arguments(exported, limits))
        model = mlflow.pyfunc.load_model(str(Path(tmp) / "model"))
        inputs = frame(args.preset, args.rows, width, height)
        started = time.perf_counter()
        model.predict(inputs)
        first = time.perf_counter() - started
        seconds = timed(lambda: model.predict(inputs), args.warmup, args.repeats, synchronize=False)
    per_call = stats(seconds)
    device = str(model.unwrap_python_model().synthesizer.device)
    result = {"benchmark": "pyfunc", "machine": machine(), "preset": args.preset, "variant": args.variant,
              "size": f"{width}x{height}", "rows": args.rows, "device": device, "first_call_s": first,
              "predict_s": per_call, "images_per_second": args.rows / per_call["median"],
              "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}
    print(f"{args.preset} {args.variant} {width}x{height} on {result['device']}: "
          f"{result['images_per_second']:.2f} images/s (first call {first:.2f} s)")
    common.write_results(args.out, {**result, "command": common.command_line("bench.pyfunc", argv)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
