"""FID and LPIPS with the standard pretrained networks, or a recorded reason why not.

FID (paper section 4) is the Fréchet distance (:func:`dagan.eval.metrics.frechet_distance`) between
the 2048-d pool features of the standard FID Inception network (the TensorFlow 2015-12-05
weights, as ported by torch-fidelity) on real and generated images. LPIPS is torch-fidelity's
VGG16 LPIPS between each generated image and its real counterpart.

The weights never come with the code. They are looked up in the torch hub cache
(``<torch hub dir>/checkpoints``; ``TORCH_HOME`` moves it) or at an explicit path, and fetched
only when the config allows it and the network is reachable. When they are not there the
metric is *unavailable*: :class:`MetricUnavailableError` says which file, where we looked and
which config key turns the metric off; the evaluation records that reason instead of a number.
Nothing falls back to random weights. Every file is checked with ``torch.load(weights_only=True)``
before torch-fidelity (which loads with ``weights_only=False``) reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dagan.pretrained import MissingPretrainedWeightsError, pretrained_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
LPIPS_FILE = "weights-vgg16-lpips.pth"
LPIPS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{LPIPS_FILE}"
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16 IMAGENET1K_V1, LPIPS's backbone
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"


class MetricUnavailableError(MissingPretrainedWeightsError):
    """A metric's pretrained network (or its library) is not on this machine; the message says why."""


def unavailable_record(reason: str) -> dict[str, str]:
    """What the evaluation records instead of a number."""
    return {"status": "unavailable", "reason": reason}


def find_weights(file_name: str, url: str, explicit: str, download: bool, off_key: str, key: str = "") -> Path:
    """Resolve one pretrained file (:func:`dagan.pretrained.pretrained_file`) and check it holds plain weights."""
    return _checked(pretrained_file(
        file_name, url, explicit, key, f"set {off_key}", None if download else "evaluate.download_weights=false",
        MetricUnavailableError,
    ))


def _checked(path: Path) -> Path:
    """Refuse files that are not plain weights (anything torch.load(weights_only=True) rejects)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure (UnpicklingError, RuntimeError, EOFError...) means: refuse it
        raise MetricUnavailableError(
            f"{path} is not a plain weights file loadable with weights_only=True: {err}"
        ) from None
    return path


def _torch_fidelity():
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MetricUnavailableError(
            "the torch-fidelity package is not installed (pip install torch-fidelity==0.4.0); "
            "set evaluate.fid=off and evaluate.lpips=off to skip FID and LPIPS"
        ) from None
    return torch_fidelity


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255] (what the FID/LPIPS networks were defined on)."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionFeatures(nn.Module):
    """The standard FID Inception network: images in [-1, 1] -> (B, 2048) pool features."""

    def __init__(self, weights_path: Path):
        super().__init__()
        _torch_fidelity()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_path)
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        (features,) = self.network(to_uint8(image))
        return features


class LPIPSDistance(nn.Module):
    """torch-fidelity's VGG16 LPIPS: two image batches in [-1, 1] -> (B,) distances."""

    def __init__(self):
        super().__init__()
        _torch_fidelity()
        from torch_fidelity.sample_similarity_lpips import SampleSimilarityLPIPS

        self.network = SampleSimilarityLPIPS("lpips-vgg16", sample_similarity_resize=None)

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        return self.network(to_uint8(image_a), to_uint8(image_b)).reshape(-1)


def build_inception(weights: str, download: bool) -> InceptionFeatures:
    """``evaluate.fid_weights`` -> the FID Inception network, or MetricUnavailableError."""
    _torch_fidelity()
    path = find_weights(INCEPTION_FILE, INCEPTION_URL, weights, download, "evaluate.fid=off", "evaluate.fid_weights")
    return InceptionFeatures(path).eval()


def build_lpips(download: bool) -> LPIPSDistance:
    """LPIPS (VGG16) from the torch hub cache, or MetricUnavailableError."""
    _torch_fidelity()
    for file_name, url in ((VGG16_FILE, VGG16_URL), (LPIPS_FILE, LPIPS_URL)):
        find_weights(file_name, url, "auto", download, "evaluate.lpips=off")
    return LPIPSDistance().eval()


def load_optional_metric(mode: str, builder: Callable[[], nn.Module]) -> tuple[nn.Module | None, str | None]:
    """Apply ``evaluate.fid`` / ``evaluate.lpips``: (network, None), (None, reason) or raise.

    ``off`` -> (None, "off: ..."); ``auto`` -> the reason when unavailable; ``required`` -> the
    MetricUnavailableError propagates and the stage stops.
    """
    if mode == "off":
        return None, "off in the config"
    try:
        return builder(), None
    except MetricUnavailableError as err:
        if mode == "required":
            raise
        return None, str(err)
