"""The official state-dict layouts of DAGAN and SPADE, and the key map to this project's modules.

The official generator (DAGAN: SPADE generator + ``conv_64``, ``cab``, ``spatialAtt``; SPADE/GauGAN
= variant B1: without those three) and the multiscale discriminator store their weights under
other names than ours. One key maps to one key; the tensors are the same:

=====================================  =======================================
official                               this project
=====================================  =======================================
``up_N.*``                             ``up_blocks.N.*``
``conv_64.*`` (CAM's F~ convolution)   ``cam.fuse.*``
``cab.conv1.*`` / ``cab.conv2.*``      ``cam.reduce.*`` / ``cam.expand.*``
``spatialAtt.conv.*``                  ``sam.conv.*``
``discriminator_N.modelL.0.0.*``       ``scales.N.layers.L.0.*`` (spectral-norm layers)
``discriminator_N.modelL.0.*``         ``scales.N.layers.L.0.*`` (first and last layer)
everything else (``fc``, ``head_0``,   the same name
``G_middle_*``, ``conv_img``)
encoder (``latest_net_E.pth``, ``*``)  ``encoder.*`` (the generator's submodule,
                                       ``model.style=vae``; dagan/nn/style.py)
=====================================  =======================================

With SPADE's style encoder (``--use_vae``, ``model.style=vae``) the official generator's ``fc`` is a
linear map from z, and the encoder is a network of its own (``netE``) whose keys (``layer1.0.weight_orig``
.. ``fc_var.bias``) equal those of our ``generator.encoder`` without the ``encoder.`` prefix; the
generator's key map leaves the encoder out, :func:`key_map` with role "encoder" maps it.

:func:`key_map` pairs every key of a model with its official name, in the official order
(the order of the official modules' registration: blocks before the image head, the image head
before DAGAN's attention modules; inside a SPADE block its three convolutions before its three
normalisations), so an exported state dict is the official one key for key, in order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

# Top-level modules of the official generator, in registration order.
GENERATOR_ORDER = ("fc", "head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3", "up_4",
                   "conv_img", "conv_64", "cab", "spatialAtt")
# Submodules of an official SPADE residual block, in registration order.
BLOCK_ORDER = ("conv_0", "conv_1", "conv_s", "norm_0", "norm_1", "norm_s")
# (ours, official) name prefixes of the generator.
GENERATOR_RENAMES = (("cam.fuse.", "conv_64."), ("cam.reduce.", "cab.conv1."), ("cam.expand.", "cab.conv2."),
                     ("sam.conv.", "spatialAtt.conv."))
SPECTRAL_SUFFIXES = ("weight_orig", "weight_u", "weight_v")
ENCODER_PREFIX = "encoder."  # the style encoder inside our generator: its own file (netE) in the official code


class LayoutError(ValueError):
    """A state dict does not fit the model it is loaded into; the message names the first key that differs."""


def official_generator_key(key: str) -> str:
    """Our generator state-dict key -> the official one."""
    if key.startswith("up_blocks."):
        return "up_" + key.removeprefix("up_blocks.")
    for ours, official in GENERATOR_RENAMES:
        if key.startswith(ours):
            return official + key.removeprefix(ours)
    if key.startswith(("cam.", "sam.")):
        raise LayoutError(f"{key} has no counterpart in the official code (it fuses one earlier scale in CAM: "
                          "model.cam_sources=official, and has a 3x3 SAM)")
    return key


def official_discriminator_key(key: str) -> str:
    """``scales.N.layers.L.0.P`` -> ``discriminator_N.modelL[.0].0.P``."""
    match = re.fullmatch(r"scales\.(\d+)\.layers\.(\d+)\.0\.(\w+)", key)
    if not match:
        raise LayoutError(f"discriminator key {key} has no counterpart in the official code")
    scale, layer, name = match.groups()
    inner = ".0.0." if name in SPECTRAL_SUFFIXES else ".0."
    return f"discriminator_{scale}.model{layer}{inner}{name}"


def _generator_rank(official_key: str) -> tuple[int, int]:
    top, _, rest = official_key.partition(".")
    block = rest.partition(".")[0]
    return GENERATOR_ORDER.index(top), BLOCK_ORDER.index(block) if block in BLOCK_ORDER else -1


@dataclass(frozen=True)
class KeyPair:
    official: str
    ours: str
    shape: tuple[int, ...]


def key_map(module: nn.Module, role: str) -> list[KeyPair]:
    """Every state-dict key of our ``module`` ("generator", "discriminator", or "encoder": a generator's
    ``encoder``) with its official name and shape, in the official order. A generator's own map leaves
    its style encoder out (the official code keeps it in another file)."""
    rename = {"generator": official_generator_key, "discriminator": official_discriminator_key,
              "encoder": lambda key: key}[role]
    pairs = [KeyPair(rename(key), key, tuple(value.shape)) for key, value in module.state_dict().items()
             if not (role == "generator" and key.startswith(ENCODER_PREFIX))]
    if role == "generator":  # a stable sort: the order inside a convolution or a norm is already the official one
        pairs.sort(key=lambda pair: _generator_rank(pair.official))
    return pairs


def check_layout(state: Mapping[str, torch.Tensor], pairs: list[KeyPair], what: str) -> None:
    """Raise a LayoutError naming the first official key of ``state`` that is missing, extra or of another shape."""
    expected_keys = {pair.official for pair in pairs}
    for key, shape in ((pair.official, pair.shape) for pair in pairs):
        if key not in state:
            raise LayoutError(f"{what}: key {key} (shape {list(shape)}) is missing; the file is not a checkpoint of "
                              "this preset and variant")
        if tuple(state[key].shape) != shape:
            raise LayoutError(f"{what}: first mismatching key {key}: the file has shape {list(state[key].shape)}, "
                              f"the model expects {list(shape)}; check --preset, --variant and num_upsampling_layers")
    extra = [key for key in state if key not in expected_keys]
    if extra:
        raise LayoutError(f"{what}: key {extra[0]} (shape {list(state[extra[0]].shape)}) does not belong to this "
                          f"model ({len(extra)} unexpected key(s)); check --variant (DAGAN checkpoints have conv_64, "
                          "cab and spatialAtt; SPADE's do not)")


def strip_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved from a DataParallel/DDP wrapper has every key prefixed with ``module.``."""
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)
