"""The ``imgcurate`` command line: the parser of every command (:mod:`imgcurate.app.commands`), logging, and
how errors are shown."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from ..common.errors import ImgcurateError
from .commands import MODULES

log = logging.getLogger("imgcurate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcurate", description="Curate image datasets stored as WebDataset shards.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # imgcurate's own messages at INFO; other libraries' (open_clip logs every model build) only when they warn
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ImgcurateError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"imgcurate {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
