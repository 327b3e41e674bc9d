"""``python -m dagan``: small everyday commands of the library.

* ``describe --preset NAME [--variant B6] [-S key=value ...] [--json]``: the model built for a
  dataset preset (official settings, ngf from the preset, any config override) with its parameter
  counts; ``generator_params`` leaves out the style encoder (``encoder_params``), as the official
  code counts its networks.
* ``generate --model URI --labels DIR --out DIR [--style IMAGE] [--seed N] [--num-samples K]``:
  label maps -> images. ``URI`` is a local checkpoint (read here) or an MLflow ``models:/`` /
  ``runs:/`` URI (handed to ``components.generate``, imported only then: the library itself
  never imports mlflow).
* ``import-official``, ``export-official``, ``verify-official``: the official DAGAN / SPADE
  checkpoints and reference outputs (:mod:`dagan.official.cli`, docs/OFFICIAL.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from dagan.config import VARIANTS, Config, ConfigError, add_override_argument, config_from_dict, merge_overrides
from dagan.discriminator import build_discriminator
from dagan.generate import add_generate_arguments, generate_dir, load_synthesizer
from dagan.generator import build_generator
from dagan.official.cli import add_official_commands, run_official_command
from dagan.presets import PRESETS, get_preset


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(preset_name: str, variant: str = "B6", overrides: dict | list[str] | None = None) -> dict:
    """Build G and D for ``preset_name`` and return their description as a dict.

    ``overrides``: dotted config overrides, ``{"model.ngf": 32}`` or ``["model.style=vae"]``.
    """
    preset = get_preset(preset_name)
    if preset.num_classes == 0:
        raise ConfigError(
            f"preset {preset_name!r} takes its classes from a prepared manifest; describe a named dataset"
        )
    data = merge_overrides({"dataset": {"name": preset_name}, "model": {"variant": variant}}, overrides or {})
    if data["dataset"]["name"] != preset_name:
        raise ConfigError(f"describe --preset {preset_name}: set the dataset with --preset, not -S dataset.name")
    config: Config = config_from_dict(data, "describe").resolved()
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        generator = build_generator(config, preset.semantic_nc)
        discriminator = build_discriminator(config, preset.semantic_nc)
    use_sam, cam = config.model.attention()
    encoder_params = count_parameters(generator.encoder) if generator.encoder is not None else 0
    return {
        "preset": preset_name,
        "variant": config.model.variant,
        "semantic_nc": preset.semantic_nc,
        "ngf": config.model.ngf,
        "ndf": config.model.ndf,
        "num_upsampling_layers": config.model.num_upsampling_layers,
        "use_sam": use_sam,
        "cam": cam,
        "cam_sources": config.model.cam_sources,
        "style": config.model.style,
        "z_dim": config.model.z_dim,
        "generator_params": count_parameters(generator) - encoder_params,
        "encoder_params": encoder_params,
        "discriminator_params": count_parameters(discriminator),
        "image_size": [config.dataset.crop_size, round(config.dataset.crop_size / config.dataset.aspect_ratio)],
    }


def generate(args: argparse.Namespace) -> int:
    """``python -m dagan generate``: local checkpoints here, MLflow URIs through components.generate."""
    try:
        if args.model.startswith(("models:/", "runs:/")):
            from components.generate import load_from_mlflow

            synthesizer = load_from_mlflow(args.model)
        else:
            synthesizer = load_synthesizer(args.model, manifest_dir=args.manifest)
        written = generate_dir(synthesizer, args.labels, args.out, args.instances, args.edges_from_labels,
                               style=args.style, seed=args.seed, num_samples=args.num_samples)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagan", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    describe_cmd = commands.add_parser("describe", help="describe the model of a dataset preset")
    describe_cmd.add_argument("--preset", required=True, choices=sorted(PRESETS))
    describe_cmd.add_argument("--variant", default="B6", choices=sorted(VARIANTS))
    describe_cmd.add_argument("--ngf", type=int, help="override the preset's ngf")
    add_override_argument(describe_cmd)
    describe_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    add_generate_arguments(commands.add_parser("generate", help="turn label-map PNGs into images"))
    add_official_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return generate(args)
    if args.command.endswith("-official"):
        return run_official_command(args)

    try:
        overrides = ([f"model.ngf={args.ngf}"] if args.ngf else []) + args.overrides
        info = describe(args.preset, args.variant, overrides)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value:,}" if isinstance(value, int) and not isinstance(value, bool)
                  else f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
