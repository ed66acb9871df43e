"""`python -m playground ...`: the command line. parser.py defines the subcommands, commands.py what each does,
reports.py the text each prints without --json."""

from __future__ import annotations

import logging
import sys

from ..errors import UserError
from ..models import ModelLoadError
from ..prompting import PromptError
from ..runtimes import AdapterError, RuntimeUnavailable
from ..store import StoreError
from .parser import build_parser
from .session import EXIT_USAGE, close_opened

__all__ = ["build_parser", "main"]


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    try:
        return args.func(args)
    except (ModelLoadError, PromptError, UserError, StoreError, AdapterError, RuntimeUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        close_opened()
