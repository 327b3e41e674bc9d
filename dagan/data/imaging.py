"""Reading, checking, resizing and PNG-encoding one raw sample (label, optional instance, photo).

Preparation resizes every sample to the dataset's load size (docs/MODEL.md, "Per-dataset
settings"): the shorter side becomes ``load_size`` keeping the aspect, or for presets with an
aspect ratio other than 1 (Cityscapes: 2) the width becomes ``load_size`` and the height
``load_size / aspect_ratio``. Photos are resized bicubic; label and instance maps nearest,
with the same pixel grid so that they stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dagan.data.errors import DataError
from dagan.data.png import encode_png
from dagan.data.shards import Sample

LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class LabelSpec:
    """How raw label values map to ids: ``lut[raw] = id``, -1 where the raw value is invalid."""

    dataset: str
    class_names: list[str]
    class_colors: list[list[int]]
    contain_dontcare_label: bool
    has_instance: bool
    lut: np.ndarray = field(repr=False)  # int32, 65536 entries
    valid_values: str  # human description of the accepted raw values
    fix: str  # what to do when a label has other values

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_label_channels(self) -> int:
        return self.num_classes + int(self.contain_dontcare_label)


def identity_lut(num_values: int, extra: dict[int, int] | None = None) -> np.ndarray:
    lut = np.full(65536, -1, dtype=np.int32)
    lut[:num_values] = np.arange(num_values)
    for raw, mapped in (extra or {}).items():
        lut[raw] = mapped
    return lut


@dataclass(frozen=True)
class RawPair:
    """The files of one raw sample. ``label_parts`` (class id, mask file) replaces ``label`` for
    datasets that ship one binary mask per class (CelebAMask-HQ); later parts paint over earlier ones."""

    split: str
    sample_id: str
    label: Path | None
    image: Path | None = None
    instance: Path | None = None
    label_parts: tuple[tuple[int, Path], ...] = ()
    image_may_be_scaled: bool = False  # photo may be an integer multiple of the label size (CelebAMask-HQ)

    @property
    def label_name(self) -> Path:
        return self.label if self.label is not None else self.label_parts[0][1].parent


def _open(path: Path, what: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"{what} {path} is refused as a decompression bomb ({err}); remove the pair, or resize the "
                        "file if it really is that large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"cannot read {what} {path}: {err}; the file is corrupt or not an image: re-extract it or remove the pair"
        ) from None
    return image


def read_label_values(path: Path) -> np.ndarray:
    image = _open(path, "label map")
    if image.mode not in LABEL_MODES:
        raise DataError(
            f"label map {path} is a {image.mode} image; labels must be single-channel id maps "
            "(8/16-bit grayscale or palette PNG), not colour-coded visualisations"
        )
    return np.asarray(image).astype(np.int64)


def read_instance(path: Path) -> np.ndarray:
    image = _open(path, "instance map")
    if image.mode not in LABEL_MODES:
        raise DataError(f"instance map {path} is a {image.mode} image; instance maps must be 8/16-bit grayscale")
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise DataError(f"instance map {path} has ids outside 0..65535 ({values.min()}..{values.max()})")
    return values


def read_image(path: Path) -> np.ndarray:
    """An (H, W, 3) uint8 photo; 16-bit grayscale photos are scaled to 8 bit (Pillow's RGB conversion clips them)."""
    image = _open(path, "image")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise DataError(f"image {path} is a 32-bit integer image with values {values.min()}..{values.max()}; "
                            "save the photo as 8- or 16-bit")
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise DataError(f"image {path} is a floating-point image; save the photo as 8- or 16-bit RGB or grayscale")
    return np.asarray(image.convert("RGB"))


def combine_parts(pair: RawPair) -> np.ndarray:
    """Paint per-class binary masks (value > 0 = inside) into one id map; background stays 0."""
    label: np.ndarray | None = None
    for class_id, path in pair.label_parts:
        mask = np.asarray(_open(path, "part mask").convert("L")) > 0
        if label is None:
            label = np.zeros(mask.shape, dtype=np.int64)
        elif mask.shape != label.shape:
            raise DataError(f"part mask {path} is {mask.shape[1]}x{mask.shape[0]}, the other masks of "
                            f"{pair.sample_id} are {label.shape[1]}x{label.shape[0]}; all part masks must match")
        label[mask] = class_id
    if label is None:
        raise DataError(f"sample {pair.sample_id} has no part masks")
    return label


def read_raw_label(pair: RawPair) -> np.ndarray:
    """The raw label values of ``pair``: its label map, or its part masks painted into one."""
    if pair.label_parts:
        return combine_parts(pair)
    if pair.label is None:
        raise DataError(f"sample {pair.sample_id} has neither a label map nor part masks")
    return read_label_values(pair.label)


def map_label(raw: np.ndarray, spec: LabelSpec, path: Path) -> np.ndarray:
    if raw.min() < 0 or raw.max() >= spec.lut.size:
        ids = np.full(raw.shape, -1, dtype=np.int32)
    else:
        ids = spec.lut[raw]
    if (ids < 0).any():
        bad = np.unique(raw[ids < 0])
        shown = ", ".join(str(v) for v in bad[:12]) + (", ..." if bad.size > 12 else "")
        raise DataError(
            f"label map {path} has values {shown} outside the {spec.dataset} label values "
            f"({spec.valid_values}); {spec.fix}"
        )
    return ids.astype(np.uint8)


def target_size(width: int, height: int, load_size: int, aspect_ratio: float) -> tuple[int, int]:
    """(width, height) after resizing to ``load_size`` (see module docstring)."""
    if aspect_ratio != 1.0:
        return load_size, max(1, round(load_size / aspect_ratio))
    if width <= height:
        return load_size, max(1, round(height * load_size / width))
    return max(1, round(width * load_size / height)), load_size


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) integer map to (width, height) = ``size``."""
    height, width = values.shape
    new_width, new_height = size
    if (new_width, new_height) == (width, height):
        return values
    rows = np.minimum(((np.arange(new_height) + 0.5) * height / new_height).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(new_width) + 0.5) * width / new_width).astype(np.int64), width - 1)
    return values[rows[:, None], cols[None, :]]


def _size_mismatch(what: str, path: Path, shape: tuple, label_path: Path, label_shape: tuple) -> DataError:
    return DataError(
        f"{what} {path} is {shape[1]}x{shape[0]} but its label map {label_path} is {label_shape[1]}x{label_shape[0]}; "
        "a pair must have the same size: check that the files belong together"
    )


def prepare_pair(pair: RawPair, spec: LabelSpec, load_size: int, aspect_ratio: float) -> tuple[Sample, np.ndarray]:
    """Read, check, resize and encode one pair; return the row and its per-id pixel counts."""
    raw = read_raw_label(pair)
    ids = map_label(raw, spec, pair.label_name)
    height, width = ids.shape
    size = target_size(width, height, load_size, aspect_ratio)
    instance_png = image_png = None
    if pair.instance is not None:
        instance = read_instance(pair.instance)
        if instance.shape != ids.shape:
            raise _size_mismatch("instance map", pair.instance, instance.shape, pair.label_name, ids.shape)
        instance_png = encode_png(resize_nearest(instance, size).astype(np.uint16))
    if pair.image is not None:
        photo = read_image(pair.image)
        ih, iw = photo.shape[:2]
        scaled_ok = pair.image_may_be_scaled and ih * width == iw * height
        if (ih, iw) != (height, width) and not scaled_ok:
            raise _size_mismatch("image", pair.image, photo.shape, pair.label_name, ids.shape)
        resized = Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC) if (iw, ih) != size else photo
        image_png = encode_png(np.asarray(resized))
    ids = resize_nearest(ids, size)
    counts = np.bincount(ids.ravel(), minlength=spec.num_label_channels)
    sample = Sample(id=pair.sample_id, split=pair.split, label=encode_png(ids), image=image_png,
                    instance=instance_png, height=size[1], width=size[0])
    return sample, counts
