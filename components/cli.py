"""The command-line conventions every component shares.

``--params FILE``, repeated ``-S key=value`` (the override grammar of ``dvc exp run -S``,
dagan/config.py), ``-v/--verbose`` and ``-q/--quiet``; the usage line names the real command
(``python -m components.train``); expected errors end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from components.settings import StepConfig, load_step_config
from dagan.config import ConfigError
from dagan.console import add_log_level_arguments, setup_logging
from dagan.disk import DISK_FULL, disk_full_line

log = logging.getLogger("components")
SIGINT_EXIT = 130  # 128 + SIGINT: a shell or make stops as after any Ctrl-C

OVERRIDE_HELP = ("override a config value, repeatable: -S train.lr_g=2e-4, -S '~train.max_steps' (back to the "
                 "default), -S tune.search_space.model.variant.values.0=B1 (a list item); see README, Configuration")


def make_parser(module: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m <module>`` with the shared options."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="config file (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=OVERRIDE_HELP)
    add_log_level_arguments(parser)
    return parser


def load(args: argparse.Namespace) -> StepConfig:
    return load_step_config(args.params, args.overrides)


def run_main(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run a component body at the chosen log level; turn expected errors into one clear line and exit code 2 (a
    Ctrl-C that reaches the body: exit code 130, as a shell's)."""
    setup_logging(args.log_level)
    logging.getLogger("mlflow").setLevel(max(args.log_level, logging.INFO))  # its own handler: -q quiets it too
    try:
        return body()
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        print(disk_full_line(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): stopped at once; files are written atomically, so none is half-written",
              file=sys.stderr)
        return SIGINT_EXIT


def entry(main: Callable[[Sequence[str] | None], int | None]) -> None:
    """Exit with ``main``'s status (None: 0, as torch's ``record`` returns for a ``SystemExit(0)``)."""
    sys.exit(main(sys.argv[1:]))
