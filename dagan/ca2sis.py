"""CA2SIS: semantic image synthesis with class-adaptive cross-attention (Fontanini et al. 2024).

Instead of SPADE's per-pixel modulation, the generator learns where each class's style goes:

* mask embedder: every channel of the layout, resized (nearest) to 128 x 128, goes through one
  shared linear map to an (H/16, W/16) map, and a 1x1 conv turns the C maps into 16 ngf channels;
* style codes: :class:`dagan.nn.style_encoder.GroupedStyleEncoder` gives every class 5 codes
  (one per scale of the photo) of ``style_dim``, concatenated into one token per class;
* decoder: five residual blocks (16->8 ngf at H/16; then 8->4, 4->2, 2->1, 1->1 ngf, each
  upsampling x2 first, nearest), each followed by a :class:`SpatialCrossAttention` layer over the
  class tokens (8 heads of 64; the last layer 4 heads of 32; self-attention in the first three),
  then a 1x1 conv to RGB and tanh. The output is 16 times the latent size, so the model is built
  for one image size, with sides that are multiples of 64 (the style encoder halves six times).
* attention loss L_att: each layer's head-averaged cross-attention logits, per class, against the
  class mask at that size (binary cross-entropy with logits), averaged over classes and layers
  (:func:`dagan.losses.attention_alignment_loss`; weight ``loss.lambda_att``).

The residual blocks and attention layers follow the official code (a diffusion-model layout: group
norm, SiLU, the second conv and the attention's output conv zero-initialised); the generator keeps
PyTorch's default initialisation, as the official one does. Instance edges (datasets with instance
maps; the official code takes none) enter the mask embedder only. Where the model's styles come from:

* a photo of the scene (``style_image``): training, evaluation (``evaluate.style_from=photo``),
  ``generate --photos``;
* given codes (``style_codes``): per-class style editing (``generate --style-image``);
* neither (eval mode only): each class's mean code over training, kept like BatchNorm's running
  statistics in the buffers ``style_mean`` / ``style_seen`` (chosen here; serving uses it). A class
  never seen in training gets the code of an empty class.

Facts and choices: docs/ATTENTION.md.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from dagan.config import CA2SIS_SIZE_MULTIPLE, Config, resolved_value
from dagan.nn.style_encoder import GroupedStyleEncoder, StyleMappingNetwork
from dagan.nn.transformer import FloatGroupNorm, SpatialCrossAttention, group_count
from dagan.presets import get_preset

MASK_SIDE = 128  # the mask embedder's input side (official)
LATENT_FACTOR = 16  # image side / latent side: four upsampling blocks
STYLE_MEAN_MOMENTUM = 0.01  # running class-mean style codes, updated like BatchNorm's statistics
# (input width factor, output width factor, upsample, heads, head width, self-attention) per decoder stage
STAGES = ((16, 8, False, 8, 64, True), (8, 4, True, 8, 64, True), (4, 2, True, 8, 64, True),
          (2, 1, True, 8, 64, False), (1, 1, True, 4, 32, False))


class ResidualBlock(nn.Module):
    """norm -> SiLU -> [x2] -> 3x3 conv; norm -> SiLU -> 3x3 conv (zero init); + skip ([x2], 1x1 conv
    when the width changes)."""

    def __init__(self, fin: int, fout: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.norm_in = FloatGroupNorm(group_count(fin), fin)
        self.conv_in = nn.Conv2d(fin, fout, 3, padding=1)
        self.norm_out = FloatGroupNorm(group_count(fout), fout)
        self.conv_out = nn.Conv2d(fout, fout, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv_out.bias))
        self.skip = nn.Conv2d(fin, fout, 1) if fin != fout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.norm_in(x))
        if self.upsample:
            hidden = F.interpolate(hidden, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        hidden = self.conv_out(F.silu(self.norm_out(self.conv_in(hidden))))
        return (x if self.skip is None else self.skip(x)) + hidden


class MaskEmbedder(nn.Module):
    """(B, C, H, W) layout -> (B, C, h, w): each channel resized to MASK_SIDE^2 and mapped by one shared linear."""

    def __init__(self, latent_size: tuple[int, int], side: int = MASK_SIDE):
        super().__init__()
        self.latent_size = latent_size
        self.side = side
        self.linear = nn.Linear(side * side, latent_size[0] * latent_size[1])

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(layout, size=(self.side, self.side), mode="nearest").flatten(2)
        return self.linear(resized).view(*layout.shape[:2], *self.latent_size)


class CA2SISGenerator(nn.Module):
    """(semantic input, photo or style codes) -> image in [-1, 1] at ``image_size``."""

    uses_style_image = True
    style_mean: torch.Tensor
    style_seen: torch.Tensor

    def __init__(self, num_label_channels: int, semantic_nc: int, image_size: tuple[int, int], ngf: int = 32,
                 style_dim: int = 256, exclude_background: bool = False, mapping_network: bool = True):
        super().__init__()
        height, width = image_size
        if height % CA2SIS_SIZE_MULTIPLE or width % CA2SIS_SIZE_MULTIPLE:
            raise ValueError(f"CA2SIS needs image sides that are multiples of {CA2SIS_SIZE_MULTIPLE}, "
                             f"got {height}x{width}")
        if semantic_nc not in (num_label_channels, num_label_channels + 1):
            raise ValueError(f"semantic_nc {semantic_nc} must be num_label_channels {num_label_channels} (+1 instance "
                             "edge channel)")
        if ngf < 1:
            raise ValueError(f"ngf must be >= 1, got {ngf}")
        self.num_label_channels = num_label_channels
        self.semantic_nc = semantic_nc
        self.image_size = (height, width)
        self.exclude_background = exclude_background
        self.mask_embedder = MaskEmbedder((height // LATENT_FACTOR, width // LATENT_FACTOR))
        self.style_encoder = GroupedStyleEncoder(num_label_channels, style_dim)
        code_width = self.style_encoder.code_width
        self.mapping_network = None
        if mapping_network:
            self.mapping_network = StyleMappingNetwork(num_label_channels, code_width).requires_grad_(False)
        self.embed = nn.Conv2d(semantic_nc - int(exclude_background), 16 * ngf, 1)
        self.blocks = nn.ModuleList(ResidualBlock(fin * ngf, fout * ngf, up) for fin, fout, up, *_ in STAGES)
        self.attention = nn.ModuleList(
            SpatialCrossAttention(fout * ngf, code_width, heads, head_dim, self_attention)
            for _, fout, _, heads, head_dim, self_attention in STAGES
        )
        self.to_rgb = nn.Conv2d(ngf, 3, 1)
        self.register_buffer("style_mean", torch.zeros(num_label_channels, code_width))
        self.register_buffer("style_seen", torch.zeros(num_label_channels, dtype=torch.bool))

    def size_error(self, height: int, width: int) -> str | None:
        """Why a label map of this size cannot be generated (None: it can)."""
        if (height, width) != self.image_size:
            return (f"this CA2SIS generator makes {self.image_size[0]}x{self.image_size[1]} images only "
                    "(its mask embedder has a fixed size)")
        return None

    def encode_style(self, photo: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Per-class style codes (B, C, code_width) of ``photo`` with its label one-hot ``classes`` (B, C, H, W)."""
        return self.style_encoder(photo, classes)

    def class_mean_styles(self, classes: torch.Tensor) -> torch.Tensor:
        """Codes from the running class means for the classes present in ``classes`` (B, C, H, W). Absent
        classes, and classes never seen in training (which have no mean), get the code of an empty class:
        what the decoder saw for absent classes in training."""
        present = (classes.flatten(2).amax(dim=2) > 0) & self.style_seen  # (B, C)
        empty = self.style_encoder.empty_codes().to(self.style_mean.dtype)
        return torch.where(present[..., None], self.style_mean, empty)

    @torch.no_grad()
    def _track_class_means(self, codes: torch.Tensor, classes: torch.Tensor) -> None:
        present = (classes.flatten(2).amax(dim=2) > 0).to(codes.dtype)  # (B, C)
        count = present.sum(dim=0)
        batch_mean = (codes * present[..., None]).sum(dim=0) / count.clamp(min=1)[:, None]
        momentum = torch.where(self.style_seen, STYLE_MEAN_MOMENTUM, 1.0)[:, None]
        updated = torch.lerp(self.style_mean, batch_mean.float(), momentum)
        seen = count > 0
        self.style_mean.copy_(torch.where(seen[:, None], updated, self.style_mean))
        self.style_seen |= seen

    def styles_for(self, classes: torch.Tensor, style_image: torch.Tensor | None) -> torch.Tensor:
        """The codes the decoder uses: from ``style_image`` (tracked in training) or the class means."""
        if style_image is not None:
            codes = self.encode_style(style_image, classes)
            if self.training:
                self._track_class_means(codes.detach(), classes)
            return codes
        if self.training:
            raise ValueError("training CA2SIS needs the scene's photo (style_image)")
        return self.class_mean_styles(classes)

    def forward(self, label_map: torch.Tensor, return_attention: bool = False,
                style_image: torch.Tensor | None = None, style_codes: torch.Tensor | None = None):
        """label_map (B, semantic_nc, H, W) -> image (B, 3, H, W); with ``return_attention`` also
        {"ca2sis": [per layer, head-averaged cross-attention logits (B, C, h, w)]}."""
        height, width = label_map.shape[2:]
        if (reason := self.size_error(height, width)) is not None:
            raise ValueError(f"label map size {height}x{width}: {reason}")
        classes = label_map[:, : self.num_label_channels]
        codes = self.styles_for(classes, style_image) if style_codes is None else style_codes
        x = self.embed(self.mask_embedder(label_map[:, int(self.exclude_background):]))
        logits = []
        for block, attention in zip(self.blocks, self.attention, strict=True):
            x, layer_logits = attention(block(x), codes.to(x.dtype))
            logits.append(layer_logits)
        image = torch.tanh(self.to_rgb(x))
        return (image, {"ca2sis": logits}) if return_attention else image


def label_channels(config: Config, semantic_nc: int, num_label_channels: int | None) -> int:
    """The label channels of the model's input: given, or from the dataset preset."""
    if num_label_channels is not None:
        return num_label_channels
    preset = get_preset(config.dataset.name)
    if preset.num_classes == 0:
        raise ValueError(f"dataset {config.dataset.name!r} takes its classes from its manifest; pass "
                         "num_label_channels (the manifest's) to build the CA2SIS generator")
    count = preset.num_classes + int(preset.contain_dontcare_label)
    if semantic_nc != count + int(preset.has_instance):
        raise ValueError(f"semantic_nc {semantic_nc} does not fit preset {preset.name!r} ({count} label channels"
                         f"{' + instance edge' if preset.has_instance else ''}); pass num_label_channels")
    return count


def build_ca2sis_generator(config: Config, semantic_nc: int, num_label_channels: int | None = None) -> CA2SISGenerator:
    """Translate the (resolved) config; PyTorch's default initialisation, as the official generator."""
    model = config.model
    return CA2SISGenerator(
        num_label_channels=label_channels(config, semantic_nc, num_label_channels), semantic_nc=semantic_nc,
        image_size=config.image_size(), ngf=resolved_value(model.ngf), style_dim=model.ca2sis_style_dim,
        exclude_background=model.ca2sis_exclude_background, mapping_network=model.ca2sis_mapping_network,
    )
