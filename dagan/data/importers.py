"""Importers: find the samples of each raw dataset layout and say how its label values map to ids.

Each importer takes the raw dataset's root folder and returns a :class:`LabelSpec` and the
list of :class:`RawPair` files, sorted by split and id. Layouts (docs/DATA.md has the commands):

* ``cityscapes``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
  ``gtFine/{split}/{city}/*_gtFine_{labelIds,instanceIds}.png``, or pix2pixHD's flattened
  ``{split}_img``, ``{split}_label``, ``{split}_inst``. labelIds 0..34 are used directly.
* ``ade20k``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``; annotation 0
  (unlabelled) becomes don't care (id 150), k becomes k - 1.
* ``celebamask_hq``: ``CelebA-HQ-img/N.jpg`` and ``CelebAMask-HQ-mask-anno/*/NNNNN_<part>.png``,
  the 18 part masks painted into the 19-class map; images from ``val_from`` on form ``val``.
* ``facades``: CMP ``base/`` (train) and ``extended/`` (val) with ``cmp_*.jpg`` + ``cmp_*.png``.
* ``coco_stuff``: SPADE's ``{train,val}_{img,label,inst}``; 255 (unlabelled) becomes don't care 182.
* ``deepfashion``: the DAGAN authors' ``{train,val}_{img,label}`` (ids 0..19 used directly).
* ``custom`` / ``synthetic``: ``images/``, ``labels/``, optional ``instances/`` (one split
  ``train``) or ``<split>/images|labels|instances``, optional ``classes.json``.

A split that has label maps but no photo folder is label-only (generation input).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from dagan.data.classes import CELEBAMASK_HQ, class_table, palette
from dagan.data.errors import DataError
from dagan.data.imaging import LabelSpec, RawPair, identity_lut, read_raw_label
from dagan.presets import get_preset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CITYSCAPES_SUFFIXES = ("_leftImg8bit", "_gtFine_labelIds", "_gtFine_instanceIds")
ADE_SPLITS = {"training": "train", "validation": "val"}
FACADES_SPLITS = {"base": "train", "extended": "val"}


def _index(files: Iterable[Path], key: Callable[[Path], str]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(files):
        name = key(path)
        if name in index:
            raise DataError(f"{path} and {index[name]} are both sample {name!r}; remove one of them")
        index[name] = path
    return index


def _files(directory: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, pattern: str = "*") -> list[Path]:
    return [p for p in directory.rglob(pattern) if p.is_file() and p.suffix.lower() in suffixes]


def _pairs(
    split: str, where: Path, labels: dict[str, Path], images: dict[str, Path] | None,
    instances: dict[str, Path] | None, need_instance: bool,
) -> list[RawPair]:
    """Match label maps with photos (and instance maps) by sample id; report every mismatch."""
    if not labels:
        raise DataError(f"split {split!r} in {where} has no label maps; add the files or remove the empty folder")
    if images is not None:
        missing = sorted(set(labels) - set(images))
        if missing:
            raise DataError(f"split {split!r} in {where}: {len(missing)} label map(s) have no photo, e.g. "
                            f"{labels[missing[0]]} (sample {missing[0]!r}); add the photos or remove those labels")
        extra = sorted(set(images) - set(labels))
        if extra:
            raise DataError(f"split {split!r} in {where}: {len(extra)} photo(s) have no label map, e.g. "
                            f"{images[extra[0]]} (sample {extra[0]!r}); add the label maps or remove those photos")
    if need_instance:
        missing = sorted(set(labels) - set(instances or {}))
        if missing:
            raise DataError(f"split {split!r} in {where}: {len(missing)} label map(s) have no instance map, e.g. "
                            f"{labels[missing[0]]}; this dataset needs instance maps for every sample")
    return [
        RawPair(split=split, sample_id=name, label=labels[name], image=images[name] if images else None,
                instance=instances[name] if need_instance and instances is not None else None)
        for name in sorted(labels)
    ]


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; expected the {layout} there (see docs/DATA.md)")


def _cityscapes_key(path: Path) -> str:
    stem = path.stem
    for suffix in CITYSCAPES_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _flat_layout(source: Path, key: Callable[[Path], str], need_instance: bool, layout: str) -> list[RawPair]:
    """SPADE / pix2pixHD folders ``{split}_label``, ``{split}_img`` (optional), ``{split}_inst``."""
    label_dirs = sorted(p for p in source.glob("*_label") if p.is_dir())
    if not label_dirs:
        raise DataError(f"no *_label folders in {source}; expected the {layout} (see docs/DATA.md)")
    pairs = []
    for label_dir in label_dirs:
        split = label_dir.name[: -len("_label")]
        image_dir, inst_dir = source / f"{split}_img", source / f"{split}_inst"
        labels = _index(_files(label_dir, (".png",)), key)
        images = _index(_files(image_dir), key) if image_dir.is_dir() else None
        instances = _index(_files(inst_dir, (".png",)), key) if inst_dir.is_dir() else None
        pairs += _pairs(split, source, labels, images, instances, need_instance)
    return pairs


def _named_spec(dataset: str, lut: np.ndarray, valid: str, fix: str) -> LabelSpec:
    names, colors = class_table(dataset)
    preset = get_preset(dataset)
    return LabelSpec(dataset, names, colors, preset.contain_dontcare_label, preset.has_instance, lut, valid, fix)


def import_cityscapes(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    spec = _named_spec("cityscapes", identity_lut(35), "labelIds 0..34",
                       "use the *_gtFine_labelIds.png files, not trainIds or colour images")
    if not (source / "gtFine").is_dir():
        return spec, _flat_layout(source, _cityscapes_key, True, "Cityscapes layout (gtFine/ + leftImg8bit/, "
                                  "or train_img/ train_label/ train_inst/)")
    pairs = []
    for split_dir in sorted(p for p in (source / "gtFine").iterdir() if p.is_dir()):
        split = split_dir.name
        labels = _index(split_dir.rglob("*_gtFine_labelIds.png"), _cityscapes_key)
        instances = _index(split_dir.rglob("*_gtFine_instanceIds.png"), _cityscapes_key)
        image_dir = source / "leftImg8bit" / split
        images = _index(image_dir.rglob("*_leftImg8bit.png"), _cityscapes_key) if image_dir.is_dir() else None
        pairs += _pairs(split, source, labels, images, instances, True)
    return spec, pairs


def import_ade20k(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    root = source / "ADEChallengeData2016" if (source / "ADEChallengeData2016").is_dir() else source
    _require_dir(root / "annotations", "ADEChallengeData2016 layout (images/ and annotations/)")
    lut = identity_lut(151) - 1
    lut[0] = 150
    lut[151:] = -1
    spec = _named_spec("ade20k", lut, "0..150, 0 = unlabelled",
                       "use the annotations/ PNGs of ADEChallengeData2016 (SceneParsing)")
    pairs = []
    for raw_split, split in ADE_SPLITS.items():
        label_dir = root / "annotations" / raw_split
        if label_dir.is_dir():
            image_dir = root / "images" / raw_split
            images = _index(_files(image_dir), lambda p: p.stem) if image_dir.is_dir() else None
            pairs += _pairs(split, root, _index(_files(label_dir, (".png",)), lambda p: p.stem), images, None, False)
    if not pairs:
        raise DataError(f"no annotations/training or annotations/validation folder in {root}")
    return spec, pairs


def import_celebamask_hq(source: Path, val_from: int = 28000) -> tuple[LabelSpec, list[RawPair]]:
    root = source / "CelebAMask-HQ" if (source / "CelebAMask-HQ").is_dir() else source
    image_dir, mask_dir = root / "CelebA-HQ-img", root / "CelebAMask-HQ-mask-anno"
    for directory in (image_dir, mask_dir):
        _require_dir(directory, "CelebAMask-HQ layout (CelebA-HQ-img/ and CelebAMask-HQ-mask-anno/)")
    part_ids = {name: i for i, name in enumerate(CELEBAMASK_HQ) if i > 0}
    parts: dict[int, list[tuple[int, Path]]] = {}
    for path in sorted(_files(mask_dir, (".png",))):
        number, _, part = path.stem.partition("_")
        if not number.isdigit() or part not in part_ids:
            raise DataError(f"part mask {path} is not named NNNNN_<part>.png with a part in: "
                            f"{', '.join(part_ids)}; rename or remove it")
        parts.setdefault(int(number), []).append((part_ids[part], path))
    images = {}
    for path in _files(image_dir):
        if not path.stem.isdigit():
            raise DataError(f"image {path} is not named N.jpg like CelebA-HQ-img; rename or remove it")
        images[int(path.stem)] = path
    missing = sorted(set(images) - set(parts))
    if missing:
        raise DataError(f"image {images[missing[0]]} has no part masks in {mask_dir} "
                        f"({len(missing)} such images); add the masks or remove the images")
    extra = sorted(set(parts) - set(images))
    if extra:
        raise DataError(f"part masks of image {extra[0]} (e.g. {parts[extra[0]][0][1]}) have no photo in {image_dir}; "
                        "add the photo or remove the masks")
    if not images:
        raise DataError(f"{image_dir} has no images")
    spec = LabelSpec("celebamask_hq", list(CELEBAMASK_HQ), palette(len(CELEBAMASK_HQ)), False, False,
                     identity_lut(len(CELEBAMASK_HQ)), "part masks", "")
    pairs = [
        RawPair(split="train" if n < val_from else "val", sample_id=str(n), label=None, image=images[n],
                label_parts=tuple(sorted(parts[n])), image_may_be_scaled=True)
        for n in sorted(images)
    ]
    return spec, sorted(pairs, key=lambda p: (p.split, int(p.sample_id)))


def import_facades(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    spec = _named_spec("facades", identity_lut(13), "1..12 (CMP classes)",
                       "use the CMP Facades label PNGs (palette indices 1..12)")
    pairs = []
    for folder, split in FACADES_SPLITS.items():
        directory = source / folder
        if directory.is_dir():
            labels = _index(_files(directory, (".png",)), lambda p: p.stem)
            images = _index(_files(directory, (".jpg", ".jpeg")), lambda p: p.stem)
            pairs += _pairs(split, directory, labels, images, None, False)
    if not pairs:
        raise DataError(f"no base/ or extended/ folder in {source}; expected the CMP Facades layout")
    return spec, pairs


def import_coco_stuff(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    spec = _named_spec("coco_stuff", identity_lut(182, {255: 182}), "0..181, 255 = unlabelled",
                       "use COCO-Stuff's stuffthingmaps (ids 0..181) as train_label/val_label")
    return spec, _flat_layout(source, lambda p: p.stem, True, "SPADE COCO-Stuff layout (train_img/ train_label/ "
                              "train_inst/ val_img/ val_label/ val_inst/)")


def import_deepfashion(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    spec = _named_spec("deepfashion", identity_lut(20), "0..19 (human-parsing ids)",
                       "use the label maps of the DAGAN authors' DeepFashion release (train_label/ val_label/)")
    return spec, _flat_layout(source, lambda p: p.stem, False, "DAGAN DeepFashion layout (train_img/ train_label/ "
                              "val_img/ val_label/)")


def _custom_splits(source: Path) -> dict[str, Path]:
    if (source / "labels").is_dir():
        return {"train": source}
    splits = {p.name: p for p in sorted(source.iterdir()) if (p / "labels").is_dir()} if source.is_dir() else {}
    if not splits:
        raise DataError(f"no labels/ folder in {source} or its sub-folders; expected images/ + labels/ "
                        "(optional instances/), or <split>/images + <split>/labels")
    return splits


def _custom_spec(dataset: str, source: Path, pairs: list[RawPair], has_instance: bool) -> LabelSpec:
    classes_file = source / "classes.json"
    dont_care = None
    if classes_file.is_file():
        try:
            classes = json.loads(classes_file.read_text())
            names = [str(n) for n in classes["class_names"]]
            colors = classes.get("class_colors") or palette(len(names))
            dont_care = classes.get("dont_care")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{classes_file} is not valid ({err}); it must be JSON with \"class_names\": [...], "
                            "optional \"class_colors\": [[r, g, b], ...] and \"dont_care\": <raw value>") from None
        if len(colors) != len(names):
            raise DataError(f"{classes_file}: {len(colors)} class_colors for {len(names)} class_names")
    else:
        top = max(int(read_raw_label(p).max()) for p in pairs)
        names, colors = [f"class_{i}" for i in range(top + 1)], palette(top + 1)
    extra = {int(dont_care): len(names)} if dont_care is not None else {}
    valid = f"0..{len(names) - 1}" + (f", {dont_care} = don't care" if dont_care is not None else "")
    fix = (f"list every class in {classes_file} (class_names) or set its dont_care value"
           if classes_file.is_file() else f"write {classes_file}")
    lut = identity_lut(len(names), extra)
    return LabelSpec(dataset, names, [list(c) for c in colors], dont_care is not None, has_instance, lut, valid, fix)


def import_custom(source: Path, dataset: str = "custom") -> tuple[LabelSpec, list[RawPair]]:
    splits = _custom_splits(source)
    with_instances = {name for name, d in splits.items() if (d / "instances").is_dir()}
    if with_instances and with_instances != set(splits):
        listed = ", ".join(sorted(with_instances))
        raise DataError(f"only some splits of {source} have an instances/ folder ({listed}); "
                        "give every split instance maps or none")
    has_instance = bool(with_instances)
    pairs = []
    for split, directory in splits.items():
        labels = _index(_files(directory / "labels", (".png",)), lambda p: p.stem)
        images = _index(_files(directory / "images"), lambda p: p.stem) if (directory / "images").is_dir() else None
        instances = _index(_files(directory / "instances", (".png",)), lambda p: p.stem) if has_instance else None
        pairs += _pairs(split, directory, labels, images, instances, has_instance)
    return _custom_spec(dataset, source, pairs, has_instance), pairs


def import_synthetic(source: Path) -> tuple[LabelSpec, list[RawPair]]:
    if not (source / "classes.json").is_file():
        raise DataError(f"{source}/classes.json is missing; generate the scenes with python -m components.synthesize")
    spec, pairs = import_custom(source, "synthetic")
    preset = get_preset("synthetic")
    if spec.num_classes != preset.num_classes or spec.has_instance != preset.has_instance:
        raise DataError(f"{source} has {spec.num_classes} classes (instances: {spec.has_instance}) but the synthetic "
                        f"preset expects {preset.num_classes} (instances: {preset.has_instance}); synthesize again")
    return spec, pairs


IMPORTERS: dict[str, Callable[[Path], tuple[LabelSpec, list[RawPair]]]] = {
    "cityscapes": import_cityscapes,
    "ade20k": import_ade20k,
    "celebamask_hq": import_celebamask_hq,
    "facades": import_facades,
    "coco_stuff": import_coco_stuff,
    "deepfashion": import_deepfashion,
    "custom": import_custom,
    "synthetic": import_synthetic,
}


def import_dataset(name: str, source: str | Path, max_classes: int = 256) -> tuple[LabelSpec, list[RawPair]]:
    """Run the importer of dataset ``name`` on the raw folder ``source``; at most ``max_classes`` label ids
    (classes + don't care: ``dataset.max_classes``)."""
    if name not in IMPORTERS:
        raise DataError(f"no importer for dataset {name!r}; known: {', '.join(IMPORTERS)}")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"raw dataset folder {source} does not exist; pass --source DIR or set dataset.raw_dir")
    spec, pairs = IMPORTERS[name](source)
    if spec.num_label_channels > max_classes:
        raise DataError(
            f"{source}: {spec.num_label_channels} label ids (label values {spec.valid_values}), more than "
            f"dataset.max_classes={max_classes}; list the real classes in {source / 'classes.json'} (class_names, "
            "and dont_care for an ignore value such as 255 or 65535), or raise dataset.max_classes (at most 256)"
        )
    return spec, pairs
