"""Make a reference folder from a checkout of the official DAGAN or SPADE code (docs/OFFICIAL.md, "Making a reference").

``python -m dagan make-official-reference --checkout DIR --preset NAME --seed N --width W --height H --origin TEXT
--out FOLDER`` makes the inputs from the seed (:func:`reference_inputs`), runs the official code on them in a
subprocess (:mod:`dagan.official.driver`, the checkout on its path: nothing of the official code is copied into
this repository) once per thread count, and writes ``reference.json`` + ``reference.npz``:

* the outputs and losses of the float32 run with 2 threads and oneDNN convolutions (:data:`REFERENCE_RUN`) are
  the reference;
* the runs of :data:`SPREAD_RUNS` round differently: another thread count or PyTorch's native convolutions
  (float32 summed in another order), and float64 (the same computation with almost no rounding, so its
  difference is the reference's own rounding error). Their largest absolute difference from the reference per
  array and per loss is stored as the *spread* (``reference.json["spread"]``, format :data:`FORMAT`), from which
  ``verify-official`` derives the tolerances after the first update (:mod:`dagan.official.verify`).

The folder appears whole or not at all (written beside it, then renamed), and an existing one is never replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

import dagan
from dagan.official.reference import FORMAT, Reference, load_reference, save_arrays
from dagan.presets import get_preset


class Run(NamedTuple):
    """How one run of the official code rounds: threads, oneDNN (else native) convolutions, float64 (else 32)."""

    threads: int
    mkldnn: bool
    float64: bool

    def describe(self) -> str:
        return (f"{self.threads} thread(s), {'oneDNN' if self.mkldnn else 'native'} convolutions, "
                f"{'float64' if self.float64 else 'float32'}")


REFERENCE_RUN = Run(2, True, False)
SPREAD_RUNS = (Run(1, True, False), Run(2, False, False), Run(2, True, True))
LABEL_BLOCK = 16  # labels come in 16x16-pixel blocks
DONT_CARE_CORNER = 8  # the top-left 8x8 pixels hold the don't-care id where the preset has one
UPSAMPLINGS = {"normal": 5, "more": 6, "most": 7}
# The official --dataset_mode per preset (its option defaults; the label layout is passed explicitly anyway).
# CelebAMask-HQ and DeepFashion use the generic "custom" mode, as the DAGAN training scripts do for CelebAMask-HQ
# (SPADE has no DeepFashion mode; the networks depend only on the label layout).
DATASET_MODES = {"cityscapes": "cityscapes", "ade20k": "ade20k", "coco_stuff": "coco", "facades": "facades",
                 "celebamask_hq": "custom", "deepfashion": "custom"}
REQUIRED_FILES = ("options/train_options.py", "models/pix2pix_model.py", "trainers/pix2pix_trainer.py",
                  "models/networks/sync_batchnorm/__init__.py")


class MakerError(ValueError):
    """A reference cannot be made as asked (bad checkout, size or folder); the message says the fix."""


def reference_inputs(seed: int, height: int, width: int, label_nc: int, dont_care: bool) -> dict[str, np.ndarray]:
    """The inputs of a reference: ``label`` (H, W int64), ``instance`` (H, W int32), ``real`` (3, H, W float32)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, label_nc, (height // LABEL_BLOCK, width // LABEL_BLOCK))
    label = np.kron(blocks, np.ones((LABEL_BLOCK, LABEL_BLOCK), dtype=np.int64))
    if dont_care:
        label[:DONT_CARE_CORNER, :DONT_CARE_CORNER] = label_nc
    instance = (label * 1000 + rng.integers(0, 3, (height, width))).astype(np.int32)
    real = rng.uniform(-1, 1, (3, height, width)).astype(np.float32)
    return {"label": label, "instance": instance, "real": real}


def num_upsampling_layers(preset: str) -> str:
    return get_preset(preset).num_upsampling_layers


def check_size(preset: str, width: int, height: int) -> None:
    """The official generator starts at (H, W) / 2^n and needs W / H to give that start exactly."""
    layers = num_upsampling_layers(preset)
    factor = 2 ** UPSAMPLINGS[layers]
    start_width = width // factor
    if width % factor or height % LABEL_BLOCK or start_width < 1 or round(start_width * height / width) * factor \
            != height:
        raise MakerError(f"--width {width} --height {height}: the official generator of {preset} "
                         f"({layers} upsampling, x{factor}) needs a width that is a multiple of {factor} and a height "
                         f"that is a multiple of 16 and equals width / {factor} / (width / height) x {factor}, "
                         "e.g. 128x128, 64x64, or 256x128 and 128x64 for cityscapes")


def official_flags(preset: str, width: int, height: int, checkpoints_dir: Path) -> list[str]:
    """The official training command line of a batch-1 CPU run at ``width`` x ``height``."""
    info = get_preset(preset)
    flags = ["--gpu_ids", "-1", "--batchSize", "1", "--name", "reference", "--checkpoints_dir",
             str(checkpoints_dir), "--dataset_mode", DATASET_MODES[preset], "--label_nc", str(info.num_classes),
             "--crop_size", str(width), "--aspect_ratio", f"{width / height:g}",
             "--num_upsampling_layers", info.num_upsampling_layers]
    flags += ["--contain_dontcare_label"] if info.contain_dontcare_label else []
    flags += [] if info.has_instance else ["--no_instance"]
    flags += ["--label_dir", ".", "--image_dir", "."] if DATASET_MODES[preset] == "custom" else []
    return flags


def check_checkout(checkout: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (checkout / name).is_file()]
    if missing:
        hint = (" (the official README: clone vacancy/Synchronized-BatchNorm-PyTorch and copy its sync_batchnorm "
                "folder into models/networks/)" if all("sync_batchnorm" in name for name in missing) else
                " (pass the folder that holds train.py: DAGAN_v1/ of Ha0Tang/DAGAN, or NVlabs/SPADE)")
        raise MakerError(f"--checkout {checkout}: {', '.join(missing)} missing{hint}")


def run_official(checkout: Path, flags: list[str], seed: int, run: Run, work: Path,
                 log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], dict]:
    """One run of the official code in a subprocess, rounding as ``run`` says: (arrays, meta)."""
    out = work / f"threads{run.threads}-{'onednn' if run.mkldnn else 'native'}-{'64' if run.float64 else '32'}"
    job = {"checkout": str(checkout), "flags": flags, "seed": seed, **run._asdict(),
           "inputs": str(work / "inputs.npz"), "out": str(out)}
    Path(f"{out}.job.json").write_text(json.dumps(job))
    thread_vars = {name: str(run.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = {**os.environ, **thread_vars, "PYTHONPATH": str(Path(dagan.__file__).resolve().parents[1])}
    log(f"official code, {run.describe()}")
    result = subprocess.run([sys.executable, "-m", "dagan.official.driver", f"{out}.job.json"],
                            cwd=work, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise MakerError(f"the official code in {checkout} failed with {run.describe()} (exit "
                         f"{result.returncode}); its last lines:\n{tail}")
    with np.load(f"{out}.npz", allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return arrays, json.loads(Path(f"{out}.json").read_text())


def spread_of(reference: tuple[dict, dict], other: tuple[dict, dict], run: Run) -> dict:
    """How far a run that rounds differently lies from the reference run: per array and per loss."""
    (arrays, meta), (other_arrays, other_meta) = reference, other
    for key in ("generator_keys", "discriminator_keys", "vgg19_features_keys"):
        if meta[key] != other_meta[key]:
            raise MakerError(f"the official run with {run.describe()} built another {key} than the reference run")
    return {**run._asdict(),
            "arrays": {name: float(np.abs(other_arrays[name].astype(np.float64) - value).max())
                       for name, value in arrays.items()},
            "losses": [{name: abs(other_loss[name] - loss[name]) for name in loss}
                       for loss, other_loss in zip(meta["losses_per_iteration"], other_meta["losses_per_iteration"],
                                                   strict=True)]}


def make_reference(checkout: str | Path, preset: str, seed: int, width: int, height: int, origin: str,
                   out: str | Path, log: Callable[[str], None] = lambda stage: None) -> Reference:
    """Run the official code and write the reference folder ``out`` (docs/OFFICIAL.md)."""
    checkout, out = Path(checkout).resolve(), Path(out)
    check_checkout(checkout)
    check_size(preset, width, height)
    if out.exists():
        raise MakerError(f"--out {out} exists; a reference folder is never replaced: pass a new folder")
    info = get_preset(preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        inputs = reference_inputs(seed, height, width, info.num_classes, info.contain_dontcare_label)
        save_arrays(work / "inputs.npz", inputs)
        flags = official_flags(preset, width, height, work / "checkpoints")
        runs = {run: run_official(checkout, flags, seed, run, work, log) for run in (REFERENCE_RUN, *SPREAD_RUNS)}
        arrays, meta = runs[REFERENCE_RUN]
        if meta["semantic_nc"] != info.semantic_nc:
            raise MakerError(f"the official code built {meta['semantic_nc']} input channels for {preset}, the preset "
                             f"has {info.semantic_nc}")
        code = "DAGAN" if any(name.startswith("conv_64.") for name, _ in meta["generator_keys"]) else "SPADE"
        folder = work / "reference"
        folder.mkdir()
        save_arrays(folder / "reference.npz", {**inputs, **arrays})
        document = {"format": FORMAT, "preset": preset, "seed": seed, "height": height, "width": width,
                    "label_nc": info.num_classes, "contain_dontcare_label": info.contain_dontcare_label,
                    "instance": info.has_instance, "num_upsampling_layers": info.num_upsampling_layers, "ngf": 64,
                    "official": f"{code} ({origin})", "torch": meta["torch"], "threads": REFERENCE_RUN.threads,
                    "official_flags": flags[flags.index("--dataset_mode"):],
                    "losses_per_iteration": meta["losses_per_iteration"],
                    "spread": [spread_of(runs[REFERENCE_RUN], runs[run], run) for run in SPREAD_RUNS],
                    **{key: meta[key] for key in ("generator_keys", "discriminator_keys", "vgg19_features_keys")}}
        (folder / "reference.json").write_text(json.dumps(document, indent=1) + "\n")
        load_reference(folder)  # the folder it writes is one that verify-official accepts
        folder.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_reference(out)
