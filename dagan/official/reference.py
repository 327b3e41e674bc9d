"""Reference folders: outputs of the official DAGAN/SPADE code for fixed weights and inputs.

A folder (``references/official/<code>-<preset>-<seed>/``) holds ``reference.json`` (preset,
seed, size, label layout, the official state-dict layouts ``generator_keys``,
``discriminator_keys``, ``vgg19_features_keys`` as ``[name, shape]`` lists in the official
order, the losses of two training iterations and, from format 2 on, the ``spread``: how far runs
of the official code in other float orders lie from it) and ``reference.npz`` (inputs ``label``,
``instance``, ``real`` and the official outputs). docs/OFFICIAL.md describes every field and array;
:func:`load_reference` refuses a folder that lacks one, naming it.

No weight file is needed: every tensor of an official state dict is made by :func:`rule_tensor`
from its key's position in the key list and a seed (``seed`` for the generator, ``seed + 1``
for the discriminator, ``seed + 2`` for VGG19's features).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dagan.labels import semantic_input

FORMAT = 2  # reference.json "format"; a folder without one is format 1 (no spread)
ITERATIONS = 2  # training iterations of a reference
LOSS_NAMES = ("GAN", "GAN_Feat", "VGG", "D_Fake", "D_real")  # the official loss names, per iteration
INPUT_ARRAYS = ("label", "instance", "real")
DISCRIMINATOR_SCALES = 2
OUTPUT_ARRAYS = (
    *(f"g_{mode}{suffix}" for mode in ("train", "eval") for suffix in ("", "_pre_tanh")),
    *(f"d_{mode}_scale{scale}_{what}" for mode in ("train", "eval") for scale in range(DISCRIMINATOR_SCALES)
      for what in ("final", "feature_abs_means")),
    *(f"g_{mode}_after_{ITERATIONS}_iterations{suffix}" for mode in ("eval", "train") for suffix in ("", "_pre_tanh")),
)
REQUIRED_FIELDS = {"preset": str, "seed": int, "height": int, "width": int, "label_nc": int,
                   "contain_dontcare_label": bool, "instance": bool, "num_upsampling_layers": str, "ngf": int,
                   "losses_per_iteration": list, "generator_keys": list, "discriminator_keys": list,
                   "vgg19_features_keys": list}
SEED_STRIDE = 1_000_003
WEIGHT_SEED_OFFSET = {"generator": 0, "discriminator": 1, "vgg19_features": 2}


G_LOSSES = ("GAN", "GAN_Feat", "VGG")  # computed before the iteration's G update; D_Fake and D_real after it


def family_of(name: str) -> str:
    """The group of an output array or a loss (``iteration2/GAN``) that shares one tolerance: ``g_train``,
    ``g_eval``, ``discriminator``, ``iteration1_g`` (G's losses before the first update), ``iteration1_d`` (D's
    losses of iteration 1, after the first G update), ``iteration2``, ``g_eval_after_2_iterations``, ..."""
    if name.startswith("iteration"):
        iteration, loss = name.split("/")
        if iteration == "iteration1":
            return "iteration1_g" if loss in G_LOSSES else "iteration1_d"
        return iteration
    if name.startswith("d_"):
        return "discriminator"
    return name.removesuffix("_pre_tanh")


def rule_tensor(seed: int, index: int, key: str, shape: list[int]) -> torch.Tensor:
    """The weight the reference rule gives the ``index``-th key of a state dict (float32; int64 counters)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed * SEED_STRIDE + index)
    value = torch.randn(shape, generator=generator, dtype=torch.float64)
    if key.endswith("running_mean"):
        value = 0.1 * value
    elif key.endswith("running_var"):
        value = value.abs() + 0.5
    elif key.endswith(("weight_u", "weight_v")):
        value = value / value.norm()
    elif key.endswith("bias"):
        value = 0.05 * value
    elif len(shape) >= 2:
        value = value / math.sqrt(math.prod(shape[1:]))
    else:
        value = 1 + 0.1 * value
    return value.float()


def rule_state_dict(keys: list[list], seed: int) -> dict[str, torch.Tensor]:
    """An official state dict (``[name, shape]`` pairs in order) filled by the rule."""
    return {name: rule_tensor(seed, index, name, shape) for index, (name, shape) in enumerate(keys)}


@dataclass(frozen=True)
class Reference:
    folder: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @property
    def code(self) -> str:
        """"DAGAN" or "SPADE": which official code computed the outputs."""
        return "DAGAN" if any(key.startswith("conv_64.") for key, _ in self.meta["generator_keys"]) else "SPADE"

    @property
    def variant(self) -> str:
        return "B6" if self.code == "DAGAN" else "B1"

    @property
    def num_label_channels(self) -> int:
        return self.meta["label_nc"] + int(self.meta["contain_dontcare_label"])

    @property
    def semantic_nc(self) -> int:
        return self.num_label_channels + int(self.meta["instance"])

    @property
    def format(self) -> int:
        """1: outputs and losses; 2: also the spread of the official code over float orders."""
        return int(self.meta.get("format", 1))

    def spread(self, name: str) -> float | None:
        """The largest absolute difference of the official code from itself in another float order, for an output
        array or a loss (``iteration2/GAN``); None for a format-1 folder."""
        if self.format < 2:
            return None
        if "/" in name:
            iteration, loss = name.split("/")
            index = int(iteration.removeprefix("iteration")) - 1
            return max(float(run["losses"][index][loss]) for run in self.meta["spread"])
        return max(float(run["arrays"][name]) for run in self.meta["spread"])

    def official_state(self, role: str) -> dict[str, torch.Tensor]:
        """The rule-weight official state dict of ``role`` (generator, discriminator, vgg19_features)."""
        return rule_state_dict(self.meta[f"{role}_keys"], self.meta["seed"] + WEIGHT_SEED_OFFSET[role])

    def semantic(self) -> torch.Tensor:
        """The (1, semantic_nc, H, W) generator input: one-hot labels (+ don't care) (+ instance edges)."""
        label = torch.from_numpy(self.arrays["label"].astype(np.int64))[None]
        instance = torch.from_numpy(self.arrays["instance"].astype(np.int64))[None] if self.meta["instance"] else None
        return semantic_input(label, self.num_label_channels, instance)

    def real(self) -> torch.Tensor:
        return torch.from_numpy(self.arrays["real"])[None]


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays as a compressed numpy archive (the format of reference.npz)."""
    named: dict[str, Any] = dict(arrays)
    np.savez_compressed(path, **named)


class ReferenceFormatError(ValueError):
    """A reference folder lacks what its format requires, or holds something unreadable; the message names it."""


def load_reference(folder: str | Path) -> Reference:
    """Read and check ``reference.json`` and ``reference.npz`` of a reference folder (one-line errors)."""
    folder = Path(folder)
    files = [folder / "reference.json", folder / "reference.npz"]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: a reference folder holds reference.json and "
                                "reference.npz (docs/OFFICIAL.md)")
    try:
        meta = json.loads(files[0].read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReferenceFormatError(f"{files[0]} is not readable JSON ({err})") from None
    try:
        with np.load(files[1], allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ReferenceFormatError(f"{files[1]} is not a readable numpy archive ({type(err).__name__}: {err})") \
            from None
    reference = Reference(folder, meta, arrays)
    check_reference(reference)
    return reference


def check_reference(reference: Reference) -> None:
    """Raise :class:`ReferenceFormatError` naming the first thing the folder's format requires and it lacks."""
    meta, where = reference.meta, reference.folder
    if not isinstance(meta, dict):
        raise ReferenceFormatError(f"{where}/reference.json holds no JSON object (docs/OFFICIAL.md lists its fields)")
    if not isinstance(meta.get("format", 1), int) or meta.get("format", 1) > FORMAT:
        raise ReferenceFormatError(f"{where}/reference.json: format {meta.get('format')!r} is not one this version "
                                   f"reads (1 to {FORMAT}); upgrade the project")
    wrong = [f"{key} ({kind.__name__})" for key, kind in REQUIRED_FIELDS.items() if not isinstance(meta.get(key), kind)]
    if wrong:
        raise ReferenceFormatError(f"{where}/reference.json lacks {', '.join(wrong)} (docs/OFFICIAL.md lists the "
                                   "fields of a reference)")
    _check_losses(meta["losses_per_iteration"], f"{where}/reference.json losses_per_iteration")
    absent = [name for name in (*INPUT_ARRAYS, *OUTPUT_ARRAYS) if name not in reference.arrays]
    if absent:
        raise ReferenceFormatError(f"{where}/reference.npz lacks the array(s) {', '.join(absent)} (docs/OFFICIAL.md "
                                   "lists the arrays of a reference)")
    size = (meta["height"], meta["width"])
    images = [(name, (1, 3, *size)) for name in OUTPUT_ARRAYS if name.startswith("g_")]
    for name, shape in (("label", size), ("instance", size), ("real", (3, *size)), *images):
        if reference.arrays[name].shape != shape:
            raise ReferenceFormatError(f"{where}/reference.npz: {name} has shape {reference.arrays[name].shape}, "
                                       f"height and width give {shape}")
    if reference.format >= 2:
        _check_spread(meta.get("spread"), f"{where}/reference.json spread")


def _check_losses(losses: object, what: str) -> None:
    if not isinstance(losses, list) or len(losses) != ITERATIONS:
        raise ReferenceFormatError(f"{what}: {ITERATIONS} iterations expected, found "
                                   f"{len(losses) if isinstance(losses, list) else type(losses).__name__}")
    for index, values in enumerate(losses, 1):
        absent = [name for name in LOSS_NAMES if not isinstance(values, dict)
                  or not isinstance(values.get(name), int | float) or isinstance(values.get(name), bool)]
        if absent:
            raise ReferenceFormatError(f"{what}: iteration {index} lacks the loss(es) {', '.join(absent)}")


def _check_spread(spread: object, what: str) -> None:
    if not isinstance(spread, list) or not spread:
        raise ReferenceFormatError(f"{what}: a format-{FORMAT} reference holds one entry per run of the official "
                                   "code in another float order; found none")
    for run in spread:
        if not isinstance(run, dict) or not isinstance(run.get("threads"), int):
            raise ReferenceFormatError(f"{what}: every run names its thread count (\"threads\")")
        arrays = run.get("arrays")
        absent = [name for name in OUTPUT_ARRAYS if not isinstance(arrays, dict)
                  or not isinstance(arrays.get(name), int | float)]
        if absent:
            raise ReferenceFormatError(f"{what}: the run with {run['threads']} thread(s) lacks the array(s) "
                                       f"{', '.join(absent)}")
        _check_losses(run.get("losses"), f"{what}: the run with {run['threads']} thread(s)")


def generator_outputs(generator: torch.nn.Module, semantic: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
    """A reference's generator arrays: ``prefix`` (the image) and ``prefix_pre_tanh`` (``conv_img``'s output), the
    same for the official generator (the maker) and ours (verify-official): both name that layer ``conv_img``."""
    captured: dict[str, torch.Tensor] = {}
    conv_img = generator.get_submodule("conv_img")
    hook = conv_img.register_forward_hook(lambda module, args, output: captured.update(pre=output))
    try:
        with torch.no_grad():
            image = generator(semantic)
    finally:
        hook.remove()
    return {prefix: image.numpy().copy(), f"{prefix}_pre_tanh": captured["pre"].numpy().copy()}
