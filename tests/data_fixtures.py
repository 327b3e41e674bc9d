"""Tiny raw datasets in each real layout (Cityscapes nested and flattened, ADE20K, CelebAMask-HQ,
CMP Facades, COCO-Stuff, DeepFashion, custom), built from small random PNG/JPEG files for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 48, 32  # raw size of every fixture sample (width x height)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode)
    image.save(path)
    return path


def photo(rng: np.random.Generator, width: int = W, height: int = H) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def label(rng: np.random.Generator, values: list[int], width: int = W, height: int = H) -> np.ndarray:
    cells = rng.integers(0, len(values), (height // 4, width // 4))
    return np.asarray(values, np.uint8)[cells].repeat(4, 0).repeat(4, 1)


def instance(lbl: np.ndarray) -> np.ndarray:
    ids = lbl.astype(np.uint16)
    ids[lbl >= 24] = lbl[lbl >= 24].astype(np.uint16) * 1000 + 1  # Cityscapes-style object ids
    return ids


def cityscapes_nested(root: Path, rng: np.random.Generator, test_labels: bool = True) -> Path:
    for split, city, count in (("train", "aachen", 3), ("val", "frankfurt", 2)):
        for i in range(count):
            stem = f"{city}_{i:06d}_000019"
            lbl = label(rng, [0, 7, 11, 23, 24, 26, 34])
            save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", photo(rng))
            save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lbl)
            save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", instance(lbl))
            save(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", photo(rng))  # ignored
    if test_labels:
        lbl = label(rng, [7, 26])
        save(root / "gtFine" / "test" / "berlin" / "berlin_000000_000019_gtFine_labelIds.png", lbl)
        save(root / "gtFine" / "test" / "berlin" / "berlin_000000_000019_gtFine_instanceIds.png", instance(lbl))
    return root


def cityscapes_flat(root: Path, rng: np.random.Generator) -> Path:
    for split, count, with_photos in (("train", 3, True), ("test", 2, False)):
        for i in range(count):
            stem = f"aachen_{i:06d}_000019"
            lbl = label(rng, [1, 7, 21, 26, 33])
            if with_photos:
                save(root / f"{split}_img" / f"{stem}_leftImg8bit.png", photo(rng))
            save(root / f"{split}_label" / f"{stem}_gtFine_labelIds.png", lbl)
            save(root / f"{split}_inst" / f"{stem}_gtFine_instanceIds.png", instance(lbl))
    return root


def ade20k(root: Path, rng: np.random.Generator) -> Path:
    base = root / "ADEChallengeData2016"
    for raw_split, prefix, count in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(count):
            stem = f"{prefix}_{i + 1:08d}"
            save(base / "images" / raw_split / f"{stem}.jpg", photo(rng))
            save(base / "annotations" / raw_split / f"{stem}.png", label(rng, [0, 1, 3, 150]))
    return root


def celebamask_hq(root: Path, rng: np.random.Generator, count: int = 4) -> Path:
    base = root / "CelebAMask-HQ"
    for n in range(count):
        save(base / "CelebA-HQ-img" / f"{n}.jpg", photo(rng, 64, 64))  # photos at twice the mask size
        skin = np.zeros((32, 32), np.uint8)
        skin[4:28, 6:26] = 255
        nose = np.zeros((32, 32), np.uint8)
        nose[12:18, 14:18] = 255
        hair = np.zeros((32, 32), np.uint8)
        hair[0:6, :] = 255
        for part, mask in (("skin", skin), ("nose", nose), ("hair", hair)):
            save(base / "CelebAMask-HQ-mask-anno" / str(n // 2000) / f"{n:05d}_{part}.png", mask)
    return root


def facades(root: Path, rng: np.random.Generator) -> Path:
    for folder, prefix, count in (("base", "cmp_b", 3), ("extended", "cmp_x", 2)):
        for i in range(count):
            stem = f"{prefix}{i + 1:04d}"
            save(root / folder / f"{stem}.jpg", photo(rng))
            img = Image.fromarray(label(rng, [1, 2, 3, 12]), "P")  # CMP ships palette PNGs
            img.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
            img.save(root / folder / f"{stem}.png")
            (root / folder / f"{stem}.xml").write_text("<annotation/>")
    return root


def coco_stuff(root: Path, rng: np.random.Generator) -> Path:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            stem = f"{i + 1:012d}"
            lbl = label(rng, [0, 5, 90, 181, 255])
            save(root / f"{split}_img" / f"{stem}.jpg", photo(rng))
            save(root / f"{split}_label" / f"{stem}.png", lbl)
            save(root / f"{split}_inst" / f"{stem}.png", (lbl // 3).astype(np.uint8))
    return root


def deepfashion(root: Path, rng: np.random.Generator) -> Path:
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            save(root / f"{split}_img" / f"img_{i:05d}.jpg", photo(rng))
            save(root / f"{split}_label" / f"img_{i:05d}.png", label(rng, [0, 2, 5, 13, 19]))
    return root


def custom(root: Path, rng: np.random.Generator, classes: dict | None = None, splits: bool = False,
           instances: bool = False, values: tuple[int, ...] = (0, 1, 2)) -> Path:
    for split, count in (("train", 3), ("val", 2)) if splits else (("", 3),):
        for i in range(count):
            base = root / split if split else root
            lbl = label(rng, list(values))
            save(base / "images" / f"img{i}.png", photo(rng))
            save(base / "labels" / f"img{i}.png", lbl)
            if instances:
                save(base / "instances" / f"img{i}.png", lbl.astype(np.uint16) * 300)
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))
    return root
