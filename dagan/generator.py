"""The DAGAN generator: SPADE backbone B + SAM + CAM, summed, then the image head (Fig. 2).

Backbone (docs/MODEL.md, "Backbone"): ``fc`` embeds the label map at (H, W) / 2**num_up, then
head_0, G_middle_0, G_middle_1 (16 ngf), up_0..up_3 (8, 4, 2, 1 ngf) and, with "most",
up_4 (ngf / 2), with nearest x2 upsampling in between (5, 6 or 7 doublings in all).

Attention (paper section 3, Table 4): SAM works on the last backbone feature F; CAM fuses
earlier scales into F~ and reweights channels. The image head (LeakyReLU 0.2 -> 3x3 conv ->
tanh) sees F_s + F_c with both modules, the one module's output with one, F with none (B1).
Works at any ngf, any of normal/more/most, and any input size divisible by 2**num_up.

Optionally a SPAP unit (:mod:`dagan.nn.spap`, model.spap) refines F before SAM, CAM and the head.
:func:`build_generator` builds this generator or, with ``model.generator=ccfpse`` / ``ca2sis``,
CC-FPSE's generator (:mod:`dagan.ccfpse_generator`) or the cross-attention generator of
:mod:`dagan.ca2sis`.

Multimodal synthesis (``style``, docs/MULTIMODAL.md) takes a latent z of ``z_dim`` per image:
* ``vae`` (SPADE, section 3.3): ``fc`` is a linear map z -> 16 ngf x sh x sw (one fixed start
  size, hence one image size, as in the official code), and the style encoder
  (:class:`dagan.nn.style.StyleEncoder`) is the submodule ``encoder``, so that EMA, DDP, G's
  optimiser and checkpoints carry it with the generator;
* ``noise3d`` (OASIS): z broadcast over the image and concatenated in front of the label map,
  for ``fc`` and every SPADE (which then see semantic_nc + z_dim channels).
Without a z the generator uses z = 0, the prior's mean: the output stays deterministic. The
z checks, the fixed size and the style encoding are :class:`dagan.nn.style.LatentStyle`, which
the CC-FPSE generator shares (``vae`` only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dagan.ca2sis import build_ca2sis_generator
from dagan.ccfpse_generator import CCFPSEGenerator
from dagan.config import NUM_UP, Config, resolved_value
from dagan.distributed import unwrap
from dagan.init import init_weights
from dagan.nn.attention import ChannelAttention, SpatialAttention
from dagan.nn.spade import SPADEResBlock, backbone_doublings
from dagan.nn.spap import SpatialPyramidAttentivePooling
from dagan.nn.style import LatentStyle, StyleEncoder

STYLES = ("off", "vae", "noise3d")


class DAGANGenerator(LatentStyle, nn.Module):
    uses_style_image = False  # DAGAN takes no per-class styles from a photo (dagan.ca2sis does)

    def __init__(
        self,
        semantic_nc: int,
        ngf: int = 64,
        num_upsampling_layers: str = "normal",
        use_sam: bool = True,
        sam_kernel_size: int = 3,
        cam_mode: str = "II",
        cam_sources: str = "official",
        spap_order: str | None = None,
        style: str = "off",
        z_dim: int = 256,
        start_size: tuple[int, int] | None = None,
    ):
        """``start_size`` (sh, sw): the 16 ngf map that ``fc`` makes from z; ``vae`` only."""
        super().__init__()
        num_up = backbone_doublings(num_upsampling_layers, ngf)
        if cam_sources not in ("official", "all"):
            raise ValueError(f"cam_sources must be 'official' or 'all', got {cam_sources!r}")
        self._init_style(style, z_dim, start_size, STYLES)
        self.ngf = ngf
        self.num_up = num_up
        self.most = num_upsampling_layers == "most"
        self.extra_middle_up = num_upsampling_layers in ("more", "most")

        self.semantic_nc = semantic_nc
        label_nc = semantic_nc + (z_dim if style == "noise3d" else 0)  # what fc and every SPADE see
        self.fc: nn.Module
        if self.start_size is not None:  # vae: fc maps z to the start map
            self.fc = nn.Linear(z_dim, 16 * ngf * self.start_size[0] * self.start_size[1])
        else:
            self.fc = nn.Conv2d(label_nc, 16 * ngf, 3, padding=1)
        self.head_0 = SPADEResBlock(16 * ngf, 16 * ngf, label_nc)
        self.G_middle_0 = SPADEResBlock(16 * ngf, 16 * ngf, label_nc)
        self.G_middle_1 = SPADEResBlock(16 * ngf, 16 * ngf, label_nc)
        widths = [16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf] + ([ngf // 2] if self.most else [])
        self.up_blocks = nn.ModuleList(
            SPADEResBlock(fin, fout, label_nc) for fin, fout in zip(widths[:-1], widths[1:], strict=True)
        )
        out_channels = widths[-1]
        self.spap = SpatialPyramidAttentivePooling(out_channels, spap_order) if spap_order else None
        self.sam = SpatialAttention(sam_kernel_size) if use_sam else None
        self.cam = None
        if cam_mode != "off":
            # Outputs of every backbone block before the last: head_0, G_middle_0/1, up_0.. .
            earlier = [16 * ngf] * 3 + widths[1:-1]
            sources = earlier[-1:] if cam_sources == "official" else earlier
            self.cam = ChannelAttention(out_channels, sources, cam_mode)
        self.conv_img = nn.Conv2d(out_channels, 3, 3, padding=1)
        # Registered last: the layers above are created (and initialised) as without a style encoder.
        self.encoder = StyleEncoder(ngf, z_dim) if style == "vae" else None

    def _first_map(self, z: torch.Tensor | None, label_at: Callable[[tuple[int, int]], torch.Tensor],
                   size: tuple[int, int]) -> torch.Tensor:
        """The 16 ngf map head_0 starts from: fc of z (vae) or of the conditioning map at the start size."""
        factor = 2**self.num_up
        start = (size[0] // factor, size[1] // factor)
        if self.style == "vae":
            return self.fc(z).view(-1, 16 * self.ngf, *start)
        return self.fc(label_at(start))

    def _backbone(self, label_map: torch.Tensor, z: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Return the output of every backbone block (head_0, G_middle_0, G_middle_1, up_*)."""
        height, width = label_map.shape[2:]
        if (reason := self.size_error(height, width)) is not None:
            raise ValueError(f"label map size {height}x{width}: {reason}; resize or crop it")
        z = self._latent(label_map, z)
        size = (height, width)
        if self.style == "noise3d" and z is not None:  # OASIS: z broadcast over the image, before the labels
            label_map = torch.cat([z[:, :, None, None].expand(-1, -1, *size), label_map], 1)
        label_at = resizer(label_map)

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return block(x, label_at((x.shape[2], x.shape[3])))

        outputs = [run(self.head_0, self._first_map(z, label_at, size))]
        x = F.interpolate(outputs[-1], scale_factor=2, mode="nearest")
        outputs.append(run(self.G_middle_0, x))
        x = outputs[-1]
        if self.extra_middle_up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        outputs.append(run(self.G_middle_1, x))
        for block in self.up_blocks:
            x = F.interpolate(outputs[-1], scale_factor=2, mode="nearest")
            outputs.append(run(block, x))
        return outputs

    def forward(
        self, label_map: torch.Tensor, z: torch.Tensor | None = None, style_image: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]] | tuple[torch.Tensor, tuple]:
        """label_map: (B, semantic_nc, H, W) semantic input -> image (B, 3, H, W) in [-1, 1].

        ``z`` (B, z_dim): the latent of a multimodal generator (None: zeros). ``style_image``
        (B, 3, H, W), ``vae`` only, for training: encoded inside this forward (so DDP sees the
        encoder), z = mu + sigma * eps (SPADE's reparameterisation, torch's RNG); then returns
        ``(image, (mu, logvar))`` for the KL term. With ``return_attention`` returns
        ``(image, {"sam": A_s (B,1,H,W), "cam": delta (B,C,1,1), "spap": SPAP gates (B,K-1,H,W)})``
        for the modules that exist (paper Fig. 9).
        """
        posterior = None
        if style_image is not None:
            z, posterior = self._sampled_from(style_image, z, return_attention)
        outputs = self._backbone(label_map, z)
        attention: dict[str, torch.Tensor] = {}
        if self.spap is not None:
            outputs[-1], attention["spap"] = self.spap(outputs[-1])
        feature = outputs[-1]
        branches = []
        if self.sam is not None:
            spatial, attention["sam"] = self.sam(feature)
            branches.append(spatial)
        if self.cam is not None:
            sources = outputs[-2:-1] if self.cam.source_convs is None else outputs[:-1]
            channel, attention["cam"] = self.cam(feature, sources)
            branches.append(channel)
        combined = sum(branches[1:], branches[0]) if branches else feature
        image = torch.tanh(self.conv_img(F.leaky_relu(combined, 0.2)))
        if posterior is not None:
            return image, posterior
        return (image, attention) if return_attention else image


def resizer(label_map: torch.Tensor) -> Callable[[tuple[int, int]], torch.Tensor]:
    """size -> ``label_map`` resized (nearest) to it, computed once per size and shared by every SPADE there."""
    resized = {tuple(label_map.shape[2:]): label_map}

    def label_at(size: tuple[int, int]) -> torch.Tensor:
        if size not in resized:
            resized[size] = F.interpolate(label_map, size=size, mode="nearest")
        return resized[size]

    return label_at


def latent_map_size(config: Config) -> tuple[int, int]:
    """(sh, sw) of the training image size: sw = crop_size / 2**num_up, sh = round(sw / aspect_ratio)."""
    width = resolved_value(config.dataset.crop_size) // 2 ** NUM_UP[resolved_value(config.model.num_upsampling_layers)]
    return round(width / resolved_value(config.dataset.aspect_ratio)), width


def _latent_arguments(config: Config) -> dict:
    """style, z_dim and start_size of a generator with a latent (DAGAN, CC-FPSE) from the (resolved) config."""
    style = config.model.style
    return {"style": style, "z_dim": config.model.z_dim or 0,
            "start_size": latent_map_size(config) if style == "vae" else None}


def build_generator(config: Config, semantic_nc: int, num_label_channels: int | None = None) -> nn.Module:
    """Translate the (resolved) config into the ``model.generator`` network with initialised weights.

    Every generator maps a (B, semantic_nc, H, W) label input to a (B, 3, H, W) image in [-1, 1],
    takes ``return_attention`` (its attention maps, or {}), and has ``semantic_nc`` and ``size_error``
    (docs/ARCHITECTURE.md, "Networks", has the call contract of each family). ``num_label_channels``
    (one-hot class channels, without the instance edge) matters only to generators that read classes
    apart (ca2sis); None takes it from the preset.
    """
    if config.model.generator == "ca2sis":
        return build_ca2sis_generator(config, semantic_nc, num_label_channels)
    generator: nn.Module
    if config.model.generator == "ccfpse":
        generator = CCFPSEGenerator(semantic_nc, ngf=resolved_value(config.model.ngf),
                                    num_upsampling_layers=resolved_value(config.model.num_upsampling_layers),
                                    **_latent_arguments(config))
        init_weights(generator, config.model.init_gain, config.model.init_spectral_norm_weights)
        return generator
    use_sam, cam_mode = config.model.attention()
    generator = DAGANGenerator(
        semantic_nc=semantic_nc,
        ngf=resolved_value(config.model.ngf),
        num_upsampling_layers=resolved_value(config.model.num_upsampling_layers),
        use_sam=use_sam,
        sam_kernel_size=config.model.sam_kernel_size,
        cam_mode=cam_mode,
        cam_sources=config.model.cam_sources,
        spap_order=config.model.spap_order if config.model.spap_in("generator") else None,
        **_latent_arguments(config),
    )
    init_weights(generator, config.model.init_gain, config.model.init_spectral_norm_weights)
    return generator


def uses_style_image(generator: nn.Module) -> bool:
    """Whether ``generator`` (DDP-wrapped or not) takes per-class styles from a photo (CA2SIS; not DAGAN)."""
    return getattr(unwrap(generator), "uses_style_image", False)


def run_generator(generator: nn.Module, semantic: torch.Tensor, photo: torch.Tensor | None = None,
                  return_attention: bool = False):
    """``generator(semantic)``, handing ``photo`` on as the style image to generators that take one.

    ``photo`` None lets a style-encoding generator use its class-mean styles (eval mode only).
    """
    options: dict[str, Any] = {"return_attention": True} if return_attention else {}
    if uses_style_image(generator):
        options["style_image"] = photo
    return generator(semantic, **options)
