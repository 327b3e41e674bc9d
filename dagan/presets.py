"""Dataset presets: the label layout and the official training settings per dataset.

The numbers follow the paper (section 4, "Datasets" and "Implementation details") and the
official code's per-dataset settings (docs/MODEL.md, "Per-dataset settings"). A preset supplies the defaults
for every config field left ``null`` in ``params.yaml`` (see :mod:`dagan.config`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Facts of one dataset: label layout, image size and the official schedule."""

    name: str
    num_classes: int  # label ids 0..num_classes-1 after remapping
    contain_dontcare_label: bool  # one extra "don't care" channel (label id num_classes)
    has_instance: bool  # instance maps exist: one extra instance-edge channel
    load_size: int  # shorter side is resized to this (width for aspect_ratio > 1)
    crop_size: int  # random crop of this width at training time
    aspect_ratio: float  # width / height of the crop
    num_upsampling_layers: str  # normal | more | most
    batch_size: int
    epochs: int  # epochs at constant learning rate
    epochs_decay: int  # epochs of linear decay to zero
    ngf: int = 64
    ndf: int = 64
    lr_schedule: str = "official"  # dagan.schedule: official (per epoch) | linear (per step)

    @property
    def semantic_nc(self) -> int:
        """Generator/discriminator label-input channels: one-hot + don't care + instance edge."""
        return self.num_classes + int(self.contain_dontcare_label) + int(self.has_instance)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("cityscapes", 35, False, True, 512, 512, 2.0, "more", 8, 100, 100),
        Preset("ade20k", 150, True, False, 286, 256, 1.0, "normal", 8, 100, 100),
        Preset("celebamask_hq", 19, False, False, 512, 512, 1.0, "normal", 16, 50, 50),
        Preset("facades", 13, False, False, 1024, 1024, 1.0, "normal", 4, 50, 50),
        Preset("coco_stuff", 182, True, True, 286, 256, 1.0, "normal", 32, 50, 50),
        # DeepFashion as the DAGAN authors prepared it (20 human-parsing ids, no instances; their scripts).
        Preset("deepfashion", 20, False, False, 286, 256, 1.0, "normal", 32, 50, 50),
        # Built-in synthetic scenes: small enough for the whole pipeline on 2 CPU cores; 22 + 22 epochs
        # (1408 steps) learn clearly past the flat painter within make run's time budget with bf16 (docs/RESULTS.md).
        Preset("synthetic", 10, False, True, 64, 64, 1.0, "normal", 8, 22, 22, ngf=16, ndf=16, lr_schedule="linear"),
        # A folder of the user's own pairs: the label layout comes from the prepared manifest.
        Preset("custom", 0, False, False, 256, 256, 1.0, "normal", 8, 50, 50),
    )
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` or raise a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown dataset preset {name!r}; known presets: {known}") from None
