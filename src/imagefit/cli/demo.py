"""`imagefit demo [--out DIR]`: the whole workflow on the bundled Fashion-MNIST demo subset."""

from __future__ import annotations

import argparse

from imagefit.cli.train import report
from imagefit.metrics import format_per_class_table


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
    from imagefit.workflows.demo import demo_data, run_demo

    data = demo_data(args.data)
    echo = (lambda line: None) if args.quiet else print
    echo(f"== imagefit demo: train on {data / 'train'}")
    result = run_demo(data, args.out, progress=not args.quiet)
    report(result.train, echo)
    echo(f"\n== Held-out test set: {data / 'test'}")
    echo(format_per_class_table(result.test.evaluation.metrics))
    echo(f"Test metrics: {result.test_metrics}")
    echo(f"Report:       {result.test.index_html}  (open it in a browser: per-class galleries, "
         f"label issues, duplicates)")
    echo("\nNext (with .venv/bin/ in front, or the venv activated):")
    echo(f"  imagefit predict {result.train.run_dir} {data / 'test'} --out predictions.csv")
    echo(f"  imagefit export {result.train.run_dir} --format onnx")
    echo(f"  imagefit serve {result.train.run_dir}      # then open http://127.0.0.1:8000/")
    return 0
