"""`imagefit predict RUN PATH... [--out FILE.csv] [--top-k N]`: batch prediction to CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from imagefit.data.index import expand_paths
from imagefit._fileio import cache_folder
from imagefit.data.arrays import array_file_images
from imagefit.data.index import ARRAY_SUFFIXES
from imagefit.data.tables import is_table, table_files
from imagefit._fileio import check_output_file
from imagefit._validation import check_int
from imagefit.errors import ConfigError
from imagefit.progress import printable

EXAMPLES = """examples:
  imagefit predict runs/cats new_photos/ --out predictions.csv
  imagefit predict runs/cats/model a.jpg b.png --top-k 3
  imagefit predict runs/scans new-scans.csv --path-col file --out predictions.csv
  imagefit predict runs/svhn test_32x32.mat --out predictions.csv   # x (and x_test) rows
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("predict", parents=[common], help="predict images or folders to CSV",
                       description="Predict files and folders (expanded recursively), or the "
                       "files a table (CSV, TSV, Parquet) lists: its columns are kept in front of "
                       "the predictions; or the images of an .npz / .mat file (its array and "
                       "row first). Rows keep input order; unreadable or missing files get a row "
                       "with the error column filled.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("paths", metavar="PATH", nargs="+", help="image files or folders, or one "
                   "table")
    p.add_argument("--path-col", metavar="NAME", help="table: the column of image paths "
                   "(default: path, filename, file, image...)")
    p.add_argument("--root", metavar="DIR", help="table: the folder relative paths start from "
                   "(default: the table's folder)")
    p.add_argument("--out", metavar="FILE.csv", help="write path,label,confidence,prob_<class>... "
                   "(a regression's model: path,value,lower,upper; a multi-label one's: "
                   "path,labels,prob_<label>..., labels joined with |)")
    p.add_argument("--top-k", type=int, metavar="N", help="also list the N most likely classes")
    p.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images (default: "
                   "the cap the model was trained with, from model.json)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average the "
                   "probabilities over each image and its flips (the flips used in training)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from imagefit.estimator import load_model
    from imagefit.evaluation.result import write_predictions_csv
    from imagefit.evaluation.tagging import write_tag_predictions_csv

    if args.out:
        check_output_file(args.out, "--out")
    model = load_model(args.run)
    regression = not hasattr(model, "classes_")
    if regression and args.top_k is not None:
        raise ConfigError("--top-k applies to classifiers; this model is a regression: it "
                          "predicts a number per image (value, lower, upper).")
    if regression and args.tta:
        raise ConfigError("--tta is not offered for a regression: its interval is calibrated "
                          "on single-view predictions, and averaged views would void that.")
    if args.max_pixels is not None:
        model.set_params(max_pixels=check_int("max_pixels", args.max_pixels, 1))
    if not regression and args.top_k is not None and not 1 <= args.top_k <= len(model.classes_):
        raise ConfigError(f"The 'top_k' parameter must be an int in [1, {len(model.classes_)}]. "
                          f"Got {args.top_k} instead.")
    leading = None
    if len(args.paths) == 1 and is_table(args.paths[0]):
        table = table_files(args.paths[0], root=args.root, path_col=args.path_col)
        paths, leading = table.paths, table.columns
    elif len(args.paths) == 1 and Path(args.paths[0]).suffix.lower() in ARRAY_SUFFIXES:
        paths, leading = array_file_images(args.paths[0], folder=cache_folder(model.cache_dir))
    elif args.path_col or args.root:
        raise ConfigError("--path-col and --root apply to a table (CSV, TSV, Parquet) of paths.")
    else:
        paths = expand_paths(args.paths)
    if not paths:
        raise ConfigError(f"No image files found in {args.paths}.")
    if regression:
        return _predict_values(model, paths, leading, args)
    errors = []  # per chunk, counted as the chunks stream past
    chunks = model.iter_predict_files(paths, progress=not args.quiet, tta=args.tta)
    if args.out and model.multilabel_:
        write_tag_predictions_csv(_counting(chunks, errors), args.out, model.thresholds_,
                                  top_k=args.top_k, leading=leading)
    elif args.out:
        write_predictions_csv(_counting(chunks, errors), args.out, top_k=args.top_k,
                              leading=leading)
    if args.out:
        n_errors = sum(errors)
        if not args.quiet:
            print(f"Wrote {len(paths):,} predictions to {args.out}"
                  + (f" ({n_errors} unreadable, see the error column)" if n_errors else "") + ".")
    else:
        for preds in _counting(chunks, errors):
            _print_chunk(preds, args.top_k or 1,
                         model.thresholds_ if model.multilabel_ else None)
        n_errors = sum(errors)
    return 0 if n_errors < len(paths) else 1


def _predict_values(model, paths: list[str], leading, args: argparse.Namespace) -> int:
    """A regression's predictions: `value, lower, upper` per file (the interval's coverage is
    the model's), to the CSV or the terminal; exit 1 when no file could be read."""
    from imagefit.evaluation.regression import write_value_predictions_csv
    from imagefit.features.extract import error_texts

    values, errors = [], []
    for _, value, failures in model.iter_predict_files(paths, progress=not args.quiet):
        values.append(value)
        errors += error_texts(failures)
    value = np.concatenate(values)
    lower, upper = model.bounds(value)
    n_errors = sum(bool(e) for e in errors)
    if args.out:
        write_value_predictions_csv(args.out, paths, value, lower, upper, errors,
                                    leading=leading)
        if not args.quiet:
            print(f"Wrote {len(paths):,} predictions ({model.interval:.0%} intervals) to "
                  f"{args.out}" + (f" ({n_errors} unreadable, see the error column)"
                                   if n_errors else "") + ".")
    else:
        for path, v, lo, hi, error in zip(paths, value, lower, upper, errors):
            print(f"{printable(path)}	ERROR	{printable(error)}" if error else
                  f"{printable(path)}	{v:.6g}	[{lo:.6g}, {hi:.6g}]")
    return 0 if n_errors < len(paths) else 1


def _counting(chunks, errors: list[int]):
    for preds in chunks:
        errors.append(sum(bool(e) for e in preds.errors))
        yield preds


def _print_chunk(preds, top_k: int, thresholds=None) -> None:
    """path, then the top-k classes and probabilities; a multi-label model's predicted
    labels (joined with |, "-" for none) come first."""
    from imagefit.evaluation.tagging import tag_names

    for i, path in enumerate(preds.paths):
        if preds.errors[i]:
            print(f"{printable(path)}\tERROR\t{printable(preds.errors[i])}")
            continue
        order = preds.proba[i].argsort()[::-1][:top_k]
        tops = "\t".join(f"{printable(preds.classes[j])}\t{preds.proba[i][j]:.4f}"
                         for j in order)
        if thresholds is not None:
            labels = tag_names(preds.classes, preds.proba[i] >= thresholds) or "-"
            tops = f"{printable(labels)}\t{tops}"
        print(f"{printable(path)}\t{tops}")
