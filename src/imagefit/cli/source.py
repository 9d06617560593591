"""The options every command that reads a dataset shares: how DATA's labels, splits and groups
are read (`data.sources.SourceOptions`)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from imagefit.data.index import ImageIndex
from imagefit.data.sources import SourceOptions, open_dataset

DATA_HELP = ("a folder of class sub-folders (or train/ + val/), a folder tree with "
             "--label-depth or --label-regex, or a table: CSV, TSV or Parquet")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The `data shape` option group."""
    g = parser.add_argument_group("data shape", "how DATA's labels, splits and groups are read "
                                  "(see README, 'Your data's shape')")
    g.add_argument("--root", metavar="DIR", help="tables: the folder relative paths start from "
                   "(default: the table's folder)")
    g.add_argument("--path-col", metavar="NAME", help="tables: the column of image paths "
                   "(default: path, filename, file, image...; extensions may be left out)")
    g.add_argument("--label-col", metavar="NAME", help="tables: the column of labels "
                   "(default: label, class or category); multi-label: several 0/1 columns "
                   "as a,b,c")
    g.add_argument("--label-sep", metavar="SEP", help="multi-label tables: the separator of "
                   "the labels in the label column (default | or ;)")
    g.add_argument("--split-col", metavar="NAME", help="tables: a column of train / val / test "
                   "(default: a column named split); test rows are only evaluated")
    g.add_argument("--group-col", metavar="NAME", help="tables: a column of groups (patient, "
                   "specimen, plate): a group is never split between training and validation")
    g.add_argument("--label-regex", metavar="PATTERN", help="the label is the first (...) group "
                   r"of PATTERN in each file name, e.g. '^(cat|dog)\.'")
    g.add_argument("--label-depth", metavar="N|leaf", help="folder trees: the class is the "
                   "first N folder levels (joined with /), or 'leaf', the folder holding the file")
    g.add_argument("--group-regex", metavar="PATTERN", help="the group is the first (...) group "
                   r"of PATTERN in each file name, e.g. '^(patient\d+)_'")


def source_values(args: argparse.Namespace) -> dict:
    """The data-shape options given on the command line."""
    names = [f.name for f in fields(SourceOptions) if f.name != "check_files"]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def open_data(args: argparse.Namespace, data: str, *, min_classes: int = 1,
              task: str | None = None) -> ImageIndex:
    """`data` read with the command line's data-shape options (and `task`, when given)."""
    values = source_values(args) | ({"task": task} if task else {})
    return open_dataset(data, SourceOptions(**values), min_classes=min_classes)


def open_test_data(args: argparse.Namespace, data: str, task: str | None = None) -> ImageIndex:
    """`data` to evaluate: only its test rows when a split column marks some (the others
    were trained or validated on), said unless --quiet. `task`: "regress" for a model that
    predicts numbers (its values are read as such)."""
    index = open_data(args, data, task=task)
    if len(index.test_part()):
        index = index.test_part()
        if not args.quiet:
            print(f"Evaluating the {len(index):,} rows the split column marks 'test'.")
    return index
