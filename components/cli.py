"""The command-line conventions every component shares: ``--params FILE`` and ``-S key=value``.

``-S`` takes the same dotted syntax as ``dvc exp run -S`` and may repeat.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dagan.config import Config, ConfigError, add_override_argument, load_config

log = logging.getLogger("components")


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="config file (default: params.yaml)")
    add_override_argument(parser)
    return parser


def load(args: argparse.Namespace) -> Config:
    return load_config(args.params, args.overrides)


def run_main(body: Callable[[], int]) -> int:
    """Run a component body; turn expected errors into one clear line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return body()
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def entry(main: Callable[[Sequence[str] | None], int]) -> None:
    sys.exit(main(sys.argv[1:]))
