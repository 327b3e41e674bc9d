"""The library's typed, frozen configuration, loaded from a params file with dotted overrides.

Each section of :class:`Config` (``dataset``, ``synthetic``, ``model``, ``loss``, ``train``,
``judge``, ``evaluate``) is one frozen dataclass below: what decides the data, the model, its
training and its evaluation, and what a checkpoint stores. Unknown keys and wrong types are
errors that name the key, the value and the file. Fields left ``null`` take the dataset
preset's value (:mod:`dagan.presets`) when the config is resolved, so that
``dataset.name=cityscapes`` alone gives the official Cityscapes settings.

Layers built on the library add sections of their own by subclassing :class:`Config` and
passing the subclass as ``schema`` to :func:`load_config` / :func:`config_from_dict`: the
same checks apply to every section (the steps' ``mlflow``, ``register`` and ``tune``:
``components/settings.py``).

Overrides use the grammar of ``dvc exp run -S`` (:mod:`dagan.overrides`): ``section.key=value``,
the value parsed as YAML (``train.lr_g=2e-4``, ``model.variant=B1``, ``model.use_sam=true``),
``+key=``, ``++key=``, ``~key`` and list items as ``key.0=``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args, get_origin

import yaml

from dagan.atomic import atomic_write_text
from dagan.overrides import OverrideError, merge_overrides
from dagan.presets import get_preset
from dagan.yaml_numbers import load_yaml, surprising_numbers

Variant = Literal["B1", "B2", "B3", "B4", "B5", "B6", "custom"]
CamMode = Literal["off", "I", "II"]
UpsamplingMode = Literal["normal", "more", "most"]
GeneratorKind = Literal["dagan", "ccfpse", "ca2sis"]
DiscriminatorKind = Literal["multiscale", "fpse"]
SpapPlacement = Literal["off", "generator", "discriminator", "both"]
SpapOrder = Literal["coarse_to_fine", "fine_to_coarse"]
CA2SIS_SIZE_MULTIPLE = 64  # the CA2SIS style encoder halves the photo six times
FPSE_SIZE_MULTIPLE = 32  # the FPSE discriminator halves the image five times; it needs at least two of these a side
StyleMode = Literal["off", "vae", "noise3d"]

# model.z_dim when left null (docs/MULTIMODAL.md): SPADE's VAE latent, OASIS's 3D-noise channels.
DEFAULT_Z_DIM = {"vae": 256, "noise3d": 64}

# Doublings from the generator's start size to the image (SPADE's "normal" / "more" / "most").
NUM_UP = {"normal": 5, "more": 6, "most": 7}
MAX_SEED = 2**32 - 1  # the seeds seed NumPy too, which takes 0 .. 2**32 - 1

# Paper Table 4: which attention modules each ablation variant uses.
VARIANTS: dict[str, tuple[bool, str]] = {
    "B1": (False, "off"),
    "B2": (True, "off"),
    "B3": (False, "I"),
    "B4": (False, "II"),
    "B5": (True, "I"),
    "B6": (True, "II"),
}


class ConfigError(ValueError):
    """A config file or override is invalid; the message says which key and how to fix it."""


T = TypeVar("T")


def resolved_value(value: T | None) -> T:
    """``value`` of a field that :meth:`Config.resolved` fills (``null``: the preset's), for code that needs it."""
    if value is None:
        raise ConfigError("a preset-filled field (dataset.crop_size, model.ngf, train.epochs, ...) is null: "
                          "the config was not resolved; load it with load_config or call Config.resolved()")
    return value


def _check(condition: bool, key: str, value: Any, rule: str) -> None:
    """Raise ``key=value <rule>`` unless ``condition`` (the range checks of the sections below)."""
    if not condition:
        raise ConfigError(f"{key}={value!r} {rule}")


def _at_least(section: Any, prefix: str, minimum: float, *names: str, hint: str = "") -> None:
    for name in names:
        value = getattr(section, name)
        _check(value is None or value >= minimum, f"{prefix}.{name}", value, f"must be >= {minimum}{hint}")


def _check_seed(key: str, value: int) -> None:
    _check(0 <= value <= MAX_SEED, key, value, f"must be an integer in [0, {MAX_SEED}] (2**32 - 1)")


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synthetic"  # cityscapes|ade20k|celebamask_hq|facades|coco_stuff|deepfashion|custom|synthetic
    raw_dir: str = "data/raw/synthetic"  # raw dataset in its original layout
    prepared_dir: str = "data/prepared/synthetic"  # Parquet shards + manifest.json
    load_size: int | None = None  # null: preset
    crop_size: int | None = None  # null: preset
    aspect_ratio: float | None = None  # null: preset (width / height)
    flip: bool = True  # random horizontal flip at training time
    num_workers: int = 0  # DataLoader worker processes; 0: load in the training process (enough on 2 CPUs)
    rows_per_shard: int = 512
    max_classes: int = 256  # custom datasets: more label ids than this is an error (8-bit label storage: <= 256)

    def __post_init__(self) -> None:
        _at_least(self, "dataset", 1, "load_size", "crop_size", "rows_per_shard", "max_classes")
        _at_least(self, "dataset", 0, "num_workers")
        _check(self.aspect_ratio is None or self.aspect_ratio > 0, "dataset.aspect_ratio", self.aspect_ratio,
               "must be > 0 (width / height, e.g. 2.0 for Cityscapes)")
        _check(self.max_classes <= 256, "dataset.max_classes", self.max_classes,
               "must be <= 256: prepared label maps store ids (and don't care) as 8-bit PNGs")


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_train: int = 256
    num_val: int = 128  # a Fréchet distance in the judge's 64-d features needs well over 64 images
    size: int = 64  # square scenes of size x size pixels

    def __post_init__(self) -> None:
        _check_seed("synthetic.seed", self.seed)
        _at_least(self, "synthetic", 0, "num_train", "num_val")
        _at_least(self, "synthetic", 1, "size")


@dataclass(frozen=True)
class ModelConfig:
    # dagan: SPADE + SAM/CAM | ccfpse: CC-FPSE conditional convs (docs/CCFPSE.md) | ca2sis: cross-attention
    # generator (docs/ATTENTION.md)
    generator: GeneratorKind = "dagan"
    discriminator: DiscriminatorKind = "multiscale"  # multiscale PatchGAN | fpse: CC-FPSE feature pyramid + semantics
    variant: Variant = "B6"  # paper Table 4 (generator=dagan only); "custom" uses use_sam and cam below
    use_sam: bool | None = None  # only with variant=custom
    cam: CamMode | None = None  # only with variant=custom
    sam_kernel_size: int = 3  # k of the k x k SAM convolution (official: 3)
    cam_sources: Literal["official", "all"] = "official"  # CAM fuses the last earlier scale, or all (Eq. 5)
    ngf: int | None = None  # null: preset
    ndf: int | None = None  # null: preset
    num_upsampling_layers: UpsamplingMode | None = None  # null: preset
    num_discriminators: int = 2
    n_layers_d: int = 4
    init_gain: float = 0.02
    # false: as the official code on a GPU, where spectral-norm convolutions keep PyTorch's default init
    init_spectral_norm_weights: bool = True
    spap: SpapPlacement = "off"  # SPAP unit (docs/ATTENTION.md) in the DAGAN generator, the discriminator, both or off
    spap_order: SpapOrder = "coarse_to_fine"  # SPAP cascade order over its pyramid levels
    ca2sis_style_dim: int = 256  # CA2SIS: width of each of the 5 per-class style codes (official --style_dim)
    ca2sis_exclude_background: bool = False  # CA2SIS: the mask embedder skips class 0 (official --exclude_bg)
    ca2sis_mapping_network: bool = True  # CA2SIS: build the official noise-to-style network (untrained here)

    # off: one image per label map | vae: SPADE's style encoder (dagan, ccfpse) | noise3d: OASIS's noise (dagan)
    style: StyleMode = "off"
    z_dim: int | None = None  # latent size of vae / noise3d; null: 256 (vae), 64 (noise3d); must stay null for off

    def spap_in(self, network: Literal["generator", "discriminator"]) -> bool:
        """Whether ``network`` gets a SPAP unit."""
        return self.spap in (network, "both")

    def __post_init__(self) -> None:
        _at_least(self, "model", 1, "ngf", "ndf", "num_discriminators", "n_layers_d", "ca2sis_style_dim")
        _check(self.init_gain > 0, "model.init_gain", self.init_gain,
               "must be > 0 (the standard deviation of the initial weights; official: 0.02)")
        _check(self.sam_kernel_size % 2 == 1 and self.sam_kernel_size > 0, "model.sam_kernel_size",
               self.sam_kernel_size, "must be odd and >= 1 (the SAM convolution keeps the map size)")
        if self.style == "off" and self.z_dim is not None:
            raise ConfigError(f"model.z_dim={self.z_dim} is set but model.style=off has no latent; set model.style "
                              "to vae or noise3d, or leave model.z_dim null")
        if self.z_dim is not None and self.z_dim < 1:
            raise ConfigError(f"model.z_dim={self.z_dim} must be >= 1 (or null for the style's default)")
        if self.style == "noise3d" and self.generator == "ccfpse":
            raise ConfigError("model.style=noise3d (OASIS's 3D noise) is built into the DAGAN generator only; "
                              "CC-FPSE has no 3D-noise variant: use model.style=vae (its official style encoder) "
                              "or off with model.generator=ccfpse")
        if self.style != "off" and self.generator == "ca2sis":
            raise ConfigError(f"model.style={self.style} is built into the DAGAN and CC-FPSE generators only; "
                              "model.generator=ca2sis has per-class styles of its own (generate --photos / "
                              "--style-image): set model.style=off, or model.generator=dagan or ccfpse")

    def labels(self) -> dict[str, str]:
        """Short labels of the model for run tags: generator, discriminator, variant ("-" when not DAGAN), spap."""
        return {"generator": self.generator, "discriminator": self.discriminator,
                "variant": self.variant if self.generator == "dagan" else "-", "spap": self.spap}

    def attention(self) -> tuple[bool, str]:
        """(use_sam, cam_mode) for this model, from the variant or the custom knobs."""
        if self.generator != "dagan":
            if self.use_sam is not None or self.cam is not None:
                raise ConfigError(f"model.use_sam/model.cam choose DAGAN's attention modules; model.generator="
                                  f"{self.generator} has none: leave them null or set model.generator=dagan")
            return False, "off"
        if self.variant == "custom":
            if self.use_sam is None or self.cam is None:
                raise ConfigError("model.variant=custom needs model.use_sam (true/false) and model.cam (off/I/II)")
            return self.use_sam, self.cam
        if self.use_sam is not None or self.cam is not None:
            raise ConfigError(
                f"model.use_sam/model.cam are set but model.variant={self.variant} already fixes them; "
                "set model.variant=custom to choose them yourself, or leave them null"
            )
        return VARIANTS[self.variant]


@dataclass(frozen=True)
class LossConfig:
    lambda_gan: float = 1.0  # paper Eq. 10, lambda_cgan
    lambda_feat: float = 10.0  # lambda_f
    lambda_vgg: float = 0.0  # lambda_p (the paper's value: 10; it needs VGG19 weights, README); 0: no perceptual loss
    lambda_att: float = 1.0  # CA2SIS attention loss L_att (official weight with --att_loss: 1); only for ca2sis
    vgg_weights: str = "auto"  # a .pth file of torchvision's vgg19 ImageNet weights, or auto (torch cache)
    vgg_input: Literal["official", "imagenet"] = "official"  # VGG sees [-1, 1] images (official) or ImageNet-normalised
    lambda_kld: float = 0.05  # KL term of the style encoder (model.style=vae only; SPADE's value)

    def __post_init__(self) -> None:
        # a negative weight would reverse a loss (0 switches it off)
        _at_least(self, "loss", 0, "lambda_gan", "lambda_feat", "lambda_vgg", "lambda_att", "lambda_kld",
                  hint=" (0 switches that loss off)")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int | None = None  # global batch; null: preset
    epochs: int | None = None  # constant-lr epochs; null: preset
    epochs_decay: int | None = None  # linear-decay epochs; null: preset
    lr_schedule: Literal["official", "linear"] | None = None  # official: per epoch | linear: per step; null: preset
    max_steps: int = 0  # stop after this many steps when > 0 (smoke runs, sweeps)
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    seed: int = 0
    device: str = "auto"  # auto (cuda if present, else cpu) | cpu | cuda | cuda:N
    amp: Literal["off", "bf16", "fp16"] = "bf16"  # bf16/fp16: autocast | off: exact fp32 (the official computation)
    channels_last: bool = True  # NHWC tensors (oneDNN's bf16 kernels); false with amp off for the exact fp32 path
    heap_reuse: bool = True  # keep freed memory in the heap (glibc mallopt; dagan/heap.py): faster steps
    ema_decay: float = 0.999  # > 0 keeps an EMA generator; 0: none (the official training)
    init_from: str | None = None  # checkpoint (trained or imported official) whose G (and D) weights start a new run
    ema_rampup: float = 0.05  # > 0: the EMA's half-life is at most this x the steps so far (dagan/ema.py); 0: off
    ema_bn_batches: int = 8  # > 0: EMA's batch-norm statistics recomputed on this many train batches per checkpoint
    out_dir: str = "outputs/train"
    checkpoint_every: int = 200  # steps
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 64  # steps between sample grids (the official display_freq: 100); 0: the last step's only

    def __post_init__(self) -> None:
        _at_least(self, "train", 1, "batch_size", hint=" (the global batch, split across processes)")
        _at_least(self, "train", 1, "checkpoint_every", "log_every", hint=" (steps)")
        _at_least(self, "train", 0, "epochs", "epochs_decay", "keep_last", "sample_every", "ema_rampup",
                  "ema_bn_batches")
        _at_least(self, "train", 0, "max_steps", hint=" (0: the whole schedule)")
        for name in ("lr_g", "lr_d"):
            _check(getattr(self, name) > 0, f"train.{name}", getattr(self, name), "must be > 0")
        for name in ("beta1", "beta2", "ema_decay"):
            _check(0 <= getattr(self, name) < 1, f"train.{name}", getattr(self, name), "must be in [0, 1)")
        _check_seed("train.seed", self.seed)


@dataclass(frozen=True)
class JudgeConfig:
    """The segmentation judge of the evaluation (paper section 4; dagan/eval/judge.py)."""

    width: int = 16  # channels of the first U-Net level (doubling per level)
    levels: int = 3  # U-Net levels; image sides must be divisible by 2**(levels-1)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2.0e-3  # Adam
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    pretrained: str | None = None  # TorchScript segmenter (e.g. exported DRN-D-105); null: train our own
    pretrained_label_map: str | None = None  # JSON {segmenter class id: dataset label id}, with pretrained
    pretrained_input: Literal["imagenet", "unit", "symmetric"] = "imagenet"  # pretrained input scaling
    out_dir: str = "outputs/judge"

    def __post_init__(self) -> None:
        _at_least(self, "judge", 1, "width", "levels", "epochs", "batch_size")
        _check(self.lr > 0, "judge.lr", self.lr, "must be > 0")
        _check_seed("judge.seed", self.seed)


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stage (components/evaluate.py)."""

    checkpoint: str | None = None  # generator checkpoint; null: <train.out_dir>/checkpoints/final.pt
    use_ema: bool = True  # the EMA generator when the checkpoint has one
    judge: str | None = None  # judge checkpoint; null: <judge.out_dir>/judge.pt
    split: str = "val"
    batch_size: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_grid_samples: int = 8  # rows of the label | generated | real grid
    num_attention_samples: int = 4  # rows of the attention figure (SAM, CAM, SPAP, CA2SIS cross-attention)
    style_from: Literal["photo", "class_mean"] = "photo"  # ca2sis styles: each scene's photo | the class means
    num_style_samples: int = 4  # multimodal models: K samples per label map for the diversity score and the grid
    style_latent: Literal["mean", "real_photo"] = "mean"  # scored images: z = 0 | vae: real photo style (official)
    fid: Literal["auto", "required", "off"] = "auto"  # auto: report when Inception weights exist, else why not
    fid_weights: str = "auto"  # torch-fidelity's Inception .pth, or auto: <torch hub dir>/checkpoints
    lpips: Literal["auto", "required", "off"] = "auto"  # auto: report when LPIPS weights exist, else why not
    download_weights: bool = True  # fetch missing FID/LPIPS weights into the torch hub cache when online
    out_dir: str = "outputs/eval"

    def __post_init__(self) -> None:
        _at_least(self, "evaluate", 1, "batch_size", "num_grid_samples", "num_attention_samples")
        if self.num_style_samples < 2:
            raise ConfigError(f"evaluate.num_style_samples={self.num_style_samples} must be >= 2 (the diversity "
                              "score is a mean distance between pairs of samples)")


@dataclass(frozen=True)
class Config:
    """The library's sections. A subclass (the steps' config) may add sections; they stay out of
    :meth:`to_dict`, so checkpoints and ``config.yaml`` files hold only these."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the library's sections (a subclass's own sections are left out): what checkpoints
        and ``config.yaml`` files store."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(Config)}

    def resolved(self) -> Self:
        """Fill every ``null`` that a preset provides; check the attention knobs."""
        preset = get_preset(self.dataset.name)
        self.model.attention()
        if self.model.generator != "dagan" and self.model.spap_in("generator"):
            raise ConfigError(f"model.spap={self.model.spap} puts SPAP into the DAGAN generator, but "
                              f"model.generator={self.model.generator}; use model.spap=discriminator (or off) with it")
        if self.model.discriminator != "multiscale" and self.model.spap_in("discriminator"):
            raise ConfigError(f"model.spap={self.model.spap} puts SPAP into the multiscale discriminator, but "
                              f"model.discriminator={self.model.discriminator}; use model.spap=generator (or off)")
        fill: dict[str, dict[str, Any]] = {
            "dataset": {"load_size": preset.load_size, "crop_size": preset.crop_size,
                        "aspect_ratio": preset.aspect_ratio},
            "model": {"ngf": preset.ngf, "ndf": preset.ndf,
                      "num_upsampling_layers": preset.num_upsampling_layers,
                      "z_dim": DEFAULT_Z_DIM.get(self.model.style)},
            "train": {"batch_size": preset.batch_size, "epochs": preset.epochs,
                      "epochs_decay": preset.epochs_decay, "lr_schedule": preset.lr_schedule},
        }
        sections = {}
        for name, values in fill.items():
            sec = getattr(self, name)
            sections[name] = dataclasses.replace(
                sec, **{k: v for k, v in values.items() if getattr(sec, k) is None}
            )
        resolved = dataclasses.replace(self, **sections)
        epochs = resolved_value(resolved.train.epochs) + resolved_value(resolved.train.epochs_decay)
        _check(epochs >= 1, "train.epochs + train.epochs_decay", epochs, "must be >= 1: there is nothing to train")
        resolved.check_image_size()
        return resolved

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the training crops (resolved config)."""
        crop, aspect = resolved_value(self.dataset.crop_size), resolved_value(self.dataset.aspect_ratio)
        return round(crop / aspect), crop

    def check_image_size(self) -> None:
        """The generator doubles its start map ``2**num_up`` times (DAGAN, CC-FPSE): image sides are multiples
        of that. CA2SIS is built for one image size whose sides are multiples of 64 (its style encoder); the FPSE
        discriminator needs sides that are multiples of 32 and at least 64 (so a sweep refuses it up front)."""
        height, width = self.image_size()
        if self.model.discriminator == "fpse" and (height % FPSE_SIZE_MULTIPLE or width % FPSE_SIZE_MULTIPLE
                                                   or min(height, width) < 2 * FPSE_SIZE_MULTIPLE):
            raise ConfigError(
                f"model.discriminator=fpse needs image sides that are multiples of {FPSE_SIZE_MULTIPLE} and at least "
                f"{2 * FPSE_SIZE_MULTIPLE}, got {height}x{width} (dataset.crop_size={self.dataset.crop_size}, "
                f"dataset.aspect_ratio={self.dataset.aspect_ratio}); set dataset.crop_size accordingly or use "
                "model.discriminator=multiscale"
            )
        if self.model.generator == "ca2sis" and (height % CA2SIS_SIZE_MULTIPLE or width % CA2SIS_SIZE_MULTIPLE):
            raise ConfigError(
                f"model.generator=ca2sis needs image sides that are multiples of {CA2SIS_SIZE_MULTIPLE}, got "
                f"{height}x{width} (dataset.crop_size={self.dataset.crop_size}, dataset.aspect_ratio="
                f"{self.dataset.aspect_ratio}); set dataset.crop_size to a multiple of {CA2SIS_SIZE_MULTIPLE}"
            )
        doublings = NUM_UP[resolved_value(self.model.num_upsampling_layers)]
        factor = 2**doublings
        if self.model.generator != "ca2sis" and (height % factor or width % factor or min(height, width) < 1):
            raise ConfigError(
                f"image sides must be multiples of {factor} (2**{doublings} for model.num_upsampling_layers="
                f"{self.model.num_upsampling_layers}), got {height}x{width} "
                f"(dataset.crop_size={self.dataset.crop_size}, dataset.aspect_ratio={self.dataset.aspect_ratio}); "
                f"set dataset.crop_size to a multiple of {factor} (and crop_size / aspect_ratio too)")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float only) or raise ConfigError."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is a {type(value).__name__}, expected a mapping")
        key_type, value_type = get_args(tp)
        return {_check_value(k, key_type, where): _check_value(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return None
        errors = []
        for option in get_args(tp):
            if option is type(None):
                continue
            try:
                return _check_value(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in get_args(tp):
            return "on" if value else "off"  # YAML 1.1 reads a bare off/on (-S train.amp=off) as a boolean
        if value not in get_args(tp):
            choices = ", ".join(str(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of: {choices}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} is not a finite number; NaN and infinities are never a valid setting")
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where}: {value!r} is a {type(value).__name__}, expected {_type_name(tp)}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        section = f"{where}: " if where else ""  # the top level: the message starts at the key
        raise ConfigError(f"{section}unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _check_value(value, tp, f"{where}.{name}")
    return cls(**kwargs)


ConfigT = TypeVar("ConfigT", bound=Config)  # Config or a subclass with more sections (``schema``)
Overrides = typing.Iterable[str] | dict[str, Any]  # -S strings, or {dotted key: value} (dagan.overrides)


@typing.overload
def config_from_dict(data: dict[str, Any], source: str = ...) -> Config: ...
@typing.overload
def config_from_dict(data: dict[str, Any], source: str, schema: type[ConfigT]) -> ConfigT: ...
def config_from_dict(data: dict[str, Any], source: str = "<dict>", schema: type[Config] = Config) -> Config:
    """``data`` (section -> key -> value) checked into ``schema``, unresolved; errors name ``source``."""
    try:
        return _build(schema, data or {}, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {str(err).lstrip('.')}") from None


def read_params(path: str | Path, overrides: Overrides = ()) -> dict[str, Any]:
    """The params file at ``path`` with ``overrides`` applied, as a plain dict (not checked against a schema)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --params FILE")
    with path.open() as fh:
        try:
            data = load_yaml(fh) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file holds a {type(data).__name__} ({str(data)[:60]!r}), not a mapping of "
                          "sections (dataset:, model:, train:, ...); see params.yaml for the layout")
    try:
        merged = merge_overrides(data, overrides)
    except OverrideError as err:
        raise ConfigError(f"{path}: {err}") from None
    for key, number in surprising_numbers(merged):  # YAML 1.1's 1:30 = 90, 0x10 = 16, ...
        raise ConfigError(f"{path}: {key}: {number.explain()}")
    return merged


@typing.overload
def load_config(path: str | Path = ..., overrides: Overrides = ...) -> Config: ...
@typing.overload
def load_config(path: str | Path, overrides: Overrides, schema: type[ConfigT]) -> ConfigT: ...
def load_config(path: str | Path = "params.yaml", overrides: Overrides = (), schema: type[Config] = Config) -> Config:
    """Load ``path``, apply ``overrides``, check every section of ``schema`` and resolve preset defaults."""
    config = config_from_dict(read_params(path, overrides), str(path), schema)
    try:
        return config.resolved()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the (resolved) config's library sections (:meth:`Config.to_dict`) as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
