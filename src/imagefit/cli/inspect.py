"""`imagefit inspect DATA [--json FILE]`: audit a folder before training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagefit.cli.cache import add_limit_option
from imagefit.cli.source import add_source_options, open_data
from imagefit.progress import printable

EXAMPLES = """examples:
  imagefit inspect data/
  imagefit inspect data/ --json audit.json
  imagefit inspect data/ --no-near          # skip the backbone (exact duplicates only)
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("inspect", parents=[common], help="audit a dataset before training",
                       description="Report class counts and imbalance, bad and ignored files, "
                       "formats, modes and sizes, exact and near duplicates, label conflicts "
                       "and train/val leakage, with suggested settings. Nothing is written to "
                       "the dataset.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset folder or table")
    p.add_argument("--json", metavar="FILE", help="write the audit as JSON")
    p.add_argument("--no-near", dest="near", action="store_false",
                   help="skip near-duplicate search (no backbone run)")
    p.add_argument("--threshold", type=float, help="cosine similarity for near-duplicates")
    p.add_argument("--image-size", type=int, metavar="N")
    p.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images, as "
                   "train --max-pixels does (default 89,478,485)")
    add_source_options(p)
    add_limit_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.workflows.inspect import inspect_dataset

    options = {"near": args.near, "image_size": args.image_size, "progress": not args.quiet}
    if args.threshold is not None:
        options["threshold"] = args.threshold
    if args.max_pixels is not None:
        options["max_pixels"] = args.max_pixels
    result = inspect_dataset(open_data(args, args.data, min_classes=2), **options)
    if not args.quiet:
        for line in result.lines:
            print(printable(line) if "\n" not in line else
                  "\n".join(printable(part) for part in line.split("\n")))
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary, indent=2, ensure_ascii=True),
                                   encoding="utf-8")
    return 0
