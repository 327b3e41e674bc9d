"""CA2SIS's per-class style codes (Fontanini et al. 2024, "multi-resolution grouped style encoder").

:class:`GroupedStyleEncoder` turns a photo and its label map into one style code per class and
scale. Layout (as the official code builds it, with C label channels and ``width`` = 4 C):

* stem: 3x3 conv 3 -> width, group norm (C groups), ReLU;
* ``depth`` (6) downsampling convs (3x3, stride 2, C groups), each doubling the width,
  with group norm and ReLU;
* ``depth - 1`` (5) upsampling steps, deepest first: bilinear x2, a 3x3 conv (C groups) that
  halves the width, group norm, ReLU; from the second step on, the step's input is the previous
  step's output concatenated (channels after channels) with the encoder feature of the same size;
* after every upsampling step, each class's average of its own group's channels over the
  class's pixels (label map resized to that size, nearest; 1e-5 added to the area) goes through
  a grouped 1x1 conv to ``style_dim`` per class and a tanh.

The codes of the 5 steps are concatenated: (B, C, 5 x style_dim). A class without pixels gets
tanh of the heads' biases, as in the official code.

:class:`StyleMappingNetwork` maps noise to per-class codes of the same shape (the official
model's network for reference-free generation, trained in its second stage, which is not built
here; docs/ATTENTION.md).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

STYLE_WIDTH_PER_CLASS = 4  # official num_feat: stem channels per class
STYLE_ENCODER_DEPTH = 6  # official num_downsample (num_upsample = depth - 1 style scales)
AREA_EPSILON = 1e-5


def _conv_norm_relu(fin: int, fout: int, groups: int, norm_groups: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(fin, fout, 3, stride=stride, padding=1, groups=groups),
                         nn.GroupNorm(norm_groups, fout), nn.ReLU())


class GroupedStyleEncoder(nn.Module):
    """(photo (B, 3, H, W) in [-1, 1], label one-hot (B, C, H, W)) -> style codes (B, C, scales * style_dim)."""

    def __init__(self, num_classes: int, style_dim: int = 256, depth: int = STYLE_ENCODER_DEPTH):
        super().__init__()
        if depth < 2:
            raise ValueError(f"the style encoder needs depth >= 2, got {depth}")
        classes = num_classes
        widths = [STYLE_WIDTH_PER_CLASS * classes * 2**level for level in range(depth + 1)]
        self.num_classes = classes
        self.style_dim = style_dim
        self.widths = widths
        self.stem = _conv_norm_relu(3, widths[0], 1, classes)
        self.down = nn.ModuleList(
            _conv_norm_relu(widths[level], widths[level + 1], classes, classes, stride=2) for level in range(depth)
        )
        levels = range(depth - 1, 0, -1)  # the output level of each upsampling step, deepest first
        self.up = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                          *_conv_norm_relu(widths[level + 1] * (1 if level == depth - 1 else 2), widths[level],
                                           classes, classes))
            for level in levels
        )
        self.heads = nn.ModuleList(nn.Conv1d(widths[level], style_dim * classes, 1, groups=classes) for level in levels)

    @property
    def code_width(self) -> int:
        """Width of one class's concatenated code (scales x style_dim)."""
        return len(self.heads) * self.style_dim

    def forward(self, photo: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        x = self.stem(photo)
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        codes = []
        for step, (up, head) in enumerate(zip(self.up, self.heads, strict=True)):
            if step:
                x = torch.cat([x, skips[-1 - step]], dim=1)
            x = up(x)
            mask = F.interpolate(classes.to(x.dtype), size=x.shape[2:], mode="nearest")
            mask = mask.repeat_interleave(x.shape[1] // self.num_classes, dim=1)
            pooled = (x * mask).sum(dim=(2, 3)) / (mask.sum(dim=(2, 3)) + AREA_EPSILON)
            codes.append(torch.tanh(head(pooled.unsqueeze(-1))).view(x.shape[0], self.num_classes, self.style_dim))
        return torch.cat(codes, dim=2)

    def empty_codes(self) -> torch.Tensor:
        """The codes of a class without pixels, (C, scales * style_dim): tanh of the heads' biases."""
        return torch.cat([torch.tanh(cast(torch.Tensor, head.bias).detach()).view(self.num_classes, self.style_dim)
                          for head in self.heads], dim=1)


class StyleMappingNetwork(nn.Module):
    """Noise (B, noise_dim) -> per-class codes (B, C, code_width): a shared 4-layer MLP (512 wide, ReLU)
    and one 4-layer MLP per class (official layout, noise_dim 16)."""

    def __init__(self, num_classes: int, code_width: int, noise_dim: int = 16, hidden: int = 512):
        super().__init__()
        shared: list[nn.Module] = [nn.Linear(noise_dim, hidden), nn.ReLU()]
        for _ in range(3):
            shared += [nn.Linear(hidden, hidden), nn.ReLU()]
        self.shared = nn.Sequential(*shared)
        self.per_class = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, code_width))
            for _ in range(num_classes)
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        hidden = self.shared(noise)
        return torch.stack([branch(hidden) for branch in self.per_class], dim=1)
