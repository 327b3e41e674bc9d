"""How varied a multimodal generator's images are: K samples of the same label map, compared pairwise.

For a generator trained with ``model.style=vae|noise3d`` (docs/MULTIMODAL.md) every label map of
the evaluation split is generated K more times with z ~ N(0, I) drawn from a fixed seed (the same
samples on every run and device). Two scores, the mean over all K(K-1)/2 pairs of samples of the
same label map and over all label maps:

* ``diversity_judge``: the L2 distance between the judge's features of the two samples (always);
* ``diversity_lpips``: LPIPS between them (when LPIPS is available), the diversity measure of
  BicycleGAN, CC-FPSE and OASIS.

Higher means more varied images; 0 means one image per label map. The meter also keeps the K
samples of the first label maps for the sample grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from dagan.eval.judge import Judge
from dagan.latent import seeded_normal
from dagan.nn.style import LatentStyle, reparameterize

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # two (B, ...) batches -> (B,) distances


def is_multimodal(generator: nn.Module) -> bool:
    return getattr(generator, "style", "off") != "off"


def pairwise_mean(samples: list[torch.Tensor], distance: Distance) -> torch.Tensor:
    """Per label map, the mean distance over every pair of its K samples: (B,) from K tensors (B, ...)."""
    pairs = [distance(samples[i], samples[j]) for i in range(len(samples)) for j in range(i + 1, len(samples))]
    return torch.stack(pairs).mean(dim=0)


def seeded_samples(generator: nn.Module, semantic: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """(B, K, 3, H, W): K images per label map, z ~ N(0, I) drawn from ``seed`` (the same on every device)."""
    z_dim = cast(LatentStyle, generator).z_dim  # a multimodal (DAGAN or CC-FPSE) generator
    z = seeded_normal(seed, (num_samples, semantic.shape[0], z_dim)).to(semantic.device)
    return torch.stack([generator(semantic, z[k]) for k in range(num_samples)], dim=1)


def real_photo_latent(generator: nn.Module, real: torch.Tensor, seed: int) -> torch.Tensor:
    """z = mu + sigma * eps of each real photo's encoded style (the official test-time z of a vae model)."""
    mu, logvar = cast(LatentStyle, generator).encode(real)  # a vae generator
    return reparameterize(mu, logvar, seeded_normal(seed, tuple(mu.shape)).to(mu.device, mu.dtype))


class DiversityMeter:
    """Accumulates the diversity scores batch by batch; :meth:`metrics` gives their means."""

    def __init__(self, generator: nn.Module, judge: Judge, lpips: Distance | None, num_samples: int,
                 seed: int = 0):
        if num_samples < 2:
            raise ValueError(f"the diversity score needs at least 2 samples per label map, got {num_samples}")
        self.generator, self.judge, self.lpips = generator, judge, lpips
        self.num_samples, self.seed = num_samples, seed
        self.distances: dict[str, list[torch.Tensor]] = {"judge": [], "lpips": []}
        self.kept: list[torch.Tensor] = []
        self.batches = 0

    @torch.no_grad()
    def add(self, semantic: torch.Tensor, keep: int) -> None:
        """Score the label maps of one batch; keep the samples of its first ``keep`` label maps."""
        variants = seeded_samples(self.generator, semantic, self.num_samples, self.seed + self.batches)
        self.batches += 1
        samples = list(variants.unbind(1))
        features = [self.judge.features(image) for image in samples]
        self.distances["judge"].append(pairwise_mean(features, lambda a, b: (a - b).norm(dim=1)).cpu())
        if self.lpips is not None:
            self.distances["lpips"].append(pairwise_mean(samples, self.lpips).cpu())
        self.kept.append(variants[:keep].cpu())

    def metrics(self) -> dict[str, float]:
        return {f"diversity_{name}": float(torch.cat(values).mean()) for name, values in self.distances.items()
                if values}

    def samples(self) -> torch.Tensor:
        """(N, K, 3, H, W): the kept samples."""
        return torch.cat(self.kept)
