"""``python -m dagan import-official | export-official | verify-official`` (docs/OFFICIAL.md).

* ``import-official --generator latest_net_G.pth [--discriminator latest_net_D.pth] [--encoder
  latest_net_E.pth] --preset NAME [--variant B6|B1] --out FILE``: an official DAGAN / SPADE checkpoint
  -> a project checkpoint (a ``--use_vae`` model's encoder is found beside the generator by default).
* ``export-official --checkpoint FILE --out DIR``: the reverse, ``DIR/latest_net_G.pth`` (and
  ``latest_net_E.pth``, ``latest_net_D.pth``), for the official ``test.py``.
* ``verify-official DIR``: run our model on a reference folder of the official code and print one
  JSON object with the largest differences per array and per loss; exit 0 only when all are
  within the documented tolerances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from dagan.config import ConfigError
from dagan.official.convert import export_official, import_official, write_imported
from dagan.official.layout import LayoutError
from dagan.official.reference import load_reference
from dagan.official.verify import verify
from dagan.presets import PRESETS

USER_ERRORS = (ConfigError, LayoutError, FileNotFoundError, FileExistsError, ValueError)


def add_official_commands(commands: argparse._SubParsersAction) -> None:
    """Add the three subcommands to ``python -m dagan``'s parser."""
    named = sorted(name for name, preset in PRESETS.items() if preset.num_classes)
    importer = commands.add_parser("import-official", help="official DAGAN/SPADE checkpoint -> project checkpoint")
    importer.add_argument("--generator", required=True, help="the official latest_net_G.pth (or <epoch>_net_G.pth)")
    importer.add_argument("--discriminator", help="the official latest_net_D.pth, to fine-tune with it")
    importer.add_argument("--encoder", help="a VAE model's latest_net_E.pth (default: found beside --generator)")
    importer.add_argument("--preset", required=True, choices=named, help="the dataset the model was trained on")
    importer.add_argument("--variant", choices=("B6", "B1"),
                          help="B6 = DAGAN, B1 = SPADE/GauGAN (default: read from the file)")
    importer.add_argument("--out", required=True, help="the project checkpoint to write (never overwritten)")
    exporter = commands.add_parser("export-official", help="project checkpoint -> official latest_net_G/E/D.pth")
    exporter.add_argument("--checkpoint", required=True, help="a training, imported or exported checkpoint")
    exporter.add_argument("--out", required=True, help="folder for <epoch>_net_G.pth (and _net_E.pth, _net_D.pth)")
    exporter.add_argument("--epoch", default="latest", help="the official --which_epoch name (default: latest)")
    exporter.add_argument("--use-ema", action="store_true", help="export the EMA generator when there is one")
    verifier = commands.add_parser("verify-official", help="compare our model with an official reference folder")
    verifier.add_argument("folder", help="a reference folder (reference.json + reference.npz)")


def run_official_command(args: argparse.Namespace) -> int:
    """Run one of the three subcommands; user errors are one line on stderr and exit code 2."""
    try:
        if args.command == "import-official":
            checkpoint = import_official(args.generator, args.preset, args.variant, args.discriminator,
                                         encoder_path=args.encoder)
            path = write_imported(checkpoint, args.out)
            origin = checkpoint["origin"]
            print(f"wrote {path}: official {origin['code']} {args.preset} as variant {origin['variant']}"
                  f"{' with its style encoder' if 'encoder' in origin['files'] else ''}"
                  f"{' with its discriminator' if checkpoint['discriminator'] is not None else ''}")
            return 0
        if args.command == "export-official":
            for path in export_official(args.checkpoint, args.out, args.use_ema, args.epoch):
                print(f"wrote {path}")
            return 0
        return _verify(args.folder)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _verify(folder: str) -> int:
    started = time.perf_counter()

    def progress(stage: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {stage}", file=sys.stderr, flush=True)

    report = verify(load_reference(folder), progress)
    print(json.dumps(report, indent=1))
    failed = [name for section in ("arrays", "losses") for name, item in report[section].items() if not item["ok"]]
    verdict = "all within tolerance" if report["ok"] else f"OUTSIDE tolerance: {', '.join(failed) or 'missing arrays'}"
    print(f"{folder}: {verdict} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0 if report["ok"] else 1
