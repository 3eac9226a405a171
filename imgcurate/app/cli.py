"""The ``imgcurate`` command line: the parser of every command (:mod:`imgcurate.app.commands`), logging, and
how errors are shown."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Sequence

from ..common.errors import ImgcurateError
from .commands import MODULES

log = logging.getLogger("imgcurate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcurate", description="Curate image datasets stored as WebDataset shards.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Dask's own log messages (cluster start and stop)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(sub)
    return parser


def quiet_dask(verbose: bool) -> None:
    """Dask's own log messages (a local cluster logs ~40 lines as it starts and stops) only when they
    warn, unless ``verbose``: set before distributed is imported, which reads it, and inherited by
    the worker processes a local cluster starts."""
    if not verbose:
        import dask

        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # for the worker processes
        dask.config.set({"logging.distributed": os.environ["DASK_LOGGING__DISTRIBUTED"]})  # for this one
        logging.getLogger("distributed").setLevel(logging.WARNING)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: one line, without the file and source line it came from."""
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_dask(args.verbose or args.debug)
    # imgcurate's own messages at INFO; other libraries' (open_clip logs every model build) only when they warn
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(message)s")
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    shown_as = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = one_line_warning
    try:
        return args.func(args)
    except (ImgcurateError, OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"imgcurate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        # the output directory was left as it was found (the writer withdraws an unfinished run)
        print(f"imgcurate {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown_as


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
