"""`imagefit evaluate RUN DATA [--json FILE]`: metrics of a saved model on a labelled folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagefit.bundle import load_model
from imagefit.evaluate.evaluation import evaluate
from imagefit.evaluate.metrics import format_per_class_table

EXAMPLES = """examples:
  imagefit evaluate runs/cats data/test
  imagefit evaluate runs/cats/model data/test --json test-metrics.json
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="metrics of a model on labelled data",
                       description="Predict every image of DATA (class sub-folders or a CSV) "
                       "and print per-class precision, recall and F1.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("data", metavar="DATA", help="labelled dataset folder or CSV")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.run)
    result = evaluate(model, args.data, progress=not args.quiet)
    if not args.quiet:
        print(format_per_class_table(result.metrics))
        if result.bad_files:
            print(f"Skipped {len(result.bad_files)} unreadable files "
                  f"(first: {result.bad_files[0].path}: {result.bad_files[0].reason}).")
    if args.json:
        Path(args.json).write_text(json.dumps(result.metrics, indent=2, ensure_ascii=False),
                                   encoding="utf-8")
    return 0
