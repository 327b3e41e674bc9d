"""Official DAGAN / SPADE checkpoints <-> this project's checkpoints.

* :func:`import_official`: the official ``latest_net_G.pth`` (and optionally ``latest_net_D.pth``)
  -> one project checkpoint (``dagan.checkpoint`` format) that ``generate``, ``evaluate``,
  ``register``, serving and ``train.init_from`` accept. DAGAN checkpoints become variant B6,
  SPADE/GauGAN checkpoints variant B1; ``ngf`` is read from the file (the official code trains at
  64). The file must fit the preset's layout key for key and shape for shape, else a
  :class:`~dagan.official.layout.LayoutError` names the first key that differs.
* :func:`export_official`: a project checkpoint -> the official state dicts, key for key and in
  the official order, which the official ``test.py`` loads (``--checkpoints_dir DIR/..
  --name DIR.name --which_epoch latest``). Only the architectures the official code has can be
  exported: B1 at any ngf, B6 at ngf 64 with the official CAM (one earlier scale) and a 3x3 SAM.

Models with SPADE's style encoder (official ``--use_vae``, ``model.style=vae``): the generator file
has a linear ``fc`` (z -> 16 ngf x sh x sw); the importer then reads the encoder file too, given or
found beside the generator (``latest_net_G.pth`` -> ``latest_net_E.pth``), into ``generator.encoder``,
and the exporter writes ``<epoch>_net_E.pth`` beside ``_net_G.pth``.

Key map and order: :mod:`dagan.official.layout`. Loads are ``weights_only``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from dagan.atomic import atomic_write
from dagan.checkpoint import FORMAT_VERSION, checkpoint_config, load_checkpoint, save_checkpoint
from dagan.config import Config, ConfigError, config_from_dict, resolved_value
from dagan.data.classes import class_table
from dagan.data.shards import sha256_of
from dagan.discriminator import build_discriminator
from dagan.finite import describe_non_finite, non_finite_tensors
from dagan.generator import build_generator, latent_map_size
from dagan.inference import LabelLayout
from dagan.nn.style import LatentStyle
from dagan.official.layout import ENCODER_PREFIX, LayoutError, check_layout, key_map, strip_data_parallel
from dagan.presets import get_preset

OFFICIAL_CODE = {"B6": "DAGAN", "B1": "SPADE"}
OFFICIAL_NGF = 64  # the official DAGAN attention modules hard-code 128 -> 64 channels
FILE_NAMES = {"generator": "net_G", "discriminator": "net_D", "encoder": "net_E"}


def official_config(preset: str, variant: str, ngf: int = OFFICIAL_NGF, overrides: dict | None = None) -> Config:
    """The resolved config of an official model: the preset's settings, ``variant`` and ``ngf``."""
    if variant not in OFFICIAL_CODE:
        raise ConfigError(f"variant {variant!r}: the official code has B6 (DAGAN) and B1 (SPADE/GauGAN) only")
    model = {"variant": variant, "ngf": ngf, **(overrides or {}).get("model", {})}
    data = {**(overrides or {}), "dataset": {"name": preset, **(overrides or {}).get("dataset", {})}, "model": model}
    return config_from_dict(data, f"official {preset} {variant}").resolved()


def label_layout(preset: str) -> LabelLayout:
    """The label layout of a named dataset preset, with its class names and colours."""
    info = get_preset(preset)
    names, colors = class_table(preset)
    return LabelLayout(info.num_classes, info.contain_dontcare_label, info.has_instance, names, colors)


def load_official_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """An official state dict from ``path`` (``weights_only``), without a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise LayoutError(f"{what} {path} is not a readable PyTorch state dict ({type(err).__name__}); "
                          "pass the official latest_net_G.pth / latest_net_D.pth") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LayoutError(f"{what} {path} is not a state dict of tensors (the official code saves "
                          "network.state_dict())")
    bad = non_finite_tensors(state)
    if bad:
        raise ValueError(f"{what} {path} holds {describe_non_finite(bad)}: its weights are damaged (or come from a "
                         "training that diverged); nothing was imported: use another checkpoint of that model")
    return strip_data_parallel(state)


def _renamed_in(module: nn.Module, state: dict[str, torch.Tensor], role: str, what: str) -> dict[str, torch.Tensor]:
    """The official ``state`` checked against ``module``'s layout, under our names and in our dtypes."""
    pairs = key_map(module, role)
    check_layout(state, pairs, what)
    dtypes = {key: value.dtype for key, value in module.state_dict().items()}
    return {pair.ours: state[pair.official].to(dtypes[pair.ours]) for pair in pairs}


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], role: str, what: str) -> nn.Module:
    module.load_state_dict(_renamed_in(module, state, role, what))
    return module


def import_generator(state: dict[str, torch.Tensor], config: Config, semantic_nc: int, what: str = "generator",
                     encoder_state: dict[str, torch.Tensor] | None = None, encoder_what: str = "encoder"):
    """Our generator (eval mode) holding the official generator ``state`` (and, for ``model.style=vae``,
    the official encoder's ``encoder_state``)."""
    generator = build_generator(config, semantic_nc)
    weights = _renamed_in(generator, state, "generator", what)
    style_encoder = cast(LatentStyle, generator).encoder  # a DAGAN generator: its encoder with model.style=vae
    if style_encoder is not None:
        if encoder_state is None:
            raise LayoutError(f"{what} is a VAE generator (--use_vae): pass its encoder, latest_net_E.pth")
        encoder = _renamed_in(style_encoder, encoder_state, "encoder", encoder_what)
        weights.update({ENCODER_PREFIX + key: value for key, value in encoder.items()})
    generator.load_state_dict(weights)
    return generator.eval()


def encoder_beside(generator_path: Path) -> Path | None:
    """``<epoch>_net_E.pth`` next to ``<epoch>_net_G.pth``, when it exists."""
    if "_net_G" not in generator_path.name:
        return None
    candidate = generator_path.with_name(generator_path.name.replace("_net_G", "_net_E"))
    return candidate if candidate.is_file() else None


def import_discriminator(state: dict[str, torch.Tensor], config: Config, semantic_nc: int,
                         what: str = "discriminator"):
    """Our multiscale discriminator holding the official discriminator ``state``."""
    return _load_into(build_discriminator(config, semantic_nc), state, "discriminator", what)


def _vae_overrides(generator_state: dict[str, torch.Tensor], encoder_path: Path | None, where: str,
                   config: Config) -> dict:
    """{"model": {"style": "vae", "z_dim": ...}} for a VAE generator (linear fc), else {}; checks --encoder.

    ``config``: the official model's config without a style; its image size fixes a VAE generator's fc rows."""
    fc = generator_state["fc.weight"]
    if fc.dim() != 2:
        if encoder_path is not None:
            raise LayoutError(f"{where}: not a VAE generator (its fc is a convolution), so it has no encoder; "
                              f"drop the encoder file {encoder_path}")
        return {}
    ngf = resolved_value(config.model.ngf)
    height, width = latent_map_size(config)
    if fc.shape[0] != 16 * ngf * height * width:  # neither this preset's VAE fc nor a convolution: a damaged layer
        semantic_nc = get_preset(config.dataset.name).semantic_nc
        raise LayoutError(f"{where}: first mismatching key fc.weight: the file has shape {list(fc.shape)}, the model "
                          f"expects [{16 * ngf}, {semantic_nc}, 3, 3] (or [{16 * ngf * height * width}, z_dim] for a "
                          "VAE generator, --use_vae); check --preset and the file")
    if encoder_path is None:
        raise LayoutError(f"{where} is a VAE generator (--use_vae, fc is linear) and no encoder file was given "
                          "or found beside it; pass --encoder latest_net_E.pth")
    return {"model": {"style": "vae", "z_dim": generator_state["fc.weight"].shape[1]}}


def import_official(generator_path: str | Path, preset: str, variant: str | None = None,
                    discriminator_path: str | Path | None = None, overrides: dict | None = None,
                    encoder_path: str | Path | None = None) -> dict[str, Any]:
    """Official checkpoint file(s) -> a project checkpoint dict (see :func:`write_imported`).

    A VAE generator (``--use_vae``) needs its encoder: ``encoder_path``, or ``<epoch>_net_E.pth`` beside it."""
    generator_state = load_official_state(generator_path, "generator checkpoint")
    detected = "B6" if "conv_64.weight" in generator_state else "B1"
    variant = variant or detected
    where = f"generator checkpoint {generator_path}"
    if "fc.weight" not in generator_state or "head_0.conv_0.weight_orig" not in generator_state:
        raise LayoutError(f"{where}: no key fc.weight / head_0.conv_0.weight_orig; not an official DAGAN/SPADE "
                          "generator")
    ngf = generator_state["head_0.conv_0.weight_orig"].shape[0] // 16
    encoder_path = Path(encoder_path) if encoder_path is not None else encoder_beside(Path(generator_path))
    vae = _vae_overrides(generator_state, encoder_path, where, official_config(preset, variant, ngf, overrides))
    overrides = overrides or {}
    overrides = {**overrides, "model": {**overrides.get("model", {}), **vae.get("model", {})}}
    config = official_config(preset, variant, ngf, overrides)
    semantic_nc = get_preset(preset).semantic_nc
    # _vae_overrides checked that an encoder file is given exactly for a VAE generator
    encoder_state = load_official_state(encoder_path, "encoder checkpoint") if encoder_path is not None else None
    generator = import_generator(generator_state, config, semantic_nc, where, encoder_state,
                                 f"encoder checkpoint {encoder_path}")
    discriminator = None
    if discriminator_path is not None:
        state = load_official_state(discriminator_path, "discriminator checkpoint")
        discriminator = import_discriminator(state, config, semantic_nc,
                                             f"discriminator checkpoint {discriminator_path}").state_dict()
    files = {"generator": Path(generator_path)}
    if discriminator_path is not None:
        files["discriminator"] = Path(discriminator_path)
    if encoder_path is not None:
        files["encoder"] = encoder_path
    origin = {"kind": "official", "code": OFFICIAL_CODE[variant], "preset": preset, "variant": variant,
              "files": {role: {"name": path.name, "sha256": sha256_of(path)} for role, path in files.items()}}
    return {
        "format_version": FORMAT_VERSION, "config": config.to_dict(), "semantic_nc": semantic_nc,
        "generator": generator.state_dict(), "discriminator": discriminator, "ema": None,
        "layout": label_layout(preset).to_dict(), "origin": origin, "step": 0, "epoch": 0,
    }


def write_imported(checkpoint: dict[str, Any], out: str | Path) -> Path:
    """Write an imported checkpoint atomically; refuse to overwrite an existing file."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out or delete it first")
    return save_checkpoint(checkpoint, out)


def _exportable(config: Config) -> str:
    """The official code ("DAGAN"/"SPADE") that runs this model, or a ConfigError saying why none does."""
    model = config.model
    if model.style == "noise3d":
        raise ConfigError("model.style=noise3d (OASIS's 3D noise) has no counterpart in the official DAGAN/SPADE "
                          "code: only style off or vae (--use_vae) can be exported")
    if (model.generator, model.discriminator) != ("dagan", "multiscale"):
        raise ConfigError(f"model.generator={model.generator}, model.discriminator={model.discriminator}: only "
                          "DAGAN / SPADE models (generator dagan, discriminator multiscale) can be exported")
    if model.spap != "off":
        raise ConfigError(f"model.spap={model.spap}: the official DAGAN/SPADE code has no SPAP units; only models "
                          "with model.spap=off can be exported")
    use_sam, cam = model.attention()
    if (use_sam, cam) == (False, "off"):
        return "SPADE"
    if (use_sam, cam) != (True, "II"):
        raise ConfigError(f"variant {model.variant} (SAM {use_sam}, CAM {cam}) has no official code: only B1 "
                          "(SPADE/GauGAN) and B6 (DAGAN) can be exported")
    problems = []
    if model.ngf != OFFICIAL_NGF:
        problems.append(f"model.ngf={model.ngf} (the official DAGAN hard-codes 64)")
    if model.cam_sources != "official":
        problems.append("model.cam_sources=all (the official CAM fuses one earlier scale)")
    if model.sam_kernel_size != 3:
        problems.append(f"model.sam_kernel_size={model.sam_kernel_size} (the official SAM is 3x3)")
    if model.num_upsampling_layers == "most":
        problems.append("num_upsampling_layers=most (the official DAGAN forward fails with it)")
    if problems:
        raise ConfigError("this B6 model cannot run in the official DAGAN code: " + "; ".join(problems))
    return "DAGAN"


def official_state_dicts(checkpoint: dict[str, Any], use_ema: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """{"generator": ..., ["encoder": ...], ["discriminator": ...]} official state dicts of a project checkpoint,
    in official order."""
    config = checkpoint_config(checkpoint, "checkpoint")
    _exportable(config)
    weights = checkpoint["ema"] if use_ema and checkpoint.get("ema") is not None else checkpoint["generator"]
    with torch.device("meta"):
        generator = build_generator(config, checkpoint["semantic_nc"])
        discriminator = build_discriminator(config, checkpoint["semantic_nc"])
    result = {"generator": _renamed(weights, key_map(generator, "generator"))}
    style_encoder = cast(LatentStyle, generator).encoder  # a DAGAN generator: its encoder with model.style=vae
    if style_encoder is not None:
        encoder = {key.removeprefix(ENCODER_PREFIX): value for key, value in weights.items()
                   if key.startswith(ENCODER_PREFIX)}
        result["encoder"] = _renamed(encoder, key_map(style_encoder, "encoder"))
    if checkpoint.get("discriminator"):  # None or {}: an exported generator has no discriminator
        result["discriminator"] = _renamed(checkpoint["discriminator"], key_map(discriminator, "discriminator"))
    return result


def _renamed(state: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    return {pair.official: state[pair.ours].detach().cpu().contiguous() for pair in pairs}


def export_official(checkpoint_path: str | Path, out_dir: str | Path, use_ema: bool = False,
                    epoch: str = "latest") -> list[Path]:
    """Write ``<out_dir>/<epoch>_net_G.pth`` (and ``_net_E.pth`` for a vae, ``_net_D.pth`` when the checkpoint
    has D); return the paths."""
    states = official_state_dicts(load_checkpoint(checkpoint_path), use_ema)
    out_dir = Path(out_dir)
    targets = {role: out_dir / f"{epoch}_{FILE_NAMES[role]}.pth" for role in states}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist(s); choose another --out or delete them first")
    out_dir.mkdir(parents=True, exist_ok=True)
    for role, path in targets.items():
        with atomic_write(path) as tmp:
            torch.save(states[role], tmp)
    return list(targets.values())
