"""A quick judge evaluation of a generator during training, on a few fixed validation batches.

Sweeps (components/tune.py) score every trial periodically so that ASHA can stop the weak ones
early. The score is the evaluation protocol of :mod:`dagan.eval.protocol` (paper section 4) cut
down to what is cheap to repeat: the judge's mIoU and pixel accuracy on the generated images,
and the Fréchet distance in the judge's features (``fd_judge``, not FID) between generated and
real images. The batches, the targets and the real images' features are computed once; each
evaluation then costs one generator and one judge pass per batch. Use it with the same batches
for every trial, so the numbers compare across trials. A style-encoding generator (CA2SIS) gets
each scene's photo or nothing (class-mean styles), as in :func:`dagan.eval.protocol.evaluate_generator`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from dagan.eval.judge import Judge, evaluated_target
from dagan.eval.metrics import confusion_matrix, frechet_distance, mean_iou, pixel_accuracy
from dagan.eval.protocol import style_photo
from dagan.generator import run_generator
from dagan.labels import semantic_input


class JudgeProbe:
    """``probe(generator) -> {judge_miou, judge_accuracy, fd_judge}`` on fixed validation batches."""

    @torch.no_grad()
    def __init__(self, judge: Judge, batches: Iterable[dict[str, torch.Tensor]], *, num_classes: int,
                 num_label_channels: int, device: torch.device, style_from: str = "photo"):
        self.judge = judge.to(device).eval()
        self.num_classes = num_classes
        self.device = device
        self.inputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.style_images: list[torch.Tensor | None] = []
        real_features = []
        for batch in batches:
            label = batch["label"].to(device)
            instance = batch["instance"].to(device) if "instance" in batch else None
            self.inputs.append(semantic_input(label, num_label_channels, instance))
            self.targets.append(evaluated_target(self.judge, label))
            photo = batch["image"].to(device)
            self.style_images.append(style_photo(photo, style_from))
            real_features.append(self.judge.features(photo).cpu())
        if not self.inputs:
            raise ValueError("the validation split yielded no batch for the judge probe")
        self.real_features = torch.cat(real_features)
        if self.real_features.shape[0] < 2:
            raise ValueError("the judge probe needs at least 2 validation images (a Fréchet distance needs a "
                             "covariance); raise tune.eval_batches or evaluate.batch_size")

    @torch.no_grad()
    def __call__(self, generator: nn.Module) -> dict[str, float]:
        was_training = generator.training
        generator.eval()
        try:
            matrix = None
            features = []
            for semantic, target, style_image in zip(self.inputs, self.targets, self.style_images, strict=True):
                fake = run_generator(generator, semantic, style_image)
                counts = confusion_matrix(self.judge.predict(fake), target, self.num_classes)
                matrix = counts if matrix is None else matrix + counts
                features.append(self.judge.features(fake).cpu())
        finally:
            generator.train(was_training)
        assert matrix is not None  # __init__ refused a probe without batches
        return {"judge_miou": mean_iou(matrix), "judge_accuracy": pixel_accuracy(matrix),
                "fd_judge": frechet_distance(self.real_features, torch.cat(features))}
