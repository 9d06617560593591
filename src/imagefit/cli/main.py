"""The `imagefit` command: parses options, calls one public function per command, prints the
result. What the library says on its way (the `imagefit` logger: info lines, warnings) is
configured here, once per command (`messages`): info to stdout as it is, warnings to stderr
after "warning: ", info silenced by --quiet, all but errors silenced on torchrun ranks other
than 0; every line terminal-safe (`printable`). Exit codes: 0 ok, 1 user error, 2 bad
options, 3 `--strict` found bad files, 4 resume mismatch, 5 training diverged, 6 refused model
file, 130/143 interrupted by SIGINT/SIGTERM (training saves first). `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import traceback
from typing import Iterator

from imagefit._version import __version__
from imagefit.cli import (augment, benchmark, cache, demo, evaluate, explain, export, features,
                          inspect, predict, report, serve, train)
from imagefit.errors import ImagefitError, TrainingInterrupted
from imagefit.progress import printable
from imagefit.train.interrupt import sigterm_as_interrupt
from imagefit.train.interrupt import exit_code as interrupt_exit_code

# Write failures that are the user's environment, not a bug: a one-line message, exit 1.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EFBIG}

COMMANDS = (train, evaluate, predict, inspect, features, report, augment, explain, export,
            serve, benchmark, cache, demo)


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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the resume hint
    cache.apply_limit_option(args)
    try:
        with sigterm_as_interrupt(), messages(quiet=args.quiet):
            return int(args.handler(args) or 0)
    except TrainingInterrupted as exc:  # saved; not an error
        print(printable(str(exc)), file=sys.stderr)
        return exc.exit_code
    except ImagefitError as exc:
        if args.debug:
            traceback.print_exc()
        lines = str(exc).split("\n")
        print("error: " + "\n".join(printable(line) for line in lines), file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        if args.debug:
            traceback.print_exc()
        where = f": {printable(os.fsdecode(exc.filename))}" if exc.filename else ""
        advice = ("Check the permissions of that path." if exc.errno in (errno.EACCES,
                                                                       errno.EPERM)
                  else "Free some space or choose another output folder; finished work is "
                       "kept (train: --resume).")
        print(f"error: {exc.strerror}{where}. {advice}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("interrupted", file=sys.stderr)
        return interrupt_exit_code(exc)


class _Line(logging.Formatter):
    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.prefix + printable(line)
                         for line in record.getMessage().split("\n"))


@contextlib.contextmanager
def messages(*, quiet: bool) -> Iterator[None]:
    """The `imagefit` logger, for the duration of one command (restored after: tests and
    embedding applications call `main` more than once)."""
    logger = logging.getLogger("imagefit")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    out.setFormatter(_Line())
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(_Line("warning: "))
    logger.handlers[:] = [out, err]
    logger.propagate = False
    other_rank = os.environ.get("RANK", "0") != "0"  # torchrun: rank 0 speaks for all
    logger.setLevel(logging.ERROR if other_rank else logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def _entry() -> None:
    sys.exit(main())
