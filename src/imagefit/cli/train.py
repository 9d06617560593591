"""`imagefit train DATA --out RUN`: the whole training workflow."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from imagefit.cli.cache import add_limit_option
from imagefit.config import MODES, TrainConfig
from imagefit.data.tables import TASKS
from imagefit.train.objectives import REGRESSION_LOSSES
from imagefit.data.sampling import BALANCE_CHOICES
from imagefit.cli.source import DATA_HELP, add_source_options, source_values
from imagefit.errors import TrainingInterrupted
from imagefit.metrics import format_multilabel_table, format_per_class_table
from imagefit.progress import printable
from imagefit.train.interrupt import exit_code as interrupt_exit_code
from imagefit.workflows.run_folder import RunFolder, default_run_dir

EXAMPLES = r"""examples:
  imagefit train data/ --out runs/cats
  imagefit train data/train --val data/val --image-size 160 --out runs/cats
  imagefit train labels.csv --mode scratch --epochs 30 --out runs/scratch
  imagefit train dogs-vs-cats/train --label-regex '^(cat|dog)\.' --out runs/dvc
  imagefit train scans.csv --path-col file --label-col diagnosis --group-col patient
  imagefit train imagenet/ --label-depth leaf --out runs/leaves
  imagefit train data/ --strict          # stop (exit 3) if any file is unreadable
  imagefit train data/ --augment keras --balance sampler --time-budget 15 --out runs/x
  imagefit train data/ --out runs/x --resume   # continue an interrupted run
  imagefit train ages.csv --task regress --label-col age --out runs/age   # a number per image
  imagefit train tags.csv --out runs/tags        # labels like "cat|outdoor": multi-label
  imagefit train tags.csv --label-col cat,dog,outdoor --out runs/tags   # 0/1 label columns
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train a classifier from a folder or table",
                       description="Train, calibrate, save and evaluate a classifier. DATA is "
                       + DATA_HELP + ".", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset folder or table")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val", metavar="DATA", help="separate validation folder or table")
    split.add_argument("--val-fraction", type=float, metavar="F",
                       help="share of each class held out for validation (default 0.2)")
    p.add_argument("--out", metavar="RUN", help="run folder (default runs/<timestamp>)")
    p.add_argument("--mode", choices=MODES, help="auto (default): finetune a pretrained "
                   "backbone (on a GPU, or up to 20,000 images on a CPU; else probe); probe: "
                   "linear head on frozen pretrained features; finetune: probe, then train the "
                   "top stages on augmented images; scratch: small CNN from random weights")
    p.add_argument("--augment", metavar="PRESET|FILE.yaml", help="training augmentation: "
                   "none, light (default when training on images, but none from scratch on "
                   "20,000+), keras (the Keras blog's settings), strong, photometric (colour "
                   "and blur only: the regression default), or a YAML file of "
                   "ImageDataGenerator-style settings")
    p.add_argument("--unfreeze", type=int, metavar="N", help="finetune: top stages to train "
                   "(default 1 below 2,000 images, 2 below 20,000, else 3)")
    p.add_argument("--backbone", metavar="NAME", help="efficientnet_lite0 (default), "
                   "efficientnet_lite1/2, simple_cnn, or any timm model name")
    p.add_argument("--weights", metavar="FILE", help=".safetensors backbone weights")
    p.add_argument("--image-size", type=int, metavar="N", help="input size in pixels")
    p.add_argument("--balance", choices=BALANCE_CHOICES, help="imbalance correction: auto "
                   "(default: none up to 1.5x imbalance, class weights up to 10x, a balanced "
                   "sampler beyond), weights, sampler, none")
    p.add_argument("--class-weight", choices=("balanced", "effective_number"),
                   help="how --balance weights are computed (default balanced; a "
                   "{class: weight} mapping can be given in --config)")
    p.add_argument("--max-per-class", type=int, metavar="N", help="sampler: draw at most N "
                   "images per class and epoch (under-sample huge classes; only what is drawn "
                   "is decoded)")
    p.add_argument("--epoch-size", type=int, metavar="N", help="draws per epoch (default: "
                   "the sampler's, or every training image once)")
    p.add_argument("--max-val", type=_max_val, metavar="N|auto|all", help="validation images "
                   "used during training, a stratified subset (default auto: 2,000, or 50 per "
                   "class if more)")
    p.add_argument("--preflight", metavar="auto|full|lazy|sample:N", help="how files are "
                   "checked before training: full decodes each; lazy reads and hashes each "
                   "and decodes it when first drawn; sample:N is lazy plus N decoded up front "
                   "(default auto: full up to 50,000 files, else sample:1000; --strict: full)")
    p.add_argument("--logit-adjustment", type=float, metavar="TAU", help="logit-adjusted loss "
                   "(Menon et al. 2021) with this tau, e.g. 1.0")
    p.add_argument("--task", choices=TASKS, help="tables: classify (labels are class names), "
                   "regress (a number per image), multilabel (any number of labels per image), "
                   "or auto (default: multilabel for labels joined by | or ; or several 0/1 "
                   "columns in --label-col a,b,c; regress when every label is a number and "
                   "some are not whole)")
    p.add_argument("--threshold", type=_threshold, metavar="P|auto", help="multilabel: the "
                   "probability a label needs to be predicted (default auto: per label, the "
                   "threshold with the best F1 on validation)")
    p.add_argument("--loss", choices=REGRESSION_LOSSES, help="regression loss (default mse; "
                   "huber is robust to a few wrong values)")
    p.add_argument("--interval", type=float, metavar="P", help="regression: coverage of the "
                   "split-conformal prediction intervals (default 0.9)")
    p.add_argument("--time-budget", type=_time_budget, metavar="MINUTES|auto|none",
                   help="minutes of training: the schedule is fitted to them and the best "
                   "epoch kept (default auto: a minute per 200 training images on a CPU, 3 to "
                   "30; none on a GPU)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the "
                   "interrupted run in --out from its checkpoints (same options as before)")
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
    add_source_options(p)
    add_limit_option(p)
    p.set_defaults(handler=run)


def _number_or(kind: type, words: tuple[str, str], what: str):
    """An argparse type: a number of `kind`, or one of two words."""
    def parse(text: str):
        if text in words:
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what}, '{words[0]}' or '{words[1]}', got {text!r}") from None
    return parse


_max_val = _number_or(int, ("auto", "all"), "a number of images")
_threshold = _number_or(float, ("auto", "auto"), "a probability")
_time_budget = _number_or(float, ("auto", "none"), "minutes")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from imagefit.workflows.train import load_config_file

    values = load_config_file(args.config) if args.config else {}
    for key in ("data", "val", "val_fraction", "out", "mode", "backbone", "weights", "image_size",
                "augment", "balance", "class_weight", "max_per_class", "epoch_size", "max_val",
                "preflight", "logit_adjustment", "loss", "interval", "threshold", "unfreeze",
                "epochs",
                "batch_size", "lr", "dropout", "seed", "device", "workers", "max_pixels",
                "time_budget", "resume", "strict", "report"):
        value = getattr(args, key)
        if value is not None:
            values[key] = value
    values.update(source_values(args))
    return TrainConfig.from_mapping(values)


def run(args: argparse.Namespace) -> int:
    from imagefit.train import distributed
    from imagefit.workflows.train import train_run

    config = config_from_args(args)
    if not config.out:  # named now, so that an interruption can say where to resume
        config = dataclasses.replace(config, out=default_run_dir())
    quiet = args.quiet or not distributed.current().is_main  # torchrun: rank 0 prints
    echo = (lambda line: None) if quiet else print
    try:
        result = train_run(config, progress=not quiet)
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        world = distributed.current()
        if world.is_main:
            if isinstance(exc, TrainingInterrupted):
                print(printable(str(exc)), file=sys.stderr)
            else:
                print(f"Interrupted. Finished training epochs and computed features are kept "
                      f"in {printable(config.out)}.", file=sys.stderr)
            command = resume_command(getattr(args, "argv", None), config.out, world.world_size)
            print(f"Continue with:\n  {command}", file=sys.stderr)
        return interrupt_exit_code(exc)
    report(result, echo)
    return 0


def resume_command(argv: list[str] | None, out: str, world_size: int = 1) -> str:
    """The command line that continues this run: the same options plus --out and --resume
    (under torchrun, the same number of processes: a checkpoint belongs to it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        argv += ["--out", out]
    if "--resume" not in argv:
        argv.append("--resume")
    if world_size > 1:
        return (f"torchrun --nproc-per-node {world_size} {shlex.quote(sys.argv[0])} "
                + shlex.join(argv))
    return "imagefit " + shlex.join(argv)


def report(result, echo) -> None:
    clf = result.classifier
    stage = clf.training_.get("best_stage")
    if result.evaluation.metrics.get("task") == "regress":
        m = result.evaluation.metrics
        echo(f"Mode: {clf.mode_}; loss: {clf.loss}; best epoch {clf.best_epoch_}"
             + (f" of {stage}" if stage and stage != clf.mode_ else "") + ".")
        echo(f"Validation: MAE {m['mae']:.4g} | RMSE {m['rmse']:.4g} | R² {m['r2']:.3f} | "
             f"Spearman {m['spearman']:.3f} | n={m['n']}; {m['interval_promised']:.0%} "
             f"prediction interval ±{clf.halfwidth_:.4g} (fitted on these images)")
        _paths(result, echo)
        return
    if result.evaluation.metrics.get("task") == "multilabel":
        echo(f"Mode: {clf.mode_}; sigmoid head, one calibrated probability per label; best "
             f"epoch {clf.best_epoch_}" + (f" of {stage}" if stage and stage != clf.mode_
                                            else "") + ".")
        echo("Validation metrics (thresholds chosen on these images):")
        echo(format_multilabel_table(result.evaluation.metrics))
        _paths(result, echo)
        return
    echo(f"Mode: {clf.mode_}; balance: {clf.balance_}; best epoch {clf.best_epoch_}"
         + (f" of {stage}" if stage and stage != clf.mode_ else "")
         + f"; temperature {clf.temperature_:.3f}.")
    echo("Validation metrics:")
    echo(format_per_class_table(result.evaluation.metrics))
    _paths(result, echo)


def _paths(result, echo) -> None:
    echo(f"Model:   {result.model_dir}")
    run = RunFolder(result.run_dir)
    echo(f"Metrics: {run.eval / 'metrics.json'}  (predictions.csv beside it)")
    if result.report:
        echo(f"Report:  {result.report}  (open it in a browser)")
    if result.bad_files:
        echo(f"Skipped: {len(result.bad_files)} files, listed in {run.bad_files}")
