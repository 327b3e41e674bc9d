"""The DAGAN generator: SPADE backbone B + SAM + CAM, summed, then the image head (Fig. 2).

Backbone (DESIGN.md section 1): ``fc`` embeds the label map at (H, W) / 2**num_up, then
head_0, G_middle_0, G_middle_1 (16 ngf), up_0..up_3 (8, 4, 2, 1 ngf) and, with "most",
up_4 (ngf / 2), with nearest x2 upsampling in between (5, 6 or 7 doublings in all).

Attention (paper section 3, Table 4): SAM works on the last backbone feature F; CAM fuses
earlier scales into F~ and reweights channels. The image head (LeakyReLU 0.2 -> 3x3 conv ->
tanh) sees F_s + F_c with both modules, the one module's output with one, F with none (B1).
Works at any ngf, any of normal/more/most, and any input size divisible by 2**num_up.

Optionally a SPAP unit (:mod:`dagan.nn.spap`, model.spap) refines F before SAM, CAM and the head.
:func:`build_generator` builds this generator or, with ``model.generator=ca2sis``, the
cross-attention generator of :mod:`dagan.ca2sis`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.ca2sis import build_ca2sis_generator
from dagan.ccfpse_generator import CCFPSEGenerator
from dagan.config import NUM_UP, Config
from dagan.distributed import unwrap
from dagan.init import init_weights
from dagan.nn.attention import ChannelAttention, SpatialAttention
from dagan.nn.spade import SPADEResBlock
from dagan.nn.spap import SpatialPyramidAttentivePooling


class DAGANGenerator(nn.Module):
    uses_style_image = False  # DAGAN draws no style from a photo (dagan.ca2sis does)

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
    ):
        super().__init__()
        if num_upsampling_layers not in NUM_UP:
            raise ValueError(f"num_upsampling_layers must be one of {list(NUM_UP)}, got {num_upsampling_layers!r}")
        if ngf < 2 or ngf % 2:
            raise ValueError(f"ngf must be an even number >= 2, got {ngf}")
        if cam_sources not in ("official", "all"):
            raise ValueError(f"cam_sources must be 'official' or 'all', got {cam_sources!r}")
        self.num_up = NUM_UP[num_upsampling_layers]
        self.most = num_upsampling_layers == "most"
        self.extra_middle_up = num_upsampling_layers in ("more", "most")

        self.fc = nn.Conv2d(semantic_nc, 16 * ngf, 3, padding=1)
        self.head_0 = SPADEResBlock(16 * ngf, 16 * ngf, semantic_nc)
        self.G_middle_0 = SPADEResBlock(16 * ngf, 16 * ngf, semantic_nc)
        self.G_middle_1 = SPADEResBlock(16 * ngf, 16 * ngf, semantic_nc)
        widths = [16 * ngf, 8 * ngf, 4 * ngf, 2 * ngf, ngf] + ([ngf // 2] if self.most else [])
        self.up_blocks = nn.ModuleList(
            SPADEResBlock(fin, fout, semantic_nc) for fin, fout in zip(widths[:-1], widths[1:], strict=True)
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

    @property
    def semantic_nc(self) -> int:
        return self.fc.in_channels

    def size_error(self, height: int, width: int) -> str | None:
        """Why a label map of this size cannot be generated (None: it can)."""
        factor = 2**self.num_up
        if height % factor or width % factor:
            return f"height and width must be multiples of {factor} (2**{self.num_up} for this num_upsampling_layers)"
        return None

    def _backbone(self, label_map: torch.Tensor) -> list[torch.Tensor]:
        """Return the output of every backbone block (head_0, G_middle_0, G_middle_1, up_*)."""
        height, width = label_map.shape[2:]
        if (reason := self.size_error(height, width)) is not None:
            raise ValueError(f"label map size {height}x{width}: {reason}; resize or crop it")
        # The label map resized (nearest) once per resolution, shared by every SPADE there.
        resized = {(height, width): label_map}

        def label_at(size: tuple[int, int]) -> torch.Tensor:
            if size not in resized:
                resized[size] = F.interpolate(label_map, size=size, mode="nearest")
            return resized[size]

        def run(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return block(x, label_at(tuple(x.shape[2:])))

        factor = 2**self.num_up
        x = self.fc(label_at((height // factor, width // factor)))
        outputs = [run(self.head_0, x)]
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
        self, label_map: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """label_map: (B, semantic_nc, H, W) semantic input -> image (B, 3, H, W) in [-1, 1].

        With ``return_attention`` also returns {"sam": A_s (B,1,H,W), "cam": delta (B,C,1,1),
        "spap": SPAP gates (B,K-1,H,W)} for the modules that exist (paper Fig. 9).
        """
        outputs = self._backbone(label_map)
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
        return (image, attention) if return_attention else image


def build_generator(config: Config, semantic_nc: int, num_label_channels: int | None = None) -> nn.Module:
    """Translate the (resolved) config into the ``model.generator`` network with initialised weights.

    Every generator maps a (B, semantic_nc, H, W) label input to a (B, 3, H, W) image in [-1, 1],
    takes ``return_attention`` (its attention maps, or {}), and has ``semantic_nc`` and ``num_up``.
    ``num_label_channels`` (one-hot class channels, without the instance edge) matters only to
    generators that read classes apart (ca2sis); None takes it from the dataset preset.
    """
    if config.model.generator == "ca2sis":
        return build_ca2sis_generator(config, semantic_nc, num_label_channels)
    if config.model.generator == "ccfpse":
        generator = CCFPSEGenerator(semantic_nc, ngf=config.model.ngf,
                                    num_upsampling_layers=config.model.num_upsampling_layers)
        init_weights(generator, config.model.init_gain, config.model.init_spectral_norm_weights)
        return generator
    use_sam, cam_mode = config.model.attention()
    generator = DAGANGenerator(
        semantic_nc=semantic_nc,
        ngf=config.model.ngf,
        num_upsampling_layers=config.model.num_upsampling_layers,
        use_sam=use_sam,
        sam_kernel_size=config.model.sam_kernel_size,
        cam_mode=cam_mode,
        cam_sources=config.model.cam_sources,
        spap_order=config.model.spap_order if config.model.spap_in("generator") else None,
    )
    init_weights(generator, config.model.init_gain, config.model.init_spectral_norm_weights)
    return generator


def uses_style_image(generator: nn.Module) -> bool:
    """Whether ``generator`` (DDP-wrapped or not) takes its styles from a photo (CA2SIS; not DAGAN)."""
    return getattr(unwrap(generator), "uses_style_image", False)


def run_generator(generator: nn.Module, semantic: torch.Tensor, photo: torch.Tensor | None = None,
                  return_attention: bool = False):
    """``generator(semantic)``, handing ``photo`` on as the style image to generators that take one.

    ``photo`` None lets a style-encoding generator use its class-mean styles (eval mode only).
    """
    options = {"return_attention": True} if return_attention else {}
    if uses_style_image(generator):
        options["style_image"] = photo
    return generator(semantic, **options)
