"""One typed, frozen configuration loaded from ``params.yaml`` with dotted overrides.

Each top-level section of ``params.yaml`` maps to one frozen dataclass below. Unknown keys
and wrong types are errors that name the key, the value and the file. Fields left ``null``
take the dataset preset's value (:mod:`dagan.presets`) when the config is resolved, so that
``dataset.name=cityscapes`` alone gives the official Cityscapes settings.

Overrides use the syntax of ``dvc exp run -S``: ``section.key=value``, the value parsed as
YAML (``train.lr_g=2e-4``, ``model.variant=B1``, ``model.use_sam=true``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from dagan.presets import get_preset

Variant = Literal["B1", "B2", "B3", "B4", "B5", "B6", "custom"]
CamMode = Literal["off", "I", "II"]
UpsamplingMode = Literal["normal", "more", "most"]

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


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "synthetic"  # preset: cityscapes | ade20k | celebamask_hq | facades | coco_stuff | custom | synthetic
    raw_dir: str = "data/raw/synthetic"  # raw dataset in its original layout
    prepared_dir: str = "data/prepared/synthetic"  # Parquet shards + manifest.json
    load_size: int | None = None  # null: preset
    crop_size: int | None = None  # null: preset
    aspect_ratio: float | None = None  # null: preset (width / height)
    flip: bool = True  # random horizontal flip at training time
    num_workers: int = 2  # DataLoader worker processes
    rows_per_shard: int = 512


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_train: int = 256
    num_val: int = 128  # a Fréchet distance in the judge's 64-d features needs well over 64 images
    size: int = 64  # square scenes of size x size pixels


@dataclass(frozen=True)
class ModelConfig:
    variant: Variant = "B6"  # paper Table 4; "custom" uses use_sam and cam below
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

    def attention(self) -> tuple[bool, str]:
        """(use_sam, cam_mode) for this model, from the variant or the custom knobs."""
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
    lambda_vgg: float = 10.0  # lambda_p; 0 turns the perceptual loss (and VGG19) off
    vgg_weights: str = "auto"  # a .pth file of torchvision's vgg19 ImageNet weights, or auto (torch cache)
    vgg_input: Literal["official", "imagenet"] = "official"  # VGG sees [-1, 1] images (official) or ImageNet-normalised


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
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    heap_reuse: bool = True  # keep freed memory in the heap (glibc mallopt; dagan/heap.py): ~20% faster steps
    ema_decay: float = 0.0  # > 0 keeps an EMA generator
    init_from: str | None = None  # checkpoint (trained or imported official) whose G (and D) weights start a new run
    ema_rampup: float = 0.0  # > 0: the EMA's half-life is at most this x the steps so far (dagan/ema.py); 0: off
    ema_bn_batches: int = 0  # > 0: EMA's batch-norm statistics recomputed on this many train batches per checkpoint
    out_dir: str = "outputs/train"
    checkpoint_every: int = 200  # steps
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 200


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "dagan"


@dataclass(frozen=True)
class JudgeConfig:
    """The segmentation judge of the evaluation (paper section 4; dagan/judge.py)."""

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
    num_attention_samples: int = 4  # rows of the SAM / CAM figure
    fid: Literal["auto", "required", "off"] = "auto"  # auto: report when Inception weights exist, else why not
    fid_weights: str = "auto"  # torch-fidelity's Inception .pth, or auto: <torch hub dir>/checkpoints
    lpips: Literal["auto", "required", "off"] = "auto"  # auto: report when LPIPS weights exist, else why not
    download_weights: bool = True  # fetch missing FID/LPIPS weights into the torch hub cache when online
    out_dir: str = "outputs/eval"


@dataclass(frozen=True)
class RegisterConfig:
    """The register stage: MLflow registry gate (components/register.py)."""

    model_name: str | None = None  # null: dagan-<dataset.name>
    metric: str = "judge_miou_generated"  # key of outputs/eval/metrics.json that ranks versions
    greater_is_better: bool = True
    gate_miou_ratio: float = 0.6  # champion needs judge mIoU(generated) >= ratio x judge mIoU(real)
    gate_fd_beats_baseline: bool = True  # champion needs fd_judge(generated) < fd_judge(mean-colour baseline)
    out_dir: str = "outputs/register"


def _default_search_space() -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "loss": {"lambda_feat": {"type": "loguniform", "low": 1.0, "high": 30.0},
                 "lambda_gan": {"type": "loguniform", "low": 0.3, "high": 3.0}},
        "model": {"variant": {"type": "choice", "values": ["B1", "B2", "B3", "B4", "B5", "B6"]}},
    }


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune sweeps of loss weights and attention variants (components/tune.py, docs/TUNE.md)."""

    # section -> key -> {type: loguniform | uniform (low, high) | choice (values)}; validated by dagan.search_space
    search_space: dict[str, dict[str, dict[str, Any]]] = field(default_factory=_default_search_space)
    # fd_judge (judge Fréchet distance, minimised; separates learning from flat painting) | judge_miou (maximised)
    metric: Literal["judge_miou", "fd_judge"] = "fd_judge"
    num_samples: int = 8  # trials
    max_steps: int = 2000  # training steps per trial (its train.max_steps)
    eval_every: int = 200  # steps between judge evaluations = Tune reports = trial checkpoints
    eval_batches: int = 8  # validation batches (evaluate.batch_size images each) per evaluation
    grace_period: int = 400  # ASHA: steps a trial runs before it can be stopped
    reduction_factor: int = 2  # ASHA: 1/reduction_factor of the trials go on at each rung
    cpus_per_trial: float = 2.0
    gpus_per_trial: float | None = None  # null: 1 when the Ray cluster has GPUs, else 0; > 0 without a GPU: error
    max_concurrent_trials: int = 0  # 0: as many as the resources allow
    num_cpus: int | None = None  # local Ray only (no --address): CPUs Ray may use; null: all
    name: str = "dagan-tune"  # Ray Tune experiment (folder under storage_path; --resume restores it)
    storage_path: str = "outputs/tune/ray"  # local folder or s3://bucket/prefix (endpoint: $AWS_ENDPOINT_URL)
    out_dir: str = "outputs/tune"  # best_params.yaml, best.json, results.csv, mlflow_run.json

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_steps", "eval_every", "eval_batches", "grace_period"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tune.{name}={getattr(self, name)} must be >= 1")
        if self.reduction_factor < 2:
            raise ConfigError(f"tune.reduction_factor={self.reduction_factor} must be >= 2")
        if self.cpus_per_trial <= 0 or (self.gpus_per_trial is not None and self.gpus_per_trial < 0):
            raise ConfigError("tune.cpus_per_trial must be > 0 and tune.gpus_per_trial >= 0 (or null)")


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. for MLflow params."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def resolved(self) -> Config:
        """Fill every ``null`` that a preset provides; check the attention knobs."""
        preset = get_preset(self.dataset.name)
        self.model.attention()
        fill = {
            "dataset": {"load_size": preset.load_size, "crop_size": preset.crop_size,
                        "aspect_ratio": preset.aspect_ratio},
            "model": {"ngf": preset.ngf, "ndf": preset.ndf,
                      "num_upsampling_layers": preset.num_upsampling_layers},
            "train": {"batch_size": preset.batch_size, "epochs": preset.epochs,
                      "epochs_decay": preset.epochs_decay, "lr_schedule": preset.lr_schedule},
        }
        sections = {}
        for name, values in fill.items():
            sec = getattr(self, name)
            sections[name] = dataclasses.replace(
                sec, **{k: v for k, v in values.items() if getattr(sec, k) is None}
            )
        return dataclasses.replace(self, **sections)


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
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _check_value(value, tp, f"{where}.{name}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr_g=2e-4"`` -> (["train", "lr_g"], 0.0002). The value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or "." not in key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr_g=2e-4)")
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "2e-4" as a string
    return key.split("."), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in "e.") and text.strip().lower() not in {"nan", "inf", "-inf", "+inf"}


def merge_overrides(data: dict[str, Any], overrides: typing.Iterable[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides (strings ``a.b=v`` or a dict ``{"a.b": v}``) to a nested dict copy."""
    merged = json.loads(json.dumps(data))
    items = (
        [(k.split("."), v) for k, v in overrides.items()] if isinstance(overrides, dict)
        else [parse_override(o) for o in overrides]
    )
    for path, value in items:
        node = merged
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
        node[path[-1]] = value
    return merged


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return _build(Config, data or {}, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {str(err).lstrip('.')}") from None


def load_config(path: str | Path = "params.yaml", overrides: typing.Iterable[str] | dict[str, Any] = ()) -> Config:
    """Load ``path``, apply ``overrides``, validate and resolve preset defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --params FILE")
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(merge_overrides(data, overrides), str(path)).resolved()


def save_config(config: Config, path: str | Path) -> None:
    """Write the (resolved) config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    tmp.replace(path)
