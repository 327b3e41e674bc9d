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
