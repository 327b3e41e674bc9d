"""``python -m components.train_judge``: train the segmentation judge on the real training images.

    python -m components.train_judge [--params FILE] [-S key=value ...]

The judge (dagan/eval/judge.py) scores generated images by segmenting them (paper section 4). It
is trained here on the prepared dataset's real ``train`` split and scored on the real ``val``
split: that mIoU / pixel accuracy is the ceiling the generated images are compared with. With
``judge.pretrained`` set, the pretrained segmenter is only scored. Writes into
``judge.out_dir``: ``judge.pt``, ``config.yaml`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from components.cli import entry, load, log, make_parser, run_main
from components.outputs import JUDGE_FILE, write_json
from dagan.config import Config, resolved_value, save_config
from dagan.console import progress_bar
from dagan.data import PairedDataset, read_manifest
from dagan.distributed import resolve_device
from dagan.eval.judge import Judge, SegmentationNet, build_judge, evaluated_target, save_judge, train_epoch
from dagan.eval.metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy

DESCRIPTION = """Train the segmentation judge on the real training photos and score it on the real validation
photos (with judge.pretrained set, only score that segmenter). Writes judge.pt, config.yaml and
metrics.json into judge.out_dir."""

METRICS_FILE = "metrics.json"


def split_loader(config: Config, split: str, train: bool, batch_size: int) -> DataLoader:
    dataset = PairedDataset(config.dataset.prepared_dir, split, crop_size=resolved_value(config.dataset.crop_size),
                            aspect_ratio=resolved_value(config.dataset.aspect_ratio), train=train,
                            flip=train and config.dataset.flip, seed=config.judge.seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=config.dataset.num_workers,
                      generator=torch.Generator().manual_seed(config.judge.seed))


@torch.no_grad()
def score_judge(
    judge: Judge, batches: Iterable[dict], num_classes: int, device: torch.device
) -> torch.Tensor:
    """Confusion matrix of the judge on real (image, label) batches."""
    judge.eval()
    matrix = None
    for batch in batches:
        label = batch["label"].to(device)
        counts = confusion_matrix(judge.predict(batch["image"].to(device)), evaluated_target(judge, label), num_classes)
        matrix = counts if matrix is None else matrix + counts
    if matrix is None:
        raise ValueError("the validation split yielded no batch")
    return matrix


def _counted(batches: Iterable[dict], bar) -> Iterator[dict]:
    """``batches``, advancing the progress bar (if any) by one per batch."""
    for batch in batches:
        yield batch
        if bar is not None:
            bar.update(1)


def _run(config: Config) -> int:
    out_dir = Path(config.judge.out_dir)
    manifest = read_manifest(config.dataset.prepared_dir)
    device = resolve_device(config.judge.device, key="judge.device")
    judge = build_judge(config, manifest.num_classes).to(device)
    losses: list[float] = []
    if isinstance(judge, SegmentationNet):
        loader = split_loader(config, "train", train=True, batch_size=config.judge.batch_size)
        optimizer = torch.optim.Adam(judge.parameters(), lr=config.judge.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.judge.epochs)
        bar = progress_bar(config.judge.epochs * len(loader), desc="judge", unit="batch")
        for epoch in range(config.judge.epochs):
            losses.append(train_epoch(judge, optimizer, _counted(loader, bar), ignore_index=manifest.num_classes,
                                      device=device))
            schedule.step()
            if bar is not None:
                bar.set_postfix_str(f"epoch {epoch + 1} loss {losses[-1]:.4f}")
            log.log(logging.DEBUG if bar else logging.INFO, "judge epoch %d/%d: loss %.4f", epoch + 1,
                    config.judge.epochs, losses[-1])
        if bar is not None:
            bar.close()
    val_loader = split_loader(config, "val", train=False, batch_size=config.judge.batch_size)
    matrix = score_judge(judge, val_loader, manifest.num_classes, device)
    iou = per_class_iou(matrix)
    metrics = {
        "judge_miou_real_val": mean_iou(matrix),
        "judge_accuracy_real_val": pixel_accuracy(matrix),
        "judge_kind": "pretrained" if config.judge.pretrained else "trained",
        "epochs": len(losses),
        "final_loss": losses[-1] if losses else None,
        "per_class_iou": {name: (None if torch.isnan(v) else float(v))
                          for name, v in zip(manifest.class_names, iou, strict=False)},
    }
    save_judge(out_dir / JUDGE_FILE, judge.cpu(), config, manifest.num_classes)
    save_config(config, out_dir / "config.yaml")
    write_json(out_dir / METRICS_FILE, metrics)
    log.info("judge on real %s images: mIoU %.4f, pixel accuracy %.4f -> %s", "val",
             metrics["judge_miou_real_val"], metrics["judge_accuracy_real_val"], out_dir / JUDGE_FILE)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser("components.train_judge", DESCRIPTION).parse_args(argv)
    return run_main(args, lambda: _run(load(args)))


if __name__ == "__main__":
    entry(main)
