"""`imagefit features DATA --out DIR`: bottleneck features to `features.npy` + `index.csv`."""

from __future__ import annotations

import argparse

from imagefit.cli.cache import add_limit_option
from imagefit.cli.source import add_source_options, open_data
from imagefit.data.index import refuse_output_inside
from imagefit._fileio import check_output_folder
from imagefit.errors import ConfigError

EXAMPLES = """examples:
  imagefit features data/ --out feats/
  imagefit features data/ --out feats/ --backbone efficientnet_lite0 --image-size 160
  python -c "import numpy as np; print(np.load('feats/features.npy', mmap_mode='r').shape)"
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("features", parents=[common], help="extract bottleneck features",
                       description="Run a frozen pretrained backbone over every image of DATA "
                       "and write DIR/features.npy (N x D float32, written in streaming fashion) "
                       "and DIR/index.csv (path,label, same row order). Stored features are "
                       "reused by later runs.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset folder or table")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--backbone", default="efficientnet_lite0", metavar="NAME")
    p.add_argument("--weights", metavar="FILE", help=".safetensors backbone weights")
    p.add_argument("--image-size", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--workers", type=int, metavar="N", help="image-decoding processes")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_source_options(p)
    add_limit_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.workflows.features import extract_dataset_features

    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0.")
    data = open_data(args, args.data, min_classes=2)
    refuse_output_inside(args.out, [args.data, data])
    check_output_folder(args.out, "--out")
    result = extract_dataset_features(
        data, args.out, backbone=args.backbone,
        image_size=args.image_size,
        weights=args.weights, batch_size=args.batch_size, workers=args.workers,
        device=args.device, progress=not args.quiet)
    if not args.quiet:
        print(f"Wrote {result.n_rows:,} x {result.dim} features to {result.features_path} "
              f"({result.n_computed:,} computed, {result.n_rows - result.n_computed:,} reused)."
              + (f" Skipped {result.n_bad} files: {result.out_dir / 'bad_files.csv'}"
                 if result.n_bad else ""))
    return 0
