"""`imagefit report RUN [--data DIR]`: (re)build RUN/report/index.html."""

from __future__ import annotations

import argparse

from imagefit.cli.cache import add_limit_option
from imagefit.data.index import refuse_output_inside
from imagefit.cli.source import add_source_options, open_test_data

EXAMPLES = """examples:
  imagefit report runs/cats                      # on the run's validation split
  imagefit report runs/cats --data data/test     # on a labelled test folder
  imagefit report runs/scans --data test.csv --path-col file --label-col diagnosis
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("report", parents=[common], help="build the HTML report of a run",
                       description="Build RUN/report/index.html (open it from disk): metrics, "
                       "confusion matrix, per-class galleries of the most confident, least "
                       "confident and confidently wrong images, training curves, calibration, "
                       "likely label issues and duplicates/leakage; plus rankings.csv and "
                       "label_issues.csv.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder written by 'imagefit train'")
    p.add_argument("--data", metavar="DATA", help="labelled test folder or table to evaluate "
                   "instead of the validation split")
    p.add_argument("--out", metavar="DIR", help="report folder (default RUN/report)")
    add_source_options(p)
    add_limit_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.bundle import model_task
    from imagefit.workflows.report import build_run_report

    task = model_task(args.run)
    task = task if task in ("regress", "multilabel") else None
    data = None if args.data is None else open_test_data(args, args.data, task=task)
    if data is not None and args.out is not None:
        refuse_output_inside(args.out, [args.data, data])
    result = build_run_report(args.run, data=data, out=args.out, progress=not args.quiet)
    if not args.quiet:
        print(f"Report: {result.index_html} ({result.n_evaluated:,} images evaluated, "
              f"{result.n_label_issues} likely label issues).")
    return 0
