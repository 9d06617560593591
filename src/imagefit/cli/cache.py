"""`imagefit cache info|prune`: what the feature and image cache holds, and bounding it; plus
`--cache-max-gb`, the bound for the commands that fill it."""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime

from imagefit._fileio import default_cache_dir
from imagefit.errors import ConfigError
from imagefit.features.cache import LIMIT_ENV, cache_info, cache_limit_bytes, prune

EXAMPLES = """examples:
  imagefit cache info
  imagefit cache info --json
  imagefit cache prune --max-gb 20            # least recently used chunks first
  imagefit cache prune --max-gb 20 --dry-run
  imagefit cache prune --all                  # every store no running job holds
  IMAGEFIT_CACHE_MAX_GB=20 imagefit train data/ --out runs/x   # bounded while it runs
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("cache", parents=[common], help="show or bound the feature/image cache",
                       description="The cache ($IMAGEFIT_CACHE, default ~/.cache/imagefit) keeps "
                       "bottleneck features and decoded training images by content, the ONNX "
                       "export of each backbone and the images of array files. 'info' lists "
                       "it; 'prune' removes least recently used chunks of features and images "
                       "until the whole folder fits a bound. Stores a running job uses are never "
                       "touched; ONNX graphs and array images are counted, not pruned.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("info", "prune"))
    p.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: "
                   "$IMAGEFIT_CACHE, else ~/.cache/imagefit)")
    p.add_argument("--max-gb", type=gigabytes, metavar="GB", help="prune: the bound (default: "
                   f"${LIMIT_ENV})")
    p.add_argument("--all", action="store_true", help="prune: every chunk no running job holds")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove "
                   "nothing")
    p.add_argument("--json", action="store_true", help="info: print JSON")
    p.set_defaults(handler=run)


def add_limit_option(parser: argparse.ArgumentParser) -> None:
    """`--cache-max-gb` for a command that fills the cache."""
    parser.add_argument("--cache-max-gb", type=gigabytes, metavar="GB",
                        help=f"keep the cache under GB gigabytes while this runs, removing "
                        f"least recently used chunks other jobs do not hold (as "
                        f"{LIMIT_ENV}=GB; see 'imagefit cache --help')")


def apply_limit_option(args: argparse.Namespace) -> None:
    """Make `--cache-max-gb` the bound for this process and its workers."""
    if getattr(args, "cache_max_gb", None) is not None:
        os.environ[LIMIT_ENV] = repr(args.cache_max_gb)


def gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of gigabytes > 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    folder = args.cache_dir or default_cache_dir()
    if args.action == "info":
        if args.max_gb is not None or args.all or args.dry_run:
            raise ConfigError("--max-gb, --all and --dry-run apply to 'imagefit cache prune'.")
        info = cache_info(folder)
        print(json.dumps(info, indent=2) if args.json else "\n".join(_info_lines(info)))
        return 0
    if args.json:
        raise ConfigError("--json applies to 'imagefit cache info'.")
    if args.all and args.max_gb is not None:
        raise ConfigError("Give 'imagefit cache prune' --max-gb or --all, not both.")
    limit = 0 if args.all else (cache_limit_bytes() if args.max_gb is None
                                else int(args.max_gb * 1e9))
    if limit is None:
        raise ConfigError(f"Give 'imagefit cache prune' a bound: --max-gb GB (or set "
                          f"{LIMIT_ENV}), or --all.")
    result = prune(folder, limit, dry_run=args.dry_run)
    if not args.quiet:
        verb = "Would remove" if args.dry_run else "Removed"
        print(f"{verb} {result.removed:,} chunks ({_size(result.freed_bytes)}): "
              f"{_size(result.total_before)} -> {_size(result.total_after)} in {folder}"
              + (f"; {_size(result.in_use_bytes)} held by running jobs"
                 if result.in_use_bytes else "") + ".")
    return 0


def _info_lines(info: dict) -> list[str]:
    limit = info["limit_bytes"]
    lines = [f"{info['folder']}: {_size(info['total_bytes'])}"
             + (f" (bound {_size(limit)}, {LIMIT_ENV})" if limit else "")]
    for store in info["stores"]:
        used = (datetime.fromtimestamp(store["last_used"]).strftime("%Y-%m-%d %H:%M")
                if store["last_used"] else "-")
        lines.append(f"  {store['kind']:9s}{store['key'][:16]}  {store['rows']:>10,} rows  "
                     f"{store['chunks']:>5} chunks  {_size(store['bytes']):>9}  last used {used}"
                     + ("  (in use)" if store["in_use"] else ""))
    for name, size in info["other_bytes"].items():
        if size:
            lines.append(f"  {name:9s}{'':16s}  {_size(size):>42}  (not pruned)")
    return lines


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
