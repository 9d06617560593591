"""Every dataset shape, one entry point: `open_dataset(data, SourceOptions(...))`.

- a folder of class sub-folders, or `train/` + `val/` (`index.scan_class_folders`);
- a folder tree whose labels are a chosen depth of folders (`label_depth=N`) or the folder that
  holds each file (`label_depth="leaf"`);
- a folder of files whose names carry the label (`label_regex`, e.g. Kaggle's `cat.0.jpg`);
- a table (CSV, TSV, Parquet, or a pandas DataFrame) with chosen or recognised columns for
  path, label, a fixed split and a group (patient, specimen, plate) (`tables.py`);
- arrays in an `.npz` or SVHN-style `.mat` file (`arrays.py`).

Each returns an `ImageIndex`; groups (`group_col`, or `group_regex` on file names: `labels.py`)
fill its `groups` column, which the split keeps on one side. Nothing here decodes images.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imagefit._fileio import cache_folder, default_cache_dir
from imagefit.data.arrays import from_arrays, read_array_file
from imagefit.data.index import (ARRAY_SUFFIXES, ImageIndex, Walker, check_classes,
                                 scan_class_folders)
from imagefit.data.known_hashes import KnownFormats, KnownHashes
from imagefit.data.labels import (compile_pattern, labels_from_folders, labels_from_names,
                                  with_group_regex)
from imagefit.data.tables import TASKS, from_table, is_table
from imagefit.errors import ConfigError, DatasetError

TABLE_ONLY = ("root", "path_col", "label_col", "split_col", "group_col", "label_sep")


@dataclass(frozen=True)
class SourceOptions:
    """How to read labels, splits and groups from a dataset (all optional).

    Attributes:
        root: tables: the folder relative paths start from (default: the table's folder;
            the working directory for a DataFrame).
        path_col, label_col: tables: column names (default: recognised by name, and said).
        split_col: tables: a column of train / val / test (default: a column named `split`).
        group_col: tables: a column naming each image's group (patient, specimen...).
        label_regex: the label is the first group of this pattern, searched in the file name.
        label_depth: folders: the class is the first N folder levels (joined with "/") or
            "leaf", the folder that holds the file.
        group_regex: the group is the first group of this pattern, searched in the file name.
        check_files: tables: check that every file exists and looks like an image (False
            trusts the table, for very large ones; the pre-flight still decodes each file).
        task: tables: "classify" (the default), "regress" (a number per image),
            "multilabel" (any number of labels per image) or "auto" (what `imagefit train`
            passes: `from_table` decides from the labels).
        label_sep: tables, multi-label: the separator of the labels in one column (default
            `|`, or `;`).
    """

    root: str | None = None
    path_col: str | None = None
    label_col: str | None = None
    split_col: str | None = None
    group_col: str | None = None
    label_regex: str | None = None
    label_depth: int | str | None = None
    group_regex: str | None = None
    check_files: bool = True
    task: str = "classify"
    label_sep: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"The task must be one of {', '.join(TASKS)}, not {self.task!r}.")
        depth = self.label_depth
        if depth is not None and depth != "leaf":
            try:
                depth = int(depth)
            except (TypeError, ValueError):
                depth = 0
            if depth < 1:
                raise ConfigError(f"The 'label_depth' parameter must be a positive int or "
                                  f"'leaf'. Got {self.label_depth!r} instead.")
            object.__setattr__(self, "label_depth", depth)
        for name in ("label_regex", "group_regex"):
            compile_pattern(getattr(self, name), name)
        for one, other in (("label_regex", "label_depth"), ("label_regex", "label_col"),
                           ("group_regex", "group_col")):
            if getattr(self, one) is not None and getattr(self, other) is not None:
                raise ConfigError(f"Give either --{one.replace('_', '-')} or "
                                  f"--{other.replace('_', '-')}, not both.")

    @property
    def is_default(self) -> bool:
        return self == SourceOptions()

    def for_data(self, data: Any) -> "SourceOptions":
        """These options without the table-only ones when `data` is not a table (a `--val`
        folder beside a training table)."""
        if is_table(data):
            return self
        return dataclasses.replace(self, **dict.fromkeys(TABLE_ONLY))


def open_dataset(data: Any, options: SourceOptions | None = None, *, min_classes: int = 2,
                 follow_links: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> ImageIndex:
    """Index any supported dataset shape (see the module docstring).

    Args:
        data: an `ImageIndex` (returned as it is), a folder, a table path or a DataFrame.
        options: how labels, splits and groups are read.
        min_classes: fewer usable classes is an error (2 to train, 1 to evaluate).
        cache_dir: where the images of an array file are stored as PNG files (default: the
            imagefit cache, `$IMAGEFIT_CACHE` or ~/.cache/imagefit).

    Raises:
        DatasetError: the data cannot be read or has too few classes; ConfigError: options
            that do not fit the data.

    Example:
        >>> options = SourceOptions(label_regex=r"^(cat|dog)[.]")
        >>> index = open_dataset("train/", options)          # doctest: +SKIP
    """
    options = options or SourceOptions()
    if isinstance(data, ImageIndex):
        return data
    if is_table(data):
        return from_table(data, **dataclasses.asdict(options), min_classes=min_classes)
    if options.task == "regress":
        raise ConfigError(f"Regression reads each image's number from a table (CSV, TSV, "
                          f"Parquet or a DataFrame: a path and a value column); {data} is not "
                          f"one.")
    if options.task == "multilabel":
        raise ConfigError(f"Multi-label training reads each image's labels from a table (CSV, "
                          f"TSV, Parquet or a DataFrame: a path column and a column of labels "
                          f"joined by |, or several 0/1 columns); {data} is not one.")
    options = dataclasses.replace(options, task="classify")  # "auto": classes, but in a table
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in ARRAY_SUFFIXES:
        if not options.is_default:
            raise ConfigError(f"{data} is an array file: its labels are the y array, so "
                              f"the data-shape options do not apply.")
        index = read_array_file(data, folder=cache_folder(cache_dir))
        if len(index.classes) < min_classes:
            raise DatasetError(f"{data} has {len(index.classes)} class; a classifier needs at "
                               f"least {min_classes}.")
        return index
    table_only = [f"--{name.replace('_', '-')}" for name in TABLE_ONLY
                  if getattr(options, name)]
    if table_only:
        raise ConfigError(f"{', '.join(table_only)} apply to tables (CSV, TSV, Parquet); "
                          f"{data} is not one.")
    known = KnownHashes.for_folder(Path(cache_dir) if cache_dir else default_cache_dir(),
                                   data).formats()  # unchanged files are not opened again
    if options.label_regex or options.label_depth:
        index = _scan_tree(Path(data), options, min_classes, follow_links, known)
    else:
        index = scan_class_folders(data, min_classes=min_classes, follow_links=follow_links,
                                   known_formats=known)
    return with_group_regex(index, options.group_regex)


def scan_folder(root: str | os.PathLike, *, follow_links: bool = True,
                min_classes: int = 2) -> ImageIndex:
    """Index a dataset as it is laid out: class sub-folders, a `train/` + `val/` pair, or a
    table (CSV, TSV, Parquet) with recognised column names; `open_dataset` takes options.

    Example:
        >>> index = imagefit.scan_folder("data/")          # doctest: +SKIP
        >>> index.classes, index.counts()                   # doctest: +SKIP
        (('cat', 'dog'), array([120, 45]))
    """
    return open_dataset(root, min_classes=min_classes, follow_links=follow_links)


def as_index(X: Any, y: Any = None, *, folder: str | os.PathLike,
             classes: Sequence[str] | None = None) -> ImageIndex:
    """What the estimator's methods take, as an `ImageIndex`: an `ImageIndex` as it is, a
    pandas DataFrame (`from_table`), a uint8 image array (stored under `folder`), or image
    paths with optional labels `y` (class names; or, multi-label, a list of label names per
    image or an indicator matrix: `is_multilabel_y`)."""
    if isinstance(X, ImageIndex):
        return X
    if isinstance(X, (str, os.PathLike)) or is_table(X):  # a folder, table or array file
        return open_dataset(X, min_classes=1, cache_dir=folder)
    if y is not None and is_multilabel_y(y):
        if is_table(y):  # a DataFrame of 0/1 columns, named by its labels
            values = y.to_numpy()
            if not np.isin(values, (0, 1, True, False)).all():
                raise ConfigError("A DataFrame of labels must hold 0/1 (or True/False) columns, "
                                  "one per label.")
            y, classes = values.astype(np.int64), [str(c) for c in y.columns]
        elif not isinstance(y, np.ndarray):
            y = list(y)  # a pandas Series of lists, a tuple...
        paths = as_index(X, folder=folder).paths
        return ImageIndex.from_tags(paths, y, classes)
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUST":  # T: variable-width text
        return from_arrays(X, y, folder=folder, classes=None if y is None else classes)
    return ImageIndex.from_paths(X, y, None if y is None else classes)


def is_multilabel_y(y: Any) -> bool:
    """Multi-label targets as scikit-learn users pass them: an indicator matrix of 0/1 with
    two or more columns (an array, or a DataFrame whose columns name the labels), or a
    sequence (list, array, pandas Series) whose items are lists, tuples or sets of label
    names. A single column (n, 1) is one label per image, as scikit-learn reads it."""
    if is_table(y):
        return len(y.columns) > 1
    if isinstance(y, np.ndarray) and y.dtype != object:
        return y.ndim == 2 and y.shape[1] > 1
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__") or not len(y):
        return False
    rows = list(y)
    return all(isinstance(row, (list, tuple, set, frozenset)) for row in rows)


def _scan_tree(root: Path, options: SourceOptions, min_classes: int, follow_links: bool,
               known: KnownFormats | None) -> ImageIndex:
    """Every image under `root`, labelled by folder depth or by a file-name pattern."""
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {str(root)!r} does not exist or is not a folder.")
    walker = Walker(follow_links, root, known)
    parts = walker.split_folders(root, classes_below=False)  # train/ + val/: kept as a split
    found = [(path, Path(folder), subset) for subset, folder in parts
             for path in walker.walk_tree(Path(folder))]
    if options.label_regex:
        paths, names = labels_from_names([f[0] for f in found], options.label_regex, walker)
    else:
        paths, names = labels_from_folders(found, options.label_depth, walker)
    classes = check_classes(names, walker, root, min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    subset_of = {path: subset for path, _, subset in found}
    subsets = np.array([subset_of[p] for p in paths], dtype=str) if parts[0][0] else None
    return dataclasses.replace(index, report=walker.report, root=str(root), subsets=subsets)


__all__ = ["SourceOptions", "open_dataset", "scan_folder", "as_index", "TABLE_ONLY"]
