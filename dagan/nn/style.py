"""SPADE's style encoder: a photo -> the Gaussian posterior over the latent style z (multimodal synthesis).

SPADE (Park et al. 2019, section 3.3 "Multi-modal synthesis") trains the generator as the
decoder of a VAE: an image encoder maps the real photo to the mean ``mu`` and log-variance
``logvar`` of a Gaussian over z, the generator starts from a linear map of z (instead of the
down-sampled label map), and a KL term (:func:`dagan.losses.kl_divergence`) pulls the posterior
towards N(0, I). At test time z ~ N(0, I) gives new styles, and the encoded z of a style photo
transfers that photo's look onto another layout. The official DAGAN code keeps SPADE's encoder.

Layout of :class:`StyleEncoder` (the official ``ConvEncoder``, facts in docs/MULTIMODAL.md): the
image resized (bilinear) to 256x256; six 3x3 convs, stride 2, padding 1, of widths ndf, 2ndf,
4ndf, 8ndf, 8ndf, 8ndf, each spectral-normalised, without bias and followed by InstanceNorm
without affine parameters, LeakyReLU 0.2 before every conv but the first and after the last;
then two linear heads from the flattened 8ndf x 4 x 4 map to ``mu`` and ``logvar`` (z_dim each).
The official code sets ndf to the generator's ngf; so does :func:`dagan.generator.build_generator`.
At ndf 64 and z_dim 256 it has 10,463,424 parameters, like the official one.

State-dict keys equal the official encoder's (``latest_net_E.pth``) one to one:

    official (netE)                 here (inside a generator: prefixed with ``encoder.``)
    layer{i}.0.weight_orig          layer{i}.0.weight_orig       i = 1..6, the conv weight
    layer{i}.0.weight_u / weight_v  layer{i}.0.weight_u / weight_v  spectral-norm vectors
    fc_mu.weight / fc_mu.bias       fc_mu.weight / fc_mu.bias
    fc_var.weight / fc_var.bias     fc_var.weight / fc_var.bias

(``layer{i}.1`` is the parameter-free InstanceNorm: no keys.) One difference from the official
code, deliberately not copied: it builds ``layer6`` only when crop_size >= 256 and then its heads
do not fit the 8x8 map (training crashes for smaller crops); here the input is always resized to
256x256 and all six layers always exist.

:class:`LatentStyle` is the latent-z contract that the generators with a style share (DAGAN's
``off | vae | noise3d``, CC-FPSE's ``off | vae``): the checks of z and of the image size, the
encoding of a style photo inside the generator's forward, and :meth:`LatentStyle.encode`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dagan.nn.spectral import spectral_norm

ENCODER_INPUT_SIZE = 256  # the encoder sees every image resized to 256 x 256
ENCODER_MAP_SIZE = 4  # ... which six stride-2 convs reduce to 4 x 4
ENCODER_WIDTHS = (1, 2, 4, 8, 8, 8)  # conv widths in units of ndf


class StyleEncoder(nn.Module):
    """(B, 3, H, W) images in [-1, 1] -> (mu, logvar), each (B, z_dim)."""

    def __init__(self, ndf: int = 64, z_dim: int = 256):
        super().__init__()
        if ndf < 1 or z_dim < 1:
            raise ValueError(f"ndf and z_dim must be >= 1, got ndf={ndf}, z_dim={z_dim}")
        self.z_dim = z_dim
        channels = [3] + [ndf * width for width in ENCODER_WIDTHS]
        for index, (fin, fout) in enumerate(zip(channels[:-1], channels[1:], strict=True), start=1):
            conv = spectral_norm(nn.Conv2d(fin, fout, 3, stride=2, padding=1, bias=False))
            self.add_module(f"layer{index}", nn.Sequential(conv, nn.InstanceNorm2d(fout, affine=False)))
        flat = channels[-1] * ENCODER_MAP_SIZE * ENCODER_MAP_SIZE
        self.fc_mu = nn.Linear(flat, z_dim)
        self.fc_var = nn.Linear(flat, z_dim)

    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer{index}") for index in range(1, len(ENCODER_WIDTHS) + 1)]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"the style encoder takes (B, 3, H, W) RGB images, got shape {tuple(image.shape)}")
        size = (ENCODER_INPUT_SIZE, ENCODER_INPUT_SIZE)
        x = image if image.shape[2:] == size else F.interpolate(image, size=size, mode="bilinear")
        for index, layer in enumerate(self.layers()):
            x = layer(F.leaky_relu(x, 0.2) if index else x)
        x = F.leaky_relu(x, 0.2).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * noise, noise ~ N(0, I) (drawn here from torch's RNG when not given)."""
    std = torch.exp(0.5 * logvar)
    return mu + std * (torch.randn_like(std) if noise is None else noise)


class LatentStyle:
    """Mixin of a generator whose ``style`` (docs/MULTIMODAL.md) gives it a latent z of ``z_dim`` per image.

    The generator calls :meth:`_init_style` in its constructor, sets ``num_up`` and registers
    ``encoder`` (a :class:`StyleEncoder` for ``vae``, else None) after its other layers, so that those
    are created and initialised as without a style. With ``vae`` its first layer maps z to a fixed
    ``start_size`` (sh, sw) map, which fixes the image size (:attr:`image_size`).
    """

    style: str
    z_dim: int
    start_size: tuple[int, int] | None
    num_up: int
    encoder: StyleEncoder | None

    def _init_style(self, style: str, z_dim: int, start_size: tuple[int, int] | None, styles: tuple[str, ...]):
        if style not in styles:
            raise ValueError(f"style must be one of {list(styles)} for {type(self).__name__}, got {style!r}")
        if style != "off" and z_dim < 1:
            raise ValueError(f"style={style!r} needs z_dim >= 1, got {z_dim}")
        if style == "vae" and start_size is None:
            raise ValueError("style='vae' needs start_size (sh, sw): fc maps z to a 16 ngf x sh x sw map")
        self.style = style
        self.z_dim = z_dim if style != "off" else 0
        self.start_size = (start_size[0], start_size[1]) if style == "vae" and start_size is not None else None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the only image size a ``vae`` generator makes; None: any size divisible by 2**num_up."""
        if self.start_size is None:
            return None
        return self.start_size[0] * 2**self.num_up, self.start_size[1] * 2**self.num_up

    def size_error(self, height: int, width: int) -> str | None:
        """Why a label map of this size cannot be generated (None: it can)."""
        factor = 2**self.num_up
        if height % factor or width % factor:
            return f"height and width must be multiples of {factor} (2**{self.num_up} for this num_upsampling_layers)"
        size, start = self.image_size, self.start_size
        if size is not None and start is not None and (height, width) != size:
            return (f"this model.style=vae generator makes {size[0]}x{size[1]} images only "
                    f"(its first layer maps z to a fixed {start[0]}x{start[1]} map)")
        return None

    def _latent(self, label_map: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor | None:
        """z checked, or zeros (the prior's mean) when None; None for a generator without style."""
        if self.style == "off":
            if z is not None:
                raise ValueError("this generator has model.style=off and takes no latent z")
            return None
        batch = label_map.shape[0]
        if z is None:
            return label_map.new_zeros(batch, self.z_dim)
        if z.shape != (batch, self.z_dim):
            raise ValueError(f"z must have shape ({batch}, {self.z_dim}) for this batch, got {tuple(z.shape)}")
        return z.to(label_map.dtype)

    def _sampled_from(self, style_image: torch.Tensor, z: torch.Tensor | None, return_attention: bool
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(z, (mu, logvar)) for training: ``style_image`` encoded (inside the generator's forward, so that DDP
        sees the encoder) and z = mu + sigma * eps drawn from torch's RNG (SPADE's reparameterisation)."""
        if self.encoder is None or z is not None or return_attention:
            raise ValueError("style_image needs a model.style=vae generator, without z or return_attention")
        posterior = self.encoder(style_image)
        return reparameterize(*posterior), posterior

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of the style of ``image`` (B, 3, H, W) in [-1, 1]; ``vae`` generators only."""
        if self.encoder is None:
            raise ValueError(f"this generator has model.style={self.style} and no style encoder; "
                             "style images need a model trained with model.style=vae")
        return self.encoder(image)
