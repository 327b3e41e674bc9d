"""Label maps -> images with a trained generator, for everyday use and for serving.

A :class:`Synthesizer` wraps a generator with its label layout (class count, don't care,
instance maps) and checks every input before it reaches the network: integer ids in range,
sides divisible by ``2**num_up``, at most ``MAX_SIDE`` pixels a side. Datasets with instance maps
(Cityscapes, COCO-Stuff, the synthetic scenes) need an instance map per label map, or the
explicit choice ``edges_from_labels`` (instance edges = class boundaries). Multimodal models
(``model.style=vae|noise3d``) also take a seed and, for ``vae``, a style photo (:mod:`dagan.latent`);
without either the output stays deterministic.

:func:`export_generator` writes a slim generator checkpoint (weights, config, label layout)
that :func:`dagan.checkpoint.load_generator` reads like a training checkpoint; it is what the
registered MLflow model carries. Local checkpoints are read here; model URIs
(:data:`MODEL_URI_SCHEMES`) are served by ``python -m components.generate``, which takes the same
arguments (this library never imports mlflow nor the steps).

A style-encoding generator (CA2SIS) draws each class's style from a photo of the scene
(``generate --photos DIR``), from per-class codes (style editing, :mod:`dagan.styles`) or, with
neither, from the class-mean styles it learned in training (what the served model does).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from dagan.atomic import atomic_files, atomic_write, atomic_write_bytes
from dagan.ca2sis import CA2SISGenerator
from dagan.checkpoint import FORMAT_VERSION, load_checkpoint, load_generator
from dagan.config import Config
from dagan.console import add_log_level_arguments, progress
from dagan.data.classes import colorize
from dagan.data.manifest import Manifest, read_manifest
from dagan.data.png import encode_png, open_image
from dagan.disk import DISK_FULL
from dagan.generator import uses_style_image
from dagan.labels import semantic_input
from dagan.latent import check_seed, choose_latent, style_photo_tensor
from dagan.nn.style import LatentStyle
from dagan.results_page import ASSET_DIR, PAGE_FILE, ResultRow, write_page

MAX_SIDE = 2048
MAX_STYLE_SIDE = 8192  # style photos are resized to the model's image size; this only bounds memory
# A served model's default request limits (register.serve_max_*; components/pyfunc_model.py): pixels per label
# map (peak memory grows with it) and per request (time grows with it).
SERVE_MAX_IMAGE_PIXELS = 512 * 512
SERVE_MAX_REQUEST_PIXELS = 4 * SERVE_MAX_IMAGE_PIXELS
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
MODEL_URI_SCHEMES = ("models:/", "runs:/")  # MLflow models: python -m components.generate serves them


class InputError(ValueError):
    """A label or instance map the model cannot take; the message names the input and the fix."""


@dataclass(frozen=True)
class LabelLayout:
    num_classes: int
    contain_dontcare_label: bool
    has_instance: bool
    class_names: list[str]
    class_colors: list[list[int]]

    @property
    def num_label_channels(self) -> int:
        return self.num_classes + int(self.contain_dontcare_label)

    @property
    def semantic_nc(self) -> int:
        return self.num_label_channels + int(self.has_instance)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> LabelLayout:
        return cls(manifest.num_classes, manifest.contain_dontcare_label, manifest.has_instance,
                   list(manifest.class_names), [list(c) for c in manifest.class_colors])

    def to_dict(self) -> dict:
        return asdict(self)


def export_generator(
    path: str | Path, generator: nn.Module, config: Config, layout: LabelLayout
) -> Path:
    """Write generator weights + config + label layout atomically (readable by load_generator)."""
    path = Path(path)
    state = {
        "format_version": FORMAT_VERSION, "config": config.to_dict(), "semantic_nc": layout.semantic_nc,
        "generator": generator.state_dict(), "ema": None, "layout": layout.to_dict(),
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def decode_id_map(data: bytes, what: str, max_pixels: int | None = None) -> np.ndarray:
    """PNG bytes of a single-channel map (label or instance ids) -> (H, W) int64 array; the size is checked
    (at most ``MAX_SIDE`` a side and ``max_pixels`` pixels) from the header, before any pixel is decoded."""
    try:
        image = open_image(data)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{what}: not a readable PNG ({err}); send a single-channel 8- or 16-bit PNG") from None
    width, height = image.size
    check_pixels(height, width, what, max_pixels)
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise InputError(f"{what}: not a readable PNG ({err}); send a single-channel 8- or 16-bit PNG") from None
    if image.mode not in ("L", "I", "I;16", "P"):
        raise InputError(f"{what}: PNG mode {image.mode} is not a label map; save label ids as a single-channel "
                         "(grayscale 8/16-bit) PNG, not colours")
    return np.asarray(image).astype(np.int64)


def check_pixels(height: int, width: int, what: str, max_pixels: int | None = None, limit_name: str = "") -> None:
    """Refuse a map larger than ``MAX_SIDE`` a side or ``max_pixels`` pixels (named by ``limit_name``)."""
    if max(height, width) > MAX_SIDE:
        raise InputError(f"{what}: size {height}x{width} is not allowed; height and width must be at most "
                         f"{MAX_SIDE}: resize or crop the label map")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(f"{what}: {height}x{width} = {height * width} pixels, more than the limit of {max_pixels} "
                         f"pixels per label map{f' ({limit_name})' if limit_name else ''}; send a smaller label map")


def decode_rgb(data: bytes, what: str) -> np.ndarray:
    """Bytes of a photo in any format Pillow reads (PNG, JPEG, ...) -> (H, W, 3) uint8 RGB."""
    unreadable = f"{what}: not a readable image ({{}}); send a PNG or JPEG photo"
    try:
        image = open_image(data)  # reads the header only: the size is checked before decoding
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(unreadable.format(err)) from None
    if max(image.size) > MAX_STYLE_SIDE:
        raise InputError(f"{what}: {image.size[0]}x{image.size[1]} pixels; style photos may be at most "
                         f"{MAX_STYLE_SIDE} pixels a side: downscale it")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(unreadable.format(err)) from None
    return np.asarray(image.convert("RGB"))


def read_photo(path: str | Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (its size checked from the header before decoding)."""
    return decode_rgb(Path(path).read_bytes(), str(path))


class Synthesizer:
    """A generator with its label layout, checking inputs; call it with (H, W) integer label maps."""

    def __init__(self, generator: nn.Module, layout: LabelLayout, device: str | torch.device = "cpu"):
        if generator.semantic_nc != layout.semantic_nc:
            raise ValueError(f"generator takes {generator.semantic_nc} input channels but the label layout "
                             f"gives {layout.semantic_nc}; the checkpoint and the manifest do not belong together")
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.layout = layout

    @property
    def uses_styles(self) -> bool:
        """Whether the generator takes per-class style codes (CA2SIS) that photos and style edits set."""
        return uses_style_image(self.generator)

    def check(
        self, label: np.ndarray, what: str, instance: np.ndarray | None = None, edges_from_labels: bool = False
    ) -> np.ndarray:
        """Return ``label`` as int64 or raise InputError naming ``what``, the value and the fix."""
        label = np.asarray(label)
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
            raise InputError(f"{what}: expected a 2-D array of integer label ids, got shape {label.shape} "
                             f"dtype {label.dtype}")
        height, width = label.shape
        # every generator has size_error: DAGAN and CC-FPSE from LatentStyle, CA2SIS its own
        reason = cast(LatentStyle | CA2SISGenerator, self.generator).size_error(height, width)
        if reason is None and not 0 < max(height, width) <= MAX_SIDE:
            reason = f"height and width must be at most {MAX_SIDE}"
        if reason is not None:
            raise InputError(f"{what}: size {height}x{width} is not allowed; {reason}: resize or crop the label map")
        high = self.layout.num_label_channels - 1
        if label.min() < 0 or label.max() > high:
            raise InputError(f"{what}: label ids span [{label.min()}, {label.max()}] but this model knows ids "
                             f"0..{high} ({self.layout.num_classes} classes"
                             f"{' + don' + chr(39) + 't care' if self.layout.contain_dontcare_label else ''})")
        if self.layout.has_instance and instance is None and not edges_from_labels:
            raise InputError(
                f"{what}: this model was trained with instance maps; pass the instance map (generate "
                "--instances DIR, column 'instance'), or choose instance edges = class boundaries "
                "(generate --edges-from-labels, params edges_from_labels=true)"
            )
        if instance is not None and np.asarray(instance).shape != label.shape:
            raise InputError(f"{what}: instance map shape {np.asarray(instance).shape} differs from the label "
                             f"map's {label.shape}")
        return label.astype(np.int64)

    def latent(self, seed: int | None, style: np.ndarray | None, what: str) -> torch.Tensor | None:
        """z for one image (:func:`dagan.latent.choose_latent`); ``style`` an (H, W, 3) uint8 photo."""
        try:
            if seed is not None:
                seed = check_seed(seed)
            style_image = None
            if style is not None:
                size = getattr(self.generator, "image_size", None)
                if size is None:  # noise3d or off: choose_latent refuses a style photo with the reason
                    size = tuple(np.asarray(style).shape[:2])
                style_image = style_photo_tensor(np.asarray(style, dtype=np.uint8), size).to(self.device)
            with torch.no_grad():
                z = choose_latent(self.generator, seed, style_image)
        except ValueError as err:
            raise InputError(f"{what}: {err}") from None
        return None if z is None else z.to(self.device)

    @torch.no_grad()
    def style_codes(self, label: np.ndarray, photo: np.ndarray | None = None, what: str = "label map") -> torch.Tensor:
        """Per-class style codes (1, C, D) of the scene ``label``: from ``photo`` ((H, W, 3) uint8 of the
        label map's size) or, without one, the generator's class-mean styles."""
        if not self.uses_styles:
            raise InputError(f"{what}: this model has no style codes (model.generator=dagan); photos and style "
                             "edits need a style-encoding generator (model.generator=ca2sis)")
        label = self.check(label, what, edges_from_labels=True)
        classes = torch.nn.functional.one_hot(torch.from_numpy(label).to(self.device), self.layout.num_label_channels)
        classes = classes.permute(2, 0, 1)[None].float()
        ca2sis = cast(CA2SISGenerator, self.generator)  # uses_styles: a CA2SIS generator
        if photo is None:
            return ca2sis.class_mean_styles(classes)
        photo = np.asarray(photo)
        if photo.shape != (*label.shape, 3) or photo.dtype != np.uint8:
            raise InputError(f"{what}: the photo is {photo.shape} {photo.dtype}, expected {(*label.shape, 3)} uint8 "
                             "(an RGB image of the label map's size)")
        image = torch.from_numpy(photo).to(self.device).permute(2, 0, 1)[None].float() / 127.5 - 1
        return ca2sis.encode_style(image, classes)

    @torch.no_grad()
    def __call__(
        self, label: np.ndarray, instance: np.ndarray | None = None, edges_from_labels: bool = False,
        what: str = "label map", style_codes: torch.Tensor | None = None, seed: int | None = None,
        style: np.ndarray | None = None,
    ) -> np.ndarray:
        """(H, W) label ids -> (H, W, 3) uint8 RGB image. ``style_codes`` (from :meth:`style_codes`) set
        a style-encoding generator's per-class styles (else its class means); ``seed`` / ``style`` photo
        choose the latent of a multimodal model (:meth:`latent`)."""
        label = self.check(label, what, instance, edges_from_labels)
        z = self.latent(seed, style, what)
        instance_tensor = None
        if self.layout.has_instance:
            source = label if instance is None else np.asarray(instance).astype(np.int64)
            instance_tensor = torch.from_numpy(source)[None].to(self.device)
        label_tensor = torch.from_numpy(label)[None].to(self.device)
        semantic = semantic_input(label_tensor, self.layout.num_label_channels, instance_tensor)
        if style_codes is not None:
            if not self.uses_styles:
                raise InputError(f"{what}: this model has no style codes (model.generator=dagan)")
            image = self.generator(semantic, style_codes=style_codes)[0]
        elif z is not None:
            image = self.generator(semantic, z)[0]
        else:
            image = self.generator(semantic)[0]
        return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def load_synthesizer(
    path: str | Path, use_ema: bool = True, manifest_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> Synthesizer:
    """A Synthesizer from a training checkpoint or an exported generator.

    The label layout comes from the exported checkpoint, else from ``manifest_dir``, else from
    the prepared dataset named in the checkpoint's config (``dataset.prepared_dir``).
    """
    state = load_checkpoint(path)
    generator, config, _ = load_generator(path, use_ema=use_ema)
    if state.get("layout"):
        layout = LabelLayout(**state["layout"])
    else:
        directory = Path(manifest_dir or config.dataset.prepared_dir)
        if not (directory / "manifest.json").is_file():
            raise FileNotFoundError(
                f"{path} is a training checkpoint without a label layout and {directory / 'manifest.json'} does "
                "not exist; pass --manifest DIR (the prepared dataset the model was trained on)"
            )
        layout = LabelLayout.from_manifest(read_manifest(directory))
    return Synthesizer(generator, layout, device)


def _find_photo(images_dir: Path, stem: str, label_file: Path) -> Path:
    for suffix in PHOTO_SUFFIXES:
        if (images_dir / f"{stem}{suffix}").is_file():
            return images_dir / f"{stem}{suffix}"
    raise FileNotFoundError(f"{images_dir}: no real photo {stem}.png/.jpg for {label_file} (same file stem expected); "
                            "leave out --images to generate without the real column")


def sample_seeds(seed: int | None, num_samples: int) -> list[int | None]:
    """The seeds of ``num_samples`` images per label map: [seed] for one (None: z = 0), else seed, seed+1, ..."""
    if num_samples < 1:
        raise InputError(f"--num-samples {num_samples}: must be >= 1")
    if num_samples == 1:
        return [seed]
    first = 0 if seed is None else seed
    return list(range(first, first + num_samples))


def generate_dir(
    synthesizer: Synthesizer, labels_dir: str | Path, out_dir: str | Path,
    instances_dir: str | Path | None = None, edges_from_labels: bool = False, *,
    photos_dir: str | Path | None = None, style_edit=None, images_dir: str | Path | None = None,
    limit: int | None = None, overwrite: bool = False, style: str | Path | None = None, seed: int | None = None,
    num_samples: int = 1,
) -> list[Path]:
    """Generate PNGs in ``out_dir`` for every ``*.png`` label map in ``labels_dir``.

    Takes the first ``limit`` label maps by name when given. ``photos_dir`` (same file names, any
    image format PIL reads) gives a style-encoding generator each scene's own styles;
    ``style_edit`` (:class:`dagan.styles.StyleEdit`) then replaces chosen classes' styles. One image
    per label map keeps its file name; with ``num_samples`` K > 1 they are named
    ``<name>-seed<N>.png`` for the K seeds N = seed, seed+1, ... (seed 0 when not given). ``style``:
    a photo whose style a ``vae`` model transfers onto every label map. Writes ``out_dir/index.html``
    with label | generated (| the real photo of ``images_dir``) side by side
    (:mod:`dagan.results_page`). Every input is checked before anything is written, so bad input
    leaves no partial output, and the outputs appear together at the end (:func:`dagan.atomic.atomic_files`),
    so a full disk or Ctrl-C leaves none either. ``out_dir`` is never an input folder, and files already there
    are replaced only with ``overwrite``.
    """
    labels_dir, out_dir = Path(labels_dir), Path(out_dir)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: give a positive number of label maps (or leave it out for all)")
    files = sorted(labels_dir.glob("*.png")) if labels_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no *.png label maps in {labels_dir}; pass --labels DIR with label-id PNGs")
    seeds = sample_seeds(seed, num_samples)
    folders = [labels_dir] + [Path(folder) for folder in (instances_dir, photos_dir, images_dir) if folder]
    names = [_output_name(file, sample_seed, len(seeds)) for file in files[:limit] for sample_seed in seeds]
    names += [PAGE_FILE, *(f"{ASSET_DIR}/label/{file.name}" for file in files[:limit])]  # the results page
    _check_output_folder(out_dir, folders, names, overwrite)
    if (photos_dir is not None or style_edit is not None) and not synthesizer.uses_styles:
        raise InputError("--photos / --style-image: this model has no style codes (model.generator=dagan); they need "
                         "a style-encoding generator (model.generator=ca2sis)")
    style_photo = None
    if style is not None:
        if not Path(style).is_file():
            raise FileNotFoundError(f"--style {style}: no such file; pass a photo (PNG or JPEG)")
        style_photo = decode_rgb(Path(style).read_bytes(), str(style))
    for sample_seed in seeds:  # refuses seeds and styles a model cannot take, before anything is written
        synthesizer.latent(sample_seed, style_photo, f"--style {style}" if style is not None else f"seed {sample_seed}")
    inputs = []
    for file in files[:limit]:
        label = decode_id_map(file.read_bytes(), str(file))
        instance = None
        if instances_dir is not None:
            instance_file = _companion(instances_dir, file, "instance map", any_suffix=False)
            instance = decode_id_map(instance_file.read_bytes(), str(instance_file))
        photo = _find_photo(Path(images_dir), file.stem, file) if images_dir is not None else None
        synthesizer.check(label, str(file), instance, edges_from_labels)
        codes = None
        if photos_dir is not None or style_edit is not None:
            scene_style = read_photo(_companion(photos_dir, file, "photo")) if photos_dir is not None else None
            codes = synthesizer.style_codes(label, scene_style, what=str(file))
            codes = style_edit.apply(codes) if style_edit is not None else codes
        inputs.append((file, label, instance, codes, photo))
    written, rows = [], []
    try:
        with atomic_files(out_dir) as staging:  # every output appears at the end, or none (a full disk, Ctrl-C)
            for file, label, instance, codes, photo in progress(inputs, total=len(inputs), desc="generate",
                                                               unit="image"):
                atomic_write_bytes(staging / ASSET_DIR / "label" / file.name,
                                   encode_png(colorize(label, synthesizer.layout.class_colors)))
                real = None
                if photo is not None:
                    real = f"{ASSET_DIR}/real/{photo.name}"
                    atomic_write_bytes(staging / real, photo.read_bytes())
                for sample_seed in seeds:
                    image = synthesizer(label, instance, edges_from_labels, what=str(file), style_codes=codes,
                                        seed=sample_seed, style=style_photo)
                    name = _output_name(file, sample_seed, len(seeds))
                    atomic_write_bytes(staging / name, encode_png(image))
                    written.append(out_dir / name)
                    rows.append(ResultRow(name, f"{ASSET_DIR}/label/{file.name}", name, real))
            write_page(staging, rows, f"DAGAN results: {labels_dir}")
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        raise OSError(err.errno, f"{err.strerror}; nothing was written to {out_dir}", str(out_dir)) from None
    return written


def _output_name(label_file: Path, seed: int | None, num_seeds: int) -> str:
    """The label map's file name for one image per map, else ``<stem>-seed<N>.png``."""
    return label_file.name if num_seeds == 1 else f"{label_file.stem}-seed{seed}.png"


def _check_output_folder(out_dir: Path, inputs: list[Path], names: list[str], overwrite: bool) -> None:
    """Refuse to write into an input folder (the output folder or the results page's picture folders), or
    over existing files (images, ``index.html``, the page's pictures) unless ``overwrite``."""
    written = {out_dir.resolve(), *((out_dir / ASSET_DIR / kind).resolve() for kind in ("label", "real"))}
    for folder in inputs:
        if folder.resolve() in written:
            raise InputError(f"--out {out_dir} would write into the input folder {folder}: the images would replace "
                             "its files; choose another output folder")
    existing = [out_dir / name for name in names if (out_dir / name).exists()]
    if existing and not overwrite:
        raise InputError(f"{out_dir} already holds {len(existing)} of the output files (e.g. {existing[0]}); choose "
                         "an empty output folder, or pass --overwrite to replace them")


def _companion(directory: str | Path, label_file: Path, what: str, any_suffix: bool = True) -> Path:
    """The file of ``directory`` that belongs to ``label_file``: the same name (or stem, any suffix)."""
    directory = Path(directory)
    candidates = [directory / label_file.name] + (sorted(directory.glob(f"{label_file.stem}.*")) if any_suffix else [])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{directory / label_file.name}: no {what} for {label_file} (same file name expected)")


def add_generate_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """The arguments of ``python -m dagan generate`` and ``python -m components.generate``.

    Both commands take the same arguments; only what ``--model`` accepts (``model_help``) differs.
    """
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--labels", required=True, help="folder of label-id PNGs (single channel)")
    parser.add_argument("--out", required=True, help="output folder: the images (same file names, RGB PNG) and "
                                                     "index.html with label | generated (| real)")
    parser.add_argument("--instances", help="folder of instance-id PNGs with the same file names")
    parser.add_argument("--edges-from-labels", action="store_true",
                        help="models trained with instance maps: use class boundaries as instance edges")
    parser.add_argument("--manifest", help="prepared dataset folder giving the label layout of a training checkpoint")
    parser.add_argument("--images", help="folder of the real photos (same file stems, .png/.jpg): a real column in "
                                         "index.html")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N label maps by file name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace images already in --out (never allowed: --out being an input folder)")
    styles = parser.add_argument_group("styles (style-encoding generators: model.generator=ca2sis)")
    styles.add_argument("--photos", help="folder of photos with the label maps' file names: each scene takes its "
                                         "styles from its photo (default: the class-mean styles of training)")
    styles.add_argument("--style-image", help="reference photo whose per-class styles replace the scenes' styles")
    styles.add_argument("--style-label", help="the reference photo's label-id PNG (needed with --style-image)")
    styles.add_argument("--style-classes", help="comma-separated class ids or names that take the reference's style "
                                                "(default: every class in the reference)")
    parser.add_argument("--style", metavar="IMAGE",
                        help="model.style=vae models: a photo whose style is generated on every label map")
    parser.add_argument("--seed", type=int, help="multimodal models: the latent's seed (default: z = 0, deterministic)")
    parser.add_argument("--num-samples", type=int, default=1, metavar="K",
                        help="multimodal models: K images per label map (seeds seed..seed+K-1, named NAME-seedN.png)")
    add_log_level_arguments(parser)
