"""The segmentation judge: labels generated images so that mIoU / accuracy can be measured.

The paper (section 4, "Evaluation Metrics", following GauGAN) segments generated images with
pretrained segmenters (DRN-D-105 for Cityscapes, UperNet101 for ADE20K) and compares the
result with the input label map. Two judges are supported:

* our own compact U-Net (:class:`SegmentationNet`), trained on the real training images of the
  prepared dataset (the only option offline, and the default for the synthetic preset);
* a user-supplied pretrained segmenter, TorchScript (``.pt``) or ``torch.export`` (``.pt2``), e.g. an
  exported DRN-D-105, with a JSON label-id mapping from its output classes to the dataset's
  label ids (the paper's protocol).

Both expose ``predict(image) -> label ids`` and ``features(image) -> (B, D)``; the features feed
the judge Fréchet distance (:func:`dagan.eval.metrics.frechet_distance`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dagan.atomic import atomic_write
from dagan.config import Config, ConfigError, JudgeConfig

JUDGE_FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv -> GroupNorm -> ReLU. GroupNorm, not BatchNorm: no running statistics, so the
    judge behaves the same in train and eval mode even after a few hundred steps on small data."""
    groups = 4 if out_channels % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class SegmentationNet(nn.Module):
    """A compact U-Net: ``levels`` encoder stages (width doubling, 2x2 max-pool between) and a
    mirrored decoder with skip connections; a 1x1 head gives ``num_classes`` logits per pixel.
    Inputs are RGB images in [-1, 1] whose sides are divisible by ``2**(levels - 1)``."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, levels: int = 3):
        super().__init__()
        if levels < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"SegmentationNet needs levels, width, num_classes >= 1; got {levels}, {width}, "
                             f"{num_classes}")
        widths = [width * 2**i for i in range(levels)]
        self.levels = levels
        self.num_classes = num_classes
        self.encoders = nn.ModuleList(
            _conv_block(fin, fout) for fin, fout in zip([in_channels, *widths[:-1]], widths, strict=True)
        )
        self.ups = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.decoders = nn.ModuleList(_conv_block(w * 2, w) for w in reversed(widths[:-1]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        factor = 2 ** (self.levels - 1)
        if image.shape[-2] % factor or image.shape[-1] % factor:
            raise ValueError(f"judge input {image.shape[-2]}x{image.shape[-1]} must be divisible by {factor}")
        skips = []
        x = image
        for index, encoder in enumerate(self.encoders):
            x = encoder(x if index == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = self._encode(image)
        x = skips[-1]
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        return self(image).argmax(dim=1)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled bottleneck features (B, width * 2**(levels-1))."""
        return self._encode(image)[-1].mean(dim=(2, 3))


class PretrainedJudge(nn.Module):
    """A TorchScript segmenter whose output classes are mapped to the dataset's label ids.

    ``label_mapping[k]`` is the dataset id of segmenter class ``k``; unmapped classes predict
    -1 (always wrong). Only the dataset ids in the mapping are evaluated (``evaluated_classes``).
    """

    lookup: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, segmenter: nn.Module, label_mapping: dict[int, int], input_norm: str):
        super().__init__()
        self.segmenter = segmenter
        self.input_norm = input_norm
        size = max(label_mapping) + 1
        lookup = torch.full((size,), -1, dtype=torch.long)
        for source, target in label_mapping.items():
            lookup[source] = target
        self.register_buffer("lookup", lookup)
        self.evaluated_classes = sorted(set(label_mapping.values()))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _logits(self, image: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "imagenet":
            image = ((image + 1) / 2 - self.mean) / self.std
        elif self.input_norm == "unit":
            image = (image + 1) / 2
        output = self.segmenter(image)
        return output[0] if isinstance(output, (tuple, list)) else output

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        classes = self._logits(image).argmax(dim=1)
        in_range = classes < self.lookup.numel()
        return torch.where(in_range, self.lookup[classes.clamp(max=self.lookup.numel() - 1)], -1)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Spatially averaged class probabilities (B, segmenter classes)."""
        return self._logits(image).softmax(dim=1).mean(dim=(2, 3))


# Either judge: both have predict(image) and features(image).
Judge = SegmentationNet | PretrainedJudge


def read_label_mapping(path: str) -> dict[int, int]:
    """JSON object {segmenter class id: dataset label id}, e.g. Cityscapes trainId -> labelId."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"judge.pretrained_label_map={path}: no such file; write a JSON object "
                          '{"segmenter class id": dataset label id, ...}')
    try:
        raw = json.loads(file.read_text())
        mapping = {int(k): int(v) for k, v in raw.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: expected a JSON object of integer ids like {{\"0\": 7}}: {err}") from None
    if not mapping or min(mapping) < 0:
        raise ConfigError(f"{path}: the label mapping must be non-empty with segmenter ids >= 0")
    return mapping


def build_judge(config: Config, num_classes: int) -> Judge:
    """Our untrained U-Net from ``config.judge``, or the configured pretrained TorchScript judge."""
    judge = config.judge
    if judge.pretrained:
        return load_pretrained_judge(judge)
    torch.manual_seed(judge.seed)
    return SegmentationNet(3, num_classes, judge.width, judge.levels)


def load_pretrained_judge(judge: JudgeConfig) -> PretrainedJudge:
    if not judge.pretrained:
        raise ConfigError("judge.pretrained is null but the judge is a pretrained segmenter (a judge checkpoint "
                          "made with judge.pretrained set): set judge.pretrained (and judge.pretrained_label_map) "
                          "to its files, or retrain our own judge: python -m components.train_judge")
    path = Path(judge.pretrained)
    if not path.is_file():
        raise FileNotFoundError(
            f"judge.pretrained={judge.pretrained}: no such file. Export the segmenter with torch.jit.script/trace "
            "(.pt) or torch.export (.pt2) and save it there, or set judge.pretrained=null to train our own judge"
        )
    if not judge.pretrained_label_map:
        raise ConfigError("judge.pretrained is set but judge.pretrained_label_map is not: give the JSON file that "
                          "maps the segmenter's class ids to the dataset's label ids")
    if path.suffix == ".pt2":
        segmenter = torch.export.load(str(path)).module()
    else:
        segmenter = torch.jit.load(str(path), map_location="cpu")
    return PretrainedJudge(segmenter, read_label_mapping(judge.pretrained_label_map), judge.pretrained_input)


def train_step(
    judge: nn.Module, optimizer: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor, ignore_index: int
) -> float:
    """One cross-entropy step on real (image, label) pairs; pixels labelled ``ignore_index`` are skipped."""
    judge.train()
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(judge(image), label, ignore_index=ignore_index)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_epoch(
    judge: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict[str, torch.Tensor]],
    ignore_index: int,
    device: torch.device,
) -> float:
    """One pass over ``batches`` (dicts with ``image`` and ``label``); returns the mean loss."""
    losses = [
        train_step(judge, optimizer, batch["image"].to(device), batch["label"].to(device), ignore_index)
        for batch in batches
    ]
    if not losses:
        raise ValueError("the judge's training data yielded no batch")
    return sum(losses) / len(losses)


def save_judge(path: str | Path, judge: nn.Module, config: Config, num_classes: int) -> None:
    """Write the judge checkpoint atomically (our U-Net's weights, or a pointer to the TorchScript file)."""
    if isinstance(judge, SegmentationNet):
        state = {"kind": "unet", "state_dict": judge.state_dict(), "width": config.judge.width,
                 "levels": config.judge.levels}
    else:
        state = {"kind": "torchscript"}
    state.update(format_version=JUDGE_FORMAT_VERSION, num_classes=num_classes, config=config.to_dict())
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_judge(path: str | Path, config: Config) -> Judge:
    """Load a judge written by :func:`save_judge` (weights only), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge checkpoint {path} does not exist; run the train_judge stage first "
                                "(python -m components.train_judge)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format_version") != JUDGE_FORMAT_VERSION:
        raise ValueError(f"{path}: judge format_version {state.get('format_version')!r}, expected "
                         f"{JUDGE_FORMAT_VERSION}; retrain with python -m components.train_judge")
    judge: Judge
    if state["kind"] == "torchscript":
        judge = load_pretrained_judge(config.judge)
    else:
        judge = SegmentationNet(3, state["num_classes"], state["width"], state["levels"])
        judge.load_state_dict(state["state_dict"])
    return judge.eval()


def evaluated_target(judge: Judge, label: torch.Tensor) -> torch.Tensor:
    """The ground truth the judge is scored on: classes it does not evaluate become -1 (ignored)."""
    classes = getattr(judge, "evaluated_classes", None)
    if classes is None:
        return label
    keep = torch.isin(label, torch.tensor(classes, device=label.device))
    return torch.where(keep, label, -1)
