"""`imagefit benchmark loader DATA`: images per second of the training data path on a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagefit.cli.source import add_source_options, open_data
from imagefit.errors import ConfigError
from imagefit.progress import printable

EXAMPLES = """examples:
  imagefit benchmark loader data/
  imagefit benchmark loader data/ --limit 500 --epochs 3 --json loader.json
  imagefit benchmark loader data/ --augment strong --image-size 160 --workers 2
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("benchmark", parents=[common], help="measure the training data path",
                       description="Measure how fast imagefit feeds training.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_subparsers(dest="benchmark", metavar="WHAT", required=True)
    loader = what.add_parser(
        "loader", parents=[common], help="images per second of the training loader",
        description="Time the training loader on the images of DATA: decoding only, one cold "
        "epoch (decode + augment from the files) and epochs from the decoded-image cache "
        "(filled first, not timed, in a temporary folder unless --cache-dir is given). With "
        "--workers 0 it runs on one core. Bad files are skipped and counted. Nothing is written "
        "to the dataset.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    loader.add_argument("data", help="dataset folder or table")
    loader.add_argument("--augment", default="keras", metavar="PRESET",
                        help="none, light, keras, strong or FILE.yaml (default: keras)")
    loader.add_argument("--image-size", type=int, default=224, metavar="N")
    loader.add_argument("--workers", type=int, default=0, metavar="N",
                        help="DataLoader processes (default 0: one core)")
    loader.add_argument("--epochs", type=int, default=2, metavar="N",
                        help="cached epochs to time (default 2)")
    loader.add_argument("--limit", type=int, metavar="N", help="use N files (seeded subset)")
    loader.add_argument("--batch-size", type=int, default=64, metavar="N")
    loader.add_argument("--cache-dir", metavar="DIR", help="keep the decoded-image cache here")
    loader.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    add_source_options(loader)
    loader.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.data.index import refuse_output_inside
    from imagefit.workflows.benchmark import benchmark_loader, format_table

    if args.json and Path(args.json).is_dir():
        raise ConfigError(f"--json must name a file; {args.json} is a folder.")
    data = open_data(args, args.data, min_classes=2)
    if args.cache_dir:
        refuse_output_inside(args.cache_dir, [args.data, data])
    result = benchmark_loader(data, augment=args.augment, image_size=args.image_size,
                              workers=args.workers, epochs=args.epochs, limit=args.limit,
                              cache_dir=args.cache_dir, batch_size=args.batch_size,
                              progress=not args.quiet)
    if not args.quiet:
        for line in format_table(result):
            print(printable(line))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=True),
                                   encoding="utf-8")
    return 0
