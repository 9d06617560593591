"""`imagefit demo [--out DIR]`: the whole workflow on the bundled Fashion-MNIST demo subset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from imagefit.cli.train import report
from imagefit.config import TrainConfig
from imagefit.errors import DatasetError
from imagefit.evaluate.metrics import format_per_class_table
from imagefit.report.build import build_run_report
from imagefit.workflow import train_run

# src/imagefit/cli/demo.py -> repository root / examples / fashion-mnist-demo
_BUNDLED = Path(__file__).resolve().parents[3] / "examples" / "fashion-mnist-demo"


def add_parser(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the whole workflow on the demo data",
                       description="Train on the bundled, deliberately imbalanced Fashion-MNIST "
                       "subset (train/), then evaluate on its held-out test/ folder.",
                       epilog="examples:\n  imagefit demo --out runs/demo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default "
                   "runs/demo)")
    p.add_argument("--data", metavar="DIR", help="demo dataset with train/ and test/ (default: "
                   "the bundled one, or $IMAGEFIT_DEMO_DATA)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    data = Path(args.data or os.environ.get("IMAGEFIT_DEMO_DATA") or _BUNDLED)
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise DatasetError(f"Demo dataset not found at {data} (expected train/ and test/). Run "
                           f"from a clone of the repository, or regenerate it with "
                           f"'python examples/make_demo_dataset.py'.")
    echo = (lambda line: None) if args.quiet else print
    echo(f"== imagefit demo: train on {data / 'train'}")
    result = train_run(TrainConfig(data=str(data / "train"), out=args.out, report=False),
                       progress=not args.quiet, echo=echo)
    report(result, echo)
    echo(f"\n== Held-out test set: {data / 'test'}")
    # The report evaluates the test folder; its predictions are the test metrics too.
    page = build_run_report(result.run_dir, data=data / "test", progress=not args.quiet)
    test_dir = page.evaluation.save(result.run_dir / "test-eval")
    echo(format_per_class_table(page.evaluation.metrics))
    echo(f"Test metrics: {test_dir / 'metrics.json'}")
    echo(f"Report:       {page.index_html}  (open it in a browser: per-class galleries, "
         f"label issues, duplicates)")
    echo("\nNext (with .venv/bin/ in front, or the venv activated):")
    echo(f"  imagefit predict {result.run_dir} {data / 'test'} --out predictions.csv")
    echo(f"  imagefit export {result.run_dir} --format onnx")
    echo(f"  imagefit serve {result.run_dir}      # then open http://127.0.0.1:8000/")
    return 0
