"""`imagefit evaluate RUN DATA [--json FILE]`: metrics of a saved model on a labelled folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imagefit.cli.cache import add_limit_option
from imagefit._fileio import check_output_file, check_output_folder
from imagefit._validation import check_int
from imagefit.cli.source import DATA_HELP, add_source_options, open_test_data
from imagefit.data.index import refuse_output_inside
from imagefit.metrics import (format_multilabel_table, format_per_class_table,
                              format_regression_line)
from imagefit.progress import printable
from imagefit.workflows.run_folder import RunFolder

EXAMPLES = """examples:
  imagefit evaluate runs/cats data/test
  imagefit evaluate runs/cats/model data/test --json test-metrics.json
  imagefit evaluate runs/scans held-out.csv --path-col file --label-col diagnosis
  imagefit evaluate runs/age test-ages.csv --label-col age   # a regression: MAE, R², coverage
  imagefit evaluate runs/tags test-tags.csv   # multi-label: mAP, F1s, per-label table
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="metrics of a model on labelled data",
                       description="Predict every image of DATA (" + DATA_HELP + ") "
                       "and print per-class precision, recall and F1.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("data", metavar="DATA", help="labelled dataset folder or table")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images (default: "
                   "the cap the model was trained with, from model.json)")
    p.add_argument("--report", metavar="DIR", help="also build the HTML report of RUN on DATA "
                   "into DIR (a run folder's report includes label issues and duplicates)")
    add_source_options(p)
    add_limit_option(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.estimator import load_model
    from imagefit.evaluation.result import evaluate

    if args.json:
        check_output_file(args.json, "--json")
    model = load_model(args.run)  # a refused model file says so before anything else
    regression = not hasattr(model, "classes_")
    multilabel = not regression and model.multilabel_
    if args.max_pixels is not None:
        model.set_params(max_pixels=check_int("max_pixels", args.max_pixels, 1))
    data = open_test_data(args, args.data, task="regress" if regression else
                          "multilabel" if multilabel else None)
    if args.report:
        refuse_output_inside(args.report, [args.data, data])  # before anything is created
        check_output_folder(args.report, "--report")
    result = evaluate(model, data, progress=not args.quiet)
    if not args.quiet:
        print(format_regression_line(result.metrics) if regression
              else format_multilabel_table(result.metrics) if multilabel
              else format_per_class_table(result.metrics))
        if result.bad_files:
            print(f"Skipped {len(result.bad_files)} unreadable files "
                  f"(first: {printable(result.bad_files[0].path)}: "
                  f"{result.bad_files[0].reason}).")
    if args.report:
        _report(args, data, model, result)
    if args.json and (regression or multilabel):
        from imagefit.evaluation.regression import json_text

        Path(args.json).write_text(json_text(result.metrics), encoding="utf-8")
    elif args.json:
        Path(args.json).write_text(json.dumps(result.metrics, indent=2, ensure_ascii=True),
                                   encoding="utf-8")
    return 0


def _report(args: argparse.Namespace, data, model, result) -> None:
    from imagefit.bundle import resolve_model_dir
    from imagefit.report.html import RegressionReportData, render_regression_report
    from imagefit.workflows.report import build_run_report

    if RunFolder.of_model(resolve_model_dir(args.run)).split.is_file():
        index = build_run_report(args.run, data=data, out=args.report,
                                 progress=not args.quiet).index_html
    elif hasattr(model, "classes_"):  # a bare model folder: the evaluated data only
        index = result.save_report(args.report)
    else:
        index = render_regression_report(RegressionReportData(
            title="imagefit evaluation", metrics=result.metrics, paths=result.paths,
            y_true=result.y_true, value=result.value, halfwidth=model.halfwidth_,
            subtitle=f"{model.backbone_name_} at {model.preprocessing_.image_size}px · "
                     f"regression · {len(result.paths):,} images"), args.report)
    if not args.quiet:
        print(f"Report: {index}")
