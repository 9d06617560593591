"""`imagefit train DATA --out RUN`: the whole training workflow."""

from __future__ import annotations

import argparse

from imagefit.config import TrainConfig
from imagefit.data.sampling import BALANCE_CHOICES
from imagefit.estimator import MODES
from imagefit.evaluate.metrics import format_per_class_table
from imagefit.workflow import load_config_file, train_run

EXAMPLES = """examples:
  imagefit train data/ --out runs/cats
  imagefit train data/train --val data/val --image-size 160 --out runs/cats
  imagefit train labels.csv --mode scratch --epochs 30 --out runs/scratch
  imagefit train data/ --strict          # stop (exit 3) if any file is unreadable
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train a classifier from a folder or CSV",
                       description="Train, calibrate, save and evaluate a classifier. DATA is a "
                       "folder of class sub-folders, a folder holding train/ and val/, or a CSV "
                       "with columns path,label.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset folder or CSV")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val", metavar="DIR", help="separate validation folder")
    split.add_argument("--val-fraction", type=float, metavar="F",
                       help="share of each class held out for validation (default 0.2)")
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<timestamp>)")
    p.add_argument("--mode", choices=MODES, help="probe: linear head on frozen pretrained "
                   "features (default); scratch: small CNN trained from random weights")
    p.add_argument("--backbone", metavar="NAME", help="efficientnet_lite0 (default), "
                   "efficientnet_lite1/2, simple_cnn, or any timm model name")
    p.add_argument("--weights", metavar="FILE", help=".safetensors backbone weights")
    p.add_argument("--image-size", type=int, metavar="N", help="input size in pixels")
    p.add_argument("--balance", choices=BALANCE_CHOICES, help="class weights for imbalanced "
                   "data: auto (default: on when the largest class is >1.5x the smallest), "
                   "weights, none")
    p.add_argument("--epochs", type=int, metavar="N", help="maximum epochs (early stopping)")
    p.add_argument("--batch-size", type=int, metavar="N", help="mini-batch size (default 64)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--dropout", type=float, help="dropout before the head")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--workers", type=int, metavar="N", help="image-decoding processes")
    p.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images "
                   "(decompression bombs; default 89,478,485)")
    p.add_argument("--config", metavar="FILE.yaml", help="settings file; options given on the "
                   "command line win")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="skip building RUN/report/index.html")
    p.add_argument("--strict", action="store_true", default=None,
                   help="stop before training (exit 3) if any file cannot be used")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = load_config_file(args.config) if args.config else {}
    for key in ("data", "val", "val_fraction", "out", "mode", "backbone", "weights", "image_size",
                "balance", "epochs", "batch_size", "lr", "dropout", "seed", "device", "workers",
                "max_pixels", "strict", "report"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    return TrainConfig.from_mapping(values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    echo = (lambda line: None) if args.quiet else print
    result = train_run(config, progress=not args.quiet, echo=echo)
    report(result, echo)
    return 0


def report(result, echo) -> None:
    clf = result.classifier
    echo(f"Balance: {clf.balance_}; best epoch {clf.best_epoch_}; temperature "
         f"{clf.temperature_:.3f}.")
    echo("Validation metrics:")
    echo(format_per_class_table(result.evaluation.metrics))
    echo(f"Model:   {result.model_dir}")
    echo(f"Metrics: {result.run_dir / 'eval' / 'metrics.json'}  (predictions.csv beside it)")
    if result.report:
        echo(f"Report:  {result.report}  (open it in a browser)")
    if result.bad_files:
        echo(f"Skipped: {len(result.bad_files)} files, listed in {result.run_dir / 'bad_files.csv'}")
