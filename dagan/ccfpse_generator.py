"""The CC-FPSE generator (Liu et al., NeurIPS 2019, section 3; layout facts in docs/CCFPSE.md).

The block layout is SPADE's (the DAGAN backbone's): a start map at (H, W) / 2**num_up with
16 ngf channels, then head_0, G_middle_0, G_middle_1 (16 ngf), up_0..up_3 (8, 4, 2, 1 ngf)
and, with "most", up_4 (ngf / 2), with nearest x2 upsampling in between; the image head is
LeakyReLU 0.2 -> 3x3 conv -> tanh. Every block is a :class:`~dagan.nn.condconv.CondConvBlock`
conditioned on concat(label map resized to the block's size, the label pyramid's level of that
size) (:class:`~dagan.nn.label_pyramid.LabelPyramid`, ngf channels, one level per resolution).

The start map comes from one of two places, as in the official code:
* ``z_dim == 0`` (no style encoder, the official code without ``--use_vae``): a 3x3 conv of the
  label map resized (nearest) to the start size. Deterministic; works at any size divisible
  by 2**num_up.
* ``z_dim > 0`` (the official ``--use_vae``): a linear map from a latent z (B, z_dim) to
  16 ngf x start_size, so the image size is fixed when the generator is built. Without a z the
  generator uses z = 0, the prior's mean (deterministic; the official code samples z ~ N(0, I)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import NUM_UP
from dagan.nn.condconv import CondConvBlock
from dagan.nn.label_pyramid import LabelPyramid


class CCFPSEGenerator(nn.Module):
    def __init__(
        self,
        semantic_nc: int,
        ngf: int = 64,
        num_upsampling_layers: str = "normal",
        z_dim: int = 0,
        start_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if num_upsampling_layers not in NUM_UP:
            raise ValueError(f"num_upsampling_layers must be one of {list(NUM_UP)}, got {num_upsampling_layers!r}")
        if ngf < 2 or ngf % 2:
            raise ValueError(f"ngf must be an even number >= 2, got {ngf}")
        if z_dim < 0 or (z_dim > 0 and start_size is None):
            raise ValueError(f"z_dim={z_dim}: a latent start needs z_dim > 0 and the start size (height, width)")
        self.semantic_nc = semantic_nc
        self.num_up = NUM_UP[num_upsampling_layers]
        self.extra_middle_up = num_upsampling_layers in ("more", "most")
        self.z_dim = z_dim
        self.start_size = tuple(start_size) if z_dim else None
        start_channels = 16 * ngf
        if z_dim:
            self.fc = nn.Linear(z_dim, start_channels * self.start_size[0] * self.start_size[1])
        else:
            self.fc = nn.Conv2d(semantic_nc, start_channels, 3, padding=1)
        self.label_pyramid = LabelPyramid(semantic_nc, ngf, self.num_up + 1)
        condition_nc = semantic_nc + ngf
        self.head_0 = CondConvBlock(16 * ngf, 16 * ngf, condition_nc)
        self.G_middle_0 = CondConvBlock(16 * ngf, 16 * ngf, condition_nc)
        self.G_middle_1 = CondConvBlock(16 * ngf, 16 * ngf, condition_nc)
        widths = [16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf] + ([ngf // 2] if num_upsampling_layers == "most" else [])
        self.up_blocks = nn.ModuleList(
            CondConvBlock(fin, fout, condition_nc) for fin, fout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.conv_img = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def size_error(self, height: int, width: int) -> str | None:
        """Why a label map of this size cannot be generated (None: it can)."""
        factor = 2**self.num_up
        if height % factor or width % factor:
            return f"height and width must be multiples of {factor} (2**{self.num_up} for this num_upsampling_layers)"
        if self.z_dim and (height // factor, width // factor) != self.start_size:
            return (f"this generator's latent start was built for {self.start_size[0] * factor}x"
                    f"{self.start_size[1] * factor} images (z_dim > 0 fixes the size)")
        return None

    def _start(self, label_map: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        height, width = label_map.shape[2:]
        if (reason := self.size_error(height, width)) is not None:
            raise ValueError(f"label map size {height}x{width}: {reason}; resize or crop it")
        factor = 2**self.num_up
        start = (height // factor, width // factor)
        if not self.z_dim:
            if z is not None:
                raise ValueError("this generator starts from the label map (z_dim=0); it takes no z")
            return self.fc(F.interpolate(label_map, size=start, mode="nearest"))
        if z is None:
            z = label_map.new_zeros(label_map.shape[0], self.z_dim)
        return self.fc(z).view(label_map.shape[0], -1, *start)

    def forward(
        self, label_map: torch.Tensor, z: torch.Tensor | None = None, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """label_map: (B, semantic_nc, H, W) semantic input (z: (B, z_dim) with z_dim > 0) -> image
        (B, 3, H, W) in [-1, 1]. With ``return_attention`` also returns {} (CC-FPSE has no attention maps)."""
        x = self._start(label_map, z)
        conditions = {}
        for level in self.label_pyramid(label_map):
            size = tuple(level.shape[2:])
            conditions[size] = torch.cat([F.interpolate(label_map, size=size, mode="nearest"), level], 1)

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return block(x, conditions[tuple(x.shape[2:])])

        x = run(self.head_0, x)
        x = run(self.G_middle_0, F.interpolate(x, scale_factor=2, mode="nearest"))
        if self.extra_middle_up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = run(self.G_middle_1, x)
        for block in self.up_blocks:
            x = run(block, F.interpolate(x, scale_factor=2, mode="nearest"))
        image = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        return (image, {}) if return_attention else image
