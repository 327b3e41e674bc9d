"""Reference folders: outputs of the official DAGAN/SPADE code for fixed weights and inputs.

A folder (``references/official/<code>-<preset>-<seed>/``) holds ``reference.json`` (preset,
seed, size, label layout, the official state-dict layouts ``generator_keys``,
``discriminator_keys``, ``vgg19_features_keys`` as ``[name, shape]`` lists in the official
order, and the losses of two training iterations) and ``reference.npz`` (inputs ``label``,
``instance``, ``real`` and the official outputs). docs/OFFICIAL.md describes every array.

No weight file is needed: every tensor of an official state dict is made by :func:`rule_tensor`
from its key's position in the key list and a seed (``seed`` for the generator, ``seed + 1``
for the discriminator, ``seed + 2`` for VGG19's features).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dagan.labels import semantic_input

SEED_STRIDE = 1_000_003
WEIGHT_SEED_OFFSET = {"generator": 0, "discriminator": 1, "vgg19_features": 2}


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


def load_reference(folder: str | Path) -> Reference:
    """Read ``reference.json`` and ``reference.npz`` of a reference folder (a clear error if either is missing)."""
    folder = Path(folder)
    files = [folder / "reference.json", folder / "reference.npz"]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: a reference folder holds reference.json and "
                                "reference.npz (docs/OFFICIAL.md)")
    meta = json.loads(files[0].read_text())
    with np.load(files[1], allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return Reference(folder, meta, arrays)
