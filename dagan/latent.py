"""The latent z of a multimodal generator at generation time: the mean, a seed, or a style photo.

A generator trained with ``model.style=vae`` or ``noise3d`` (docs/MULTIMODAL.md) takes one z per
image. At generation time it is chosen by these rules:

* no seed and no style photo: z = 0, the prior's mean. Deterministic: the same label map gives
  the same image every time, which keeps evaluation, serving and scripts exact;
* seed N: z ~ N(0, I) drawn from a CPU ``torch.Generator`` seeded with N, so the same seed gives
  the same z on any machine and device, and different seeds give different images;
* style photo (``vae`` only): (mu, logvar) = the style encoder's posterior of the photo; z = mu
  (the photo's own style) without a seed, z = mu + sigma * eps with eps drawn from seed N (the
  official code's test-time sampling around it) with one.

``model.style=off`` generators take neither; asking for one is an error that says so.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from dagan.generator import uses_style_image
from dagan.nn.style import LatentStyle, reparameterize

MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> int:
    """``seed`` as an int in [0, 2**63 - 1], or a ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed {seed!r} must be an integer in [0, {MAX_SEED}]")
    return int(seed)


def seeded_normal(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 N(0, I) sample of ``shape`` that depends on ``seed`` only (CPU generator)."""
    generator = torch.Generator().manual_seed(check_seed(seed))
    return torch.randn(shape, generator=generator)


def style_photo_tensor(photo: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 photo -> (1, 3, h, w) in [-1, 1] at the model's training image size (h, w).

    Resized bicubic, as preparation resizes training photos; the encoder then resizes to 256x256.
    """
    height, width = size
    image = Image.fromarray(photo)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
    return (array / 127.5 - 1).permute(2, 0, 1)[None]


def choose_latent(generator: nn.Module, seed: int | None = None,
                  style_image: torch.Tensor | None = None) -> torch.Tensor | None:
    """z (1, z_dim) for one image by the rules above; None means the generator's default (z = 0, or none)."""
    if getattr(generator, "style", "off") == "off":  # also CA2SIS generators (no latent z)
        if seed is not None or style_image is not None:
            per_class = ("; this CA2SIS model takes its styles per class from photos instead: --photos DIR or "
                         "--style-image IMAGE --style-label PNG") if uses_style_image(generator) else ""
            raise ValueError("this model was trained with model.style=off and makes one image per label map; a "
                             "seed or style image needs a model trained with model.style=vae (style images) "
                             f"or noise3d (seeds){per_class}")
        return None
    latent = cast(LatentStyle, generator)  # a generator with a style: DAGAN or CC-FPSE
    noise = None if seed is None else seeded_normal(seed, (1, latent.z_dim))
    if style_image is None:
        return noise
    mu, logvar = latent.encode(style_image)
    return mu if noise is None else reparameterize(mu, logvar, noise.to(mu.device, mu.dtype))
