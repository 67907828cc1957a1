"""The ``lungsearch`` command.

Each command group lives in its own module here and exposes ``register(subparsers)``; this
module only assembles them. Commands exit 0 on success, 1 on a lungsearch error (the message is
printed, PHI-free), 2 on bad usage, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lungsearch import __version__
from lungsearch.errors import LungsearchError

__all__ = ["main", "build_parser"]

# Command modules, in --help order. A module that fails to import (a missing optional extra)
# is skipped with a note, so the SDK-only install still has a working `lungsearch --help`.
_COMMANDS = (
    "lungsearch.cli._demo",
    "lungsearch.cli._data",
    "lungsearch.cli._train",
    "lungsearch.cli._serve",
    "lungsearch.cli._client",
    "lungsearch.cli._jobs",
    "lungsearch.cli._bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lungsearch",
        description="Similar-case retrieval and explained classification for chest X-ray and CT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `lungsearch COMMAND --help` for an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"lungsearch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("lungsearch.cli."):
                continue  # command group not written yet
            logging.getLogger(__name__).debug("skipping %s: %s", name, exc)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LungsearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
