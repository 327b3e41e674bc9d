"""``python -m dagan``: small everyday commands of the library.

* ``describe --preset NAME [--variant B6] [--json]``: the model built for a dataset preset
  (official settings, ngf from the preset) with its parameter counts.
* ``generate --model URI --labels DIR --out DIR``: label maps -> images. ``URI`` is a local
  checkpoint (read here) or an MLflow ``models:/`` / ``runs:/`` URI (handed to
  ``components.generate``, imported only then: the library itself never imports mlflow).
* ``import-official``, ``export-official``, ``verify-official``: the official DAGAN / SPADE
  checkpoints and reference outputs (:mod:`dagan.official.cli`, docs/OFFICIAL.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dagan.config import VARIANTS, Config, ConfigError, config_from_dict
from dagan.console import setup_logging
from dagan.discriminator import build_discriminator
from dagan.generate import add_generate_arguments, generate_dir, load_synthesizer
from dagan.generator import build_generator
from dagan.official.cli import add_official_commands, run_official_command
from dagan.presets import PRESETS, get_preset
from dagan.results_page import PAGE_FILE

DESCRIPTION = "Everyday commands of the DAGAN library: describe a preset's model, generate images from label maps."


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(preset_name: str, variant: str = "B6", overrides: dict | None = None) -> dict:
    """Build G and D for ``preset_name`` and return their description as a dict."""
    preset = get_preset(preset_name)
    if preset.num_classes == 0:
        raise ConfigError(
            f"preset {preset_name!r} takes its classes from a prepared manifest; describe a named dataset"
        )
    data = {"dataset": {"name": preset_name}, "model": {"variant": variant, **(overrides or {})}}
    config: Config = config_from_dict(data, "describe").resolved()
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        generator = build_generator(config, preset.semantic_nc)
        discriminator = build_discriminator(config, preset.semantic_nc)
    use_sam, cam = config.model.attention()
    return {
        "preset": preset_name,
        "variant": variant,
        "semantic_nc": preset.semantic_nc,
        "ngf": config.model.ngf,
        "ndf": config.model.ndf,
        "num_upsampling_layers": config.model.num_upsampling_layers,
        "use_sam": use_sam,
        "cam": cam,
        "cam_sources": config.model.cam_sources,
        "generator_params": count_parameters(generator),
        "discriminator_params": count_parameters(discriminator),
        "image_size": [config.dataset.crop_size, round(config.dataset.crop_size / config.dataset.aspect_ratio)],
    }


def generate(args: argparse.Namespace) -> int:
    """``python -m dagan generate``: local checkpoints here, MLflow URIs through components.generate."""
    setup_logging(args.log_level)
    try:
        if args.model.startswith(("models:/", "runs:/")):
            from components.generate import load_from_mlflow

            synthesizer = load_from_mlflow(args.model)
        else:
            synthesizer = load_synthesizer(args.model, manifest_dir=args.manifest)
        written = generate_dir(synthesizer, args.labels, args.out, args.instances, args.edges_from_labels,
                               images_dir=args.images, limit=args.limit)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) and {Path(args.out) / PAGE_FILE} to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagan", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    describe_cmd = commands.add_parser("describe", help="describe the model of a dataset preset")
    describe_cmd.add_argument("--preset", required=True, choices=sorted(PRESETS))
    describe_cmd.add_argument("--variant", default="B6", choices=sorted(VARIANTS))
    describe_cmd.add_argument("--ngf", type=int, help="override the preset's ngf")
    describe_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    add_generate_arguments(commands.add_parser("generate", help="turn label-map PNGs into images"))
    add_official_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return generate(args)
    if args.command.endswith("-official"):
        return run_official_command(args)

    try:
        info = describe(args.preset, args.variant, {"ngf": args.ngf} if args.ngf else None)
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
