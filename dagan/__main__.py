"""``python -m dagan``: small everyday commands of the library.

* ``describe --preset NAME [--variant B6] [--generator ccfpse|ca2sis] [-S key=value ...] [--json]``:
  the model built for a dataset preset (official settings, ngf from the preset) with its parameter
  counts; ``-S section.key=value`` overrides the config as in every component. ``generator_params``
  leaves out a style encoder (``encoder_params``, DAGAN and CC-FPSE with ``model.style=vae``), as
  the official code counts its networks.
* ``generate --model CHECKPOINT --labels DIR --out DIR [--style IMAGE] [--seed N] [--num-samples K]``
  ``[--photos DIR] [--style-image IMAGE --style-label PNG [--style-classes LIST]]``: label maps ->
  images (the latent of a ``model.style=vae|noise3d`` model; the per-class styles of a CA2SIS
  model). ``CHECKPOINT`` is a local checkpoint (a training checkpoint or an exported generator); an
  MLflow model (``models:/NAME@ALIAS``, ``runs:/RUN_ID/dagan-generator``) is served by
  ``python -m components.generate --model URI ...``, which takes the same arguments (the library
  never imports mlflow nor the steps).
* ``import-official``, ``export-official``, ``verify-official``, ``make-official-reference``: the official
  DAGAN / SPADE checkpoints and reference outputs (:mod:`dagan.official.cli`, docs/OFFICIAL.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dagan.config import VARIANTS, Config, ConfigError, config_from_dict
from dagan.console import setup_logging
from dagan.discriminator import build_discriminator
from dagan.disk import DISK_FULL, disk_full_line
from dagan.generator import build_generator
from dagan.inference import MODEL_URI_SCHEMES, Synthesizer, add_generate_arguments, generate_dir, load_synthesizer
from dagan.nn.spap import SpatialPyramidAttentivePooling
from dagan.official.cli import OFFICIAL_COMMANDS, add_official_commands, run_official_command
from dagan.overrides import merge_overrides
from dagan.presets import PRESETS, get_preset
from dagan.results_page import PAGE_FILE
from dagan.styles import style_edit

DESCRIPTION = "Everyday commands of the DAGAN library: describe a preset's model, generate images from label maps."


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(preset_name: str, variant: str = "B6", overrides: dict | None = None,
             settings: Sequence[str] = ()) -> dict:
    """Build G and D for ``preset_name`` and return their description as a dict.

    ``overrides``: model fields ({"ngf": 8}); ``settings``: dotted ``section.key=value`` overrides.
    """
    preset = get_preset(preset_name)
    if preset.num_classes == 0:
        raise ConfigError(
            f"preset {preset_name!r} takes its classes from a prepared manifest; describe a named dataset"
        )
    data = {"dataset": {"name": preset_name}, "model": {"variant": variant, **(overrides or {})}}
    data = merge_overrides(data, settings)
    if data["dataset"]["name"] != preset_name:
        raise ConfigError(f"describe --preset {preset_name}: set the dataset with --preset, not -S dataset.name")
    config: Config = config_from_dict(data, "describe").resolved()
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        generator = build_generator(config, preset.semantic_nc)
        discriminator = build_discriminator(config, preset.semantic_nc)
    model = config.model
    height, width = config.image_size()
    info = {"preset": preset_name, "generator": model.generator, "discriminator": model.discriminator,
            "semantic_nc": preset.semantic_nc, "ngf": model.ngf, "ndf": model.ndf}
    if model.generator == "dagan":  # the variant and attention knobs apply to DAGAN only
        use_sam, cam = model.attention()
        info.update(variant=model.variant, num_upsampling_layers=model.num_upsampling_layers, use_sam=use_sam,
                    cam=cam, cam_sources=model.cam_sources, style=model.style, z_dim=model.z_dim)
    elif model.generator == "ccfpse":
        info.update(num_upsampling_layers=model.num_upsampling_layers, style=model.style, z_dim=model.z_dim)
    else:
        info.update(ca2sis_style_dim=model.ca2sis_style_dim, ca2sis_exclude_background=model.ca2sis_exclude_background,
                    ca2sis_mapping_network=model.ca2sis_mapping_network,
                    generator_parts={name: count_parameters(part) for name, part in generator.named_children()})
    info.update(spap=model.spap, spap_order=model.spap_order)
    spap_units = [m for m in (*generator.modules(), *discriminator.modules())
                  if isinstance(m, SpatialPyramidAttentivePooling)]
    if spap_units:
        info["spap_params"] = sum(count_parameters(unit) for unit in spap_units)
    encoder = getattr(generator, "encoder", None)  # SPADE's style encoder (model.style=vae; dagan, ccfpse)
    encoder_params = count_parameters(encoder) if encoder is not None else 0
    info.update(generator_params=count_parameters(generator) - encoder_params, encoder_params=encoder_params,
                discriminator_params=count_parameters(discriminator), image_size=[width, height])
    return info


def load_local(model: str, manifest_dir: str | None) -> Synthesizer:
    """The Synthesizer of a local checkpoint; a model URI names the command that serves it."""
    if model.startswith(MODEL_URI_SCHEMES):
        raise ValueError(f"python -m dagan generate serves local checkpoints; serve {model} with "
                         f"python -m components.generate --model {model} (the same other arguments)")
    return load_synthesizer(model, manifest_dir=manifest_dir)


def generate(args: argparse.Namespace,
             load_model: Callable[[str, str | None], Synthesizer] = load_local) -> int:
    """Label maps -> images and index.html with the model ``load_model(args.model, args.manifest)`` returns.

    ``python -m dagan generate`` reads local checkpoints; ``python -m components.generate`` passes a
    loader that also resolves MLflow model URIs.
    """
    setup_logging(args.log_level)
    try:
        synthesizer = load_model(args.model, args.manifest)
        edit = None
        if args.style_image or args.style_label or args.style_classes:
            if not (args.style_image and args.style_label):
                raise ValueError("--style-image and --style-label go together (the reference photo and its label map)")
            edit = style_edit(synthesizer, args.style_image, args.style_label, args.style_classes)
        written = generate_dir(synthesizer, args.labels, args.out, args.instances, args.edges_from_labels,
                               photos_dir=args.photos, style_edit=edit, images_dir=args.images, limit=args.limit,
                               overwrite=args.overwrite, style=args.style, seed=args.seed,
                               num_samples=args.num_samples)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(disk_full_line(err), file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) and {Path(args.out) / PAGE_FILE} to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagan", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    describe_cmd = commands.add_parser("describe", help="describe the model of a dataset preset")
    describe_cmd.add_argument("--preset", required=True, choices=sorted(PRESETS))
    describe_cmd.add_argument("--variant", default="B6", choices=sorted(VARIANTS))
    describe_cmd.add_argument("--generator", choices=["dagan", "ccfpse", "ca2sis"],
                              help="model.generator (default: dagan)")
    describe_cmd.add_argument("--ngf", type=int, help="override the preset's ngf")
    describe_cmd.add_argument("-S", "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                              help="override a config value, e.g. -S model.spap=both -S dataset.crop_size=256 "
                                   "(repeatable)")
    describe_cmd.add_argument("--json", action="store_true", help="print one JSON object")
    add_generate_arguments(commands.add_parser(
        "generate", help="turn label-map PNGs into images",
        description="Turn label-map PNGs into images with a local checkpoint: one image per label map (same file "
                    "name) and index.html with label | generated (| real) side by side, as the official test.py "
                    "writes. Refuses to write into an input folder, and replaces existing outputs only with "
                    "--overwrite. An MLflow model (models:/NAME@ALIAS) is served by python -m components.generate "
                    "with the same arguments."),
        model_help="a training checkpoint or an exported generator (.pt); for an MLflow model URI use python -m "
                   "components.generate")
    add_official_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "generate":
        return generate(args)
    if args.command in OFFICIAL_COMMANDS:
        return run_official_command(args)

    try:
        model = {"ngf": args.ngf} if args.ngf else {}
        model.update({"generator": args.generator} if args.generator else {})
        info = describe(args.preset, args.variant, model or None, args.settings)
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
