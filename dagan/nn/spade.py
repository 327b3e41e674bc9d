"""Spatially-adaptive normalisation and the SPADE residual block (the DAGAN backbone B).

The backbone of the paper (section 3, Fig. 2) is the SPADE generator [31]: every block
normalises its features with parameter-free batch norm and re-modulates them with a
per-pixel scale and shift predicted from the label map. Layout facts: docs/MODEL.md, "Backbone".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import NUM_UP
from dagan.nn.conv import Conv2d
from dagan.nn.spectral import spectral_norm

SPADE_HIDDEN = 128  # width of the shared conv that embeds the label map


def backbone_doublings(num_upsampling_layers: str, ngf: int) -> int:
    """The x2 upsamplings of a SPADE backbone (5, 6, 7 for normal / more / most), after checking its arguments."""
    if num_upsampling_layers not in NUM_UP:
        raise ValueError(f"num_upsampling_layers must be one of {list(NUM_UP)}, got {num_upsampling_layers!r}")
    if ngf < 2 or ngf % 2:
        raise ValueError(f"ngf must be an even number >= 2, got {ngf}")
    return NUM_UP[num_upsampling_layers]


class SPADE(nn.Module):
    """out = BN(x) * (1 + gamma(label)) + beta(label), with BN without affine parameters.

    ``gamma`` and ``beta`` come from the label map resized (nearest) to the feature size,
    through a shared 3x3 conv + ReLU and two 3x3 convs. Under DDP the batch norm is
    converted to SyncBatchNorm by :func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`.

    A label map that already has the feature size is used as it is (the generator resizes
    it once per resolution, for speed).
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = SPADE_HIDDEN):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        if label_map.shape[2:] != x.shape[2:]:
            label_map = F.interpolate(label_map, size=x.shape[2:], mode="nearest")
        embedding = self.mlp_shared(label_map)
        # beta + normalized * (1 + gamma): 1 + gamma in place (the conv's backward does not need its output),
        # then one fused multiply-add, two passes over the feature map instead of three
        return torch.addcmul(self.mlp_beta(embedding), normalized, self.mlp_gamma(embedding).add_(1))


class SPADEResBlock(nn.Module):
    """SPADE residual block: shortcut + conv_1(act(norm_1(conv_0(act(norm_0(x)))))).

    fmid = min(fin, fout). The 1x1 learned shortcut (no bias, SPADE-normalised, no
    activation) exists only when fin != fout. All three convs use spectral norm.
    """

    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = spectral_norm(Conv2d(fin, fmid, 3, padding=1))
        self.conv_1 = spectral_norm(Conv2d(fmid, fout, 3, padding=1))
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmid, label_nc)
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, label_map)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, label_map), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, label_map), 0.2))
        return shortcut + dx
