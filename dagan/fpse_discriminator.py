"""The feature-pyramid semantics-embedding (FPSE) discriminator of CC-FPSE (Liu et al., NeurIPS 2019, s. 3.3).

One discriminator instead of several image scales: a bottom-up encoder of the *image* alone
(five stride-2 3x3 convs, ndf -> 2 -> 4 -> 8 -> 8 ndf, at 1/2 .. 1/32), a top-down pathway
(1x1 lateral convs to 4 ndf, bilinear x2 upsampling, summed) and a 3x3 conv (4 -> 2 ndf) at
each of the levels 1/4, 1/8 and 1/16. At each of those levels the score map is

    logits = conv1x1_{2ndf -> 1}(F) + sum_c( E(s)_c * conv1x1_{2ndf -> 2ndf}(F)_c ),

a real/fake patch score plus the *semantic embedding* term: the label map s is projected to
2 ndf channels by a 1x1 conv E and average-pooled to the level's size, and its inner product
with a per-pixel semantic feature of the image rewards images whose content matches the
layout there (a projection discriminator per pixel). Both 1x1 heads and E are shared by the
three levels. The encoder, lateral and smoothing convs are spectral-normalised without bias,
with instance norm (no affine) and LeakyReLU 0.2; the heads are plain convs with bias.

Feature matching (dagan/losses.py) uses the encoder outputs at 1/4 .. 1/32; as in the official
code each is its own group, so the loss is the mean of their four L1 distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import FPSE_SIZE_MULTIPLE
from dagan.losses import DiscriminatorOutput
from dagan.nn.spectral import spectral_norm

NUM_LEVELS = 5  # stride-2 encoder levels: 1/2 .. 1/32 (FPSE_SIZE_MULTIPLE = 2**NUM_LEVELS)
SCORED_LEVELS = 3  # levels 1/4, 1/8, 1/16 give score maps


def instance_normalized_conv(in_channels: int, out_channels: int, kernel_size: int,
                             stride: int = 1) -> nn.Sequential:
    """Spectral-norm conv (no bias) -> InstanceNorm (no affine) -> LeakyReLU 0.2."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return nn.Sequential(spectral_norm(conv), nn.InstanceNorm2d(out_channels, affine=False), nn.LeakyReLU(0.2))


class FPSEDiscriminator(nn.Module):
    def __init__(self, semantic_nc: int, ndf: int = 64):
        super().__init__()
        widths = [ndf, 2 * ndf, 4 * ndf, 8 * ndf, 8 * ndf]
        inputs = [3, *widths[:-1]]  # the image only; the label map enters through the embedding
        self.bottom_up = nn.ModuleList(
            instance_normalized_conv(fin, fout, 3, stride=2) for fin, fout in zip(inputs, widths, strict=True)
        )
        # lateral[k] projects the encoder output at 1/2**(k+2) (levels 1/4 .. 1/32)
        self.lateral = nn.ModuleList(instance_normalized_conv(width, 4 * ndf, 1) for width in widths[1:])
        # smooth[k] makes the scored feature at 1/2**(k+2) (levels 1/4, 1/8, 1/16)
        self.smooth = nn.ModuleList(instance_normalized_conv(4 * ndf, 2 * ndf, 3) for _ in range(SCORED_LEVELS))
        self.real_fake = nn.Conv2d(2 * ndf, 1, 1)
        self.semantic = nn.Conv2d(2 * ndf, 2 * ndf, 1)
        self.label_embedding = nn.Conv2d(semantic_nc, 2 * ndf, 1)

    def forward(self, semantic: torch.Tensor, image: torch.Tensor) -> DiscriminatorOutput:
        """semantic (B, semantic_nc, H, W), image (B, 3, H, W) -> score maps at 1/4, 1/8, 1/16 and the
        encoder features at 1/4 .. 1/32 (one feature-matching group each)."""
        height, width = image.shape[2:]
        factor = FPSE_SIZE_MULTIPLE
        if height % factor or width % factor or min(height, width) < 2 * factor:
            raise ValueError(f"image size {height}x{width}: the FPSE discriminator needs sides that are multiples "
                             f"of {factor} and at least {2 * factor} (five stride-2 levels with instance norm)")
        encoded = []
        x = image
        for layer in self.bottom_up:
            x = layer(x)
            encoded.append(x)
        merged = [self.lateral[-1](encoded[-1])]  # 1/32, then 1/16, 1/8, 1/4
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(encoded[1:-1]), strict=True):
            upsampled = F.interpolate(merged[-1], scale_factor=2, mode="bilinear", align_corners=False)
            merged.append(upsampled + lateral(feature))
        embedding = F.avg_pool2d(self.label_embedding(semantic), 2)  # 1/2
        logits = []
        for smooth, feature in zip(self.smooth, reversed(merged[1:]), strict=True):  # 1/4, 1/8, 1/16
            embedding = F.avg_pool2d(embedding, 2)
            scored = smooth(feature)
            projection = (embedding * self.semantic(scored)).sum(1, keepdim=True)
            logits.append(self.real_fake(scored) + projection)
        return DiscriminatorOutput(logits=logits, features=[[feature] for feature in encoded[1:]])
