"""The `imagefit` command: parses options, calls one public function per command, prints the
result. Exit codes: 0 ok, 1 user error, 2 bad options, 3 `--strict` found bad files, 5 training
diverged, 6 refused model file, 130 interrupted. `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from imagefit import __version__
from imagefit.cli import (augment, benchmark, demo, evaluate, explain, export, features, inspect,
                          predict, report, serve, train)
from imagefit.errors import ImagefitError
from imagefit.progress import printable

COMMANDS = (train, evaluate, predict, inspect, features, report, augment, explain, export,
            serve, benchmark, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagefit", description="Train, evaluate and use image classifiers from folders of "
        "images, offline, on a CPU.", epilog="Run 'imagefit COMMAND --help' for examples.")
    parser.add_argument("--version", action="version", version=f"imagefit {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (and exits with it when run as a script)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ImagefitError as exc:
        if args.debug:
            traceback.print_exc()
        lines = str(exc).split("\n")
        print("error: " + "\n".join(printable(line) for line in lines), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _entry() -> None:
    sys.exit(main())
