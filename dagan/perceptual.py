"""VGG19 feature extractor for the perceptual loss L_p (paper Eq. 10, lambda_p).

What the network sees (``loss.vgg_input``): ``official`` feeds the generator's [-1, 1] images
as they are, as the official DAGAN/SPADE code does (the paper's numbers were trained so);
``imagenet`` maps them to [0, 1] and normalises them with the ImageNet mean and standard
deviation that torchvision's VGG19 weights were trained with.

The network is injected: ImageNet weights come from a file path, from the torch hub cache,
or (only when online) from torchvision's download (:mod:`dagan.pretrained`). Nothing falls back
to random weights: when no weights are found, the error says where we looked and which config
key turns the loss off.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dagan.pretrained import pretrained_file

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's IMAGENET1K_V1 weights
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
# torchvision vgg19().features indices ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
SLICE_ENDS = (2, 7, 12, 21, 30)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_INPUTS = ("official", "imagenet")


class VGG19Features(nn.Module):
    """Frozen VGG19 slices returning relu1_1..relu5_1 of images in [-1, 1].

    ``vgg_input``: "official" (the images as they are) or "imagenet" (ImageNet-normalised).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, features: nn.Sequential, vgg_input: str = "official"):
        super().__init__()
        if vgg_input not in VGG_INPUTS:
            raise ValueError(f"vgg_input must be one of {VGG_INPUTS}, got {vgg_input!r}")
        self.imagenet_normalised = vgg_input == "imagenet"
        starts = (0, *SLICE_ENDS[:-1])
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in zip(starts, SLICE_ENDS, strict=True))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # always in eval mode

    def for_autocast(self, dtype: torch.dtype | None) -> VGG19Features:
        """Store the frozen conv weights in autocast's ``dtype`` (None: leave them): autocast would cast the
        same float32 weights to the same values at every call, a full pass over the 20M weights each time.
        The outputs are unchanged (the ImageNet normalisation's buffers stay float32)."""
        if dtype is not None:
            self.slices.to(dtype)
        return self

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image + 1) / 2 - self.mean) / self.std if self.imagenet_normalised else image
        outputs = []
        for block in self.slices:
            x = block(x)
            outputs.append(x)
        return outputs


def find_vgg19_weights(weights: str) -> Path:
    """Resolve ``loss.vgg_weights`` to a local file (downloading only when online)."""
    return pretrained_file(VGG19_FILE, VGG19_URL, weights, "loss.vgg_weights",
                           "set loss.lambda_vgg=0 to train without the perceptual loss", progress=True)


def build_vgg19(weights: str, vgg_input: str = "official") -> VGG19Features:
    """VGG19Features with ImageNet weights found by :func:`find_vgg19_weights`."""
    from torchvision.models import vgg19

    network = vgg19(weights=None)
    state = torch.load(find_vgg19_weights(weights), map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return VGG19Features(network.features, vgg_input)
