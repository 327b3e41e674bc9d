"""``python -m dagan import-official | export-official | verify-official | make-official-reference`` (docs/OFFICIAL.md).

* ``import-official --generator latest_net_G.pth [--discriminator latest_net_D.pth] [--encoder
  latest_net_E.pth] --preset NAME [--variant B6|B1] --out FILE``: an official DAGAN / SPADE checkpoint
  -> a project checkpoint (a ``--use_vae`` model's encoder is found beside the generator by default).
* ``export-official --checkpoint FILE --out DIR``: the reverse, ``DIR/latest_net_G.pth`` (and
  ``latest_net_E.pth``, ``latest_net_D.pth``), for the official ``test.py``.
* ``verify-official DIR [DIR ...] [--results FILE]``: run our model on reference folders of the official
  code and print one JSON object per folder (a list for several) with the largest differences per array
  and per loss; exit 0 only when all are within their tolerances (:mod:`dagan.official.verify`).
* ``make-official-reference --checkout DIR --preset NAME --seed N --width W --height H --origin TEXT --out DIR``:
  run the official code from a checkout on a reference's inputs and write a reference folder
  (:mod:`dagan.official.maker`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from dagan.config import ConfigError
from dagan.official.convert import export_official, import_official, write_imported
from dagan.official.layout import LayoutError
from dagan.official.maker import SPREAD_RUNS, MakerError, make_reference
from dagan.official.reference import load_reference
from dagan.official.results import merge_results, read_results, results_entries
from dagan.official.verify import verify
from dagan.presets import PRESETS

USER_ERRORS = (ConfigError, LayoutError, FileNotFoundError, FileExistsError, ValueError)
OFFICIAL_COMMANDS = ("import-official", "export-official", "verify-official", "make-official-reference")
PAPER_PRESETS = ("ade20k", "celebamask_hq", "cityscapes", "coco_stuff", "deepfashion", "facades")


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
    verifier.add_argument("folders", nargs="+", metavar="folder",
                          help="one or more reference folders (reference.json + reference.npz)")
    verifier.add_argument("--results", help="also write these folders' entries into the results file (per folder: "
                                            "ours, the official spread, the tolerance, seconds; entries of other "
                                            "folders stay; python -m dagan.official.results renders it)")
    maker = commands.add_parser("make-official-reference",
                                help="run the official DAGAN/SPADE code from a checkout and write a reference folder")
    maker.add_argument("--checkout", required=True,
                       help="the official code: DAGAN_v1/ of Ha0Tang/DAGAN, or NVlabs/SPADE (with sync_batchnorm)")
    maker.add_argument("--preset", required=True, choices=PAPER_PRESETS, help="the label layout")
    maker.add_argument("--seed", required=True, type=int, help="the seed of the inputs and the rule weights")
    maker.add_argument("--width", required=True, type=int, help="image width (e.g. 128; 256 for cityscapes)")
    maker.add_argument("--height", required=True, type=int, help="image height (e.g. 128)")
    maker.add_argument("--origin", required=True, help='where the checkout comes from, e.g. "Ha0Tang/DAGAN f445354, '
                                                      'DAGAN_v1"; recorded in reference.json')
    maker.add_argument("--out", required=True, help="the reference folder to write (never replaced)")


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
        if args.command == "make-official-reference":
            return _make(args)
        return _verify(args.folders, args.results)
    except (*USER_ERRORS, MakerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _make(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C: the official run in progress is killed and the unfinished folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    reference = make_reference(args.checkout, args.preset, args.seed, args.width, args.height, args.origin, args.out,
                               lambda stage: print(f"[{time.perf_counter() - started:5.0f} s] "
                                                                  f"{stage}", file=sys.stderr, flush=True))
    print(f"wrote {reference.folder}: official {reference.code} {args.preset} seed {args.seed} "
          f"{args.width}x{args.height}, spread from {len(SPREAD_RUNS)} runs that round differently")
    return 0


def _verify(folders: list[str], results: str | None) -> int:
    references = [load_reference(folder) for folder in folders]  # every folder checked before any is run
    if results:
        read_results(results)  # an existing results file must be one, before anything runs
    load_before = os.getloadavg()[0]
    reports, seconds = [], []
    for reference in references:
        started = time.perf_counter()

        def progress(stage: str, started: float = started, name: str = reference.folder.name) -> None:
            print(f"[{time.perf_counter() - started:5.0f} s] {name}: {stage}", file=sys.stderr, flush=True)

        report = verify(reference, progress)
        seconds.append(time.perf_counter() - started)
        reports.append(report)
        failed = [name for section in ("arrays", "losses") for name, item in report[section].items()
                  if not item["ok"]]
        verdict = "all within tolerance" if report["ok"] else \
            f"OUTSIDE tolerance: {', '.join(failed) or 'missing arrays'}"
        print(f"{reference.folder}: {verdict} ({seconds[-1]:.0f} s)", file=sys.stderr)
    print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
    if results:
        path = merge_results(results, results_entries(reports, seconds, ["python", "-m", "dagan", "verify-official",
                                                                        *folders, "--results", results], load_before))
        print(f"wrote {path}", file=sys.stderr)
    return 0 if all(report["ok"] for report in reports) else 1
