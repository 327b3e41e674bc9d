"""The CC-FPSE generator (Liu et al., NeurIPS 2019, section 3; layout facts in docs/CCFPSE.md).

The block layout is SPADE's (the DAGAN backbone's): a start map at (H, W) / 2**num_up with
16 ngf channels, then head_0, G_middle_0, G_middle_1 (16 ngf), up_0..up_3 (8, 4, 2, 1 ngf)
and, with "most", up_4 (ngf / 2), with nearest x2 upsampling in between; the image head is
LeakyReLU 0.2 -> 3x3 conv -> tanh. Every block is a :class:`~dagan.nn.condconv.CondConvBlock`
conditioned on concat(label map resized to the block's size, the label pyramid's level of that
size) (:class:`~dagan.nn.label_pyramid.LabelPyramid`, ngf channels, one level per resolution).

The start map comes from one of two places, as in the official code (``style``, docs/MULTIMODAL.md):
* ``off`` (the official code without ``--use_vae``): a 3x3 conv of the label map resized
  (nearest) to the start size. Deterministic; works at any size divisible by 2**num_up.
* ``vae`` (the official ``--use_vae``, which every official training script uses): a linear map
  from a latent z (B, z_dim) to 16 ngf x start_size, so the image size is fixed when the generator
  is built, and SPADE's style encoder (:class:`dagan.nn.style.StyleEncoder`) as the submodule
  ``encoder``, registered after every other layer. The multimodal contract (z checks, a style
  image encoded inside forward for training, :meth:`encode`) is DAGAN's
  (:class:`dagan.nn.style.LatentStyle`). Without a z the generator uses z = 0, the prior's mean
  (deterministic; the official code samples z ~ N(0, I)).
CC-FPSE has no 3D-noise variant: OASIS's ``noise3d`` belongs to the DAGAN generator only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.condconv import CondConvBlock
from dagan.nn.label_pyramid import LabelPyramid
from dagan.nn.spade import backbone_doublings
from dagan.nn.style import LatentStyle, StyleEncoder

STYLES = ("off", "vae")  # no noise3d: CC-FPSE has no 3D-noise variant


class CCFPSEGenerator(LatentStyle, nn.Module):
    def __init__(
        self,
        semantic_nc: int,
        ngf: int = 64,
        num_upsampling_layers: str = "normal",
        style: str = "off",
        z_dim: int = 256,
        start_size: tuple[int, int] | None = None,
    ):
        """``start_size`` (sh, sw): the 16 ngf map that ``fc`` makes from z; ``vae`` only."""
        super().__init__()
        num_up = backbone_doublings(num_upsampling_layers, ngf)
        self._init_style(style, z_dim, start_size, STYLES)
        self.semantic_nc = semantic_nc
        self.num_up = num_up
        self.extra_middle_up = num_upsampling_layers in ("more", "most")
        start_channels = 16 * ngf
        self.fc: nn.Module
        if self.start_size is not None:  # vae: fc maps z to the start map
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
        # Registered last: the layers above are created (and initialised) as without a style encoder.
        self.encoder = StyleEncoder(ngf, z_dim) if style == "vae" else None

    def _start(self, label_map: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """The 16 ngf map head_0 starts from: fc of z (vae) or of the label map at the start size."""
        height, width = label_map.shape[2:]
        if (reason := self.size_error(height, width)) is not None:
            raise ValueError(f"label map size {height}x{width}: {reason}; resize or crop it")
        z = self._latent(label_map, z)
        factor = 2**self.num_up
        start = (height // factor, width // factor)
        if z is None:
            return self.fc(F.interpolate(label_map, size=start, mode="nearest"))
        return self.fc(z).view(label_map.shape[0], -1, *start)

    def forward(
        self, label_map: torch.Tensor, z: torch.Tensor | None = None, style_image: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]] | tuple[torch.Tensor, tuple]:
        """label_map: (B, semantic_nc, H, W) semantic input -> image (B, 3, H, W) in [-1, 1].

        ``z`` (B, z_dim), ``vae`` only: the latent (None: zeros). ``style_image`` (B, 3, H, W), ``vae``
        only, for training: encoded inside this forward, z sampled from its posterior; then returns
        ``(image, (mu, logvar))`` for the KL term. With ``return_attention`` also returns {} (CC-FPSE
        has no attention maps)."""
        posterior = None
        if style_image is not None:
            z, posterior = self._sampled_from(style_image, z, return_attention)
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
        if posterior is not None:
            return image, posterior
        return (image, {}) if return_attention else image
