"""Every dataset shape, one entry point: `open_dataset(data, SourceOptions(...))`.

- a folder of class sub-folders, or `train/` + `val/` (`index.scan_class_folders`);
- a folder tree whose labels are a chosen depth of folders (`label_depth=N`) or the folder that
  holds each file (`label_depth="leaf"`);
- a folder of files whose names carry the label (`label_regex`, e.g. Kaggle's `cat.0.jpg`);
- a table (CSV, TSV, Parquet, or a pandas DataFrame) with chosen or recognised columns for
  path, label, a fixed split and a group (patient, specimen, plate);
- arrays in an `.npz` or SVHN-style `.mat` file (`arrays.py`).

Each returns an `ImageIndex`; groups (`group_col`, or `group_regex` on file names) fill its
`groups` column, which the split keeps on one side. Nothing here decodes images.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from imagefit._fileio import cache_folder
from imagefit.data.arrays import from_arrays, read_array_file
from imagefit.data.images import IMAGE_SUFFIXES
from imagefit.data.index import (ARRAY_SUFFIXES, BadFile, ImageIndex, Walker, check_classes,
                                 scan_class_folders)
from imagefit.errors import ConfigError, DatasetError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
TABLE_ONLY = ("root", "path_col", "label_col", "split_col", "group_col")
PATH_COLUMNS = ("path", "filename", "file", "image", "file_name", "filepath", "image_path",
                "image_id", "img")
LABEL_COLUMNS = ("label", "class", "category")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test"}
_TABLES_EXTRA = "pip install 'imagefit[tables]' (pandas and pyarrow)"
# The group of an image that has none (empty group cell, unmatched --group-regex): this prefix
# and the image's path, unique per image, so that it is a group of its own. (Not a NUL: NumPy's
# string functions read a leading NUL as an empty string.)
UNGROUPED = "<no group>:"


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

    def __post_init__(self) -> None:
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
            _compile(getattr(self, name), name)
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


def is_table(data: Any) -> bool:
    """A table path (by suffix) or a pandas DataFrame."""
    if type(data).__name__ == "DataFrame":
        return True
    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in TABLE_SUFFIXES


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
    if options.label_regex or options.label_depth:
        index = _scan_tree(Path(data), options, min_classes, follow_links)
    else:
        index = scan_class_folders(data, min_classes=min_classes, follow_links=follow_links)
    return _with_group_regex(index, options.group_regex)


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
    paths with optional labels `y`."""
    if isinstance(X, ImageIndex):
        return X
    if isinstance(X, (str, os.PathLike)) or is_table(X):  # a folder, table or array file
        return open_dataset(X, min_classes=1, cache_dir=folder)
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUS":
        return from_arrays(X, y, folder=folder, classes=None if y is None else classes)
    return ImageIndex.from_paths(X, y, None if y is None else classes)


def _compile(pattern: str | None, name: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"The '{name}' parameter is not a valid regular expression "
                          f"({exc}). Got {pattern!r} instead.") from None


def _first_group(match: re.Match) -> str:
    return match.group(1) if match.re.groups else match.group(0)


def _scan_tree(root: Path, options: SourceOptions, min_classes: int,
               follow_links: bool) -> ImageIndex:
    """Every image under `root`, labelled by folder depth or by a file-name pattern."""
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {str(root)!r} does not exist or is not a folder.")
    walker = Walker(follow_links, root)
    parts = walker.split_folders(root, classes_below=False)  # train/ + val/: kept as a split
    found = [(path, Path(folder), subset) for subset, folder in parts
             for path in walker.walk_tree(Path(folder))]
    if options.label_regex:
        paths, names = _labels_from_names([f[0] for f in found], options.label_regex, walker)
    else:
        paths, names = _labels_from_folders(found, options.label_depth, walker)
    classes = check_classes(names, walker, root, min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    subset_of = {path: subset for path, _, subset in found}
    subsets = np.array([subset_of[p] for p in paths], dtype=str) if parts[0][0] else None
    return dataclasses.replace(index, report=walker.report, root=str(root), subsets=subsets)


def _labels_from_names(paths: Iterable[str], pattern: str, walker: Walker
                       ) -> tuple[list[str], list[str]]:
    """(paths, labels) of the files whose name matches `pattern`; the others are bad files
    (reason `no_label`); none matching is an error that shows example names."""
    regex = _compile(pattern, "label_regex")
    kept, names, unmatched = [], [], []
    for path in paths:
        match = regex.search(os.path.basename(path))
        if match and _first_group(match):
            kept.append(path)
            names.append(_first_group(match))
        else:
            unmatched.append(path)
    if not kept:
        examples = ", ".join(repr(os.path.basename(p)) for p in unmatched[:3])
        raise DatasetError(f"No file name matches --label-regex '{pattern}' (examples: "
                           f"{examples or 'no image files found'}).")
    if unmatched:
        walker.report.bad_files.extend(
            BadFile(p, "no_label", f"file name does not match --label-regex '{pattern}'")
            for p in unmatched)
        walker.report.warnings.append(
            f"{len(unmatched)} file names do not match --label-regex '{pattern}' and are left "
            f"out ({len(kept)} matched), e.g. " + ", ".join(os.path.basename(p)
                                                            for p in unmatched[:3]) + ".")
    walker.report.notes.append(f"Labels from file names: {len(kept):,} files matched "
                               f"'{pattern}'.")
    return kept, names


def _labels_from_folders(found: Iterable[tuple[str, Path, str]], depth: int | str,
                         walker: Walker) -> tuple[list[str], list[str]]:
    """(paths, labels) of (path, the folder its label starts from, subset) rows: the first
    `depth` folder levels, or the holding folder ("leaf")."""
    kept, names = [], []
    shallow = 0
    leaf_parents: dict[str, set[str]] = defaultdict(set)
    for path, root, _ in found:
        folders = Path(os.path.relpath(path, root)).parts[:-1]
        if depth == "leaf":
            if not folders:
                shallow += 1
                continue
            label = folders[-1]
            leaf_parents[label].add("/".join(folders))
        else:
            if len(folders) < depth:
                shallow += 1
                continue
            label = "/".join(folders[:depth])
        kept.append(path)
        names.append(label)
    clashes = {leaf: sorted(where) for leaf, where in leaf_parents.items() if len(where) > 1}
    if clashes:
        leaf, where = sorted(clashes.items())[0]
        deepest = max(len(w.split("/")) for ws in clashes.values() for w in ws)
        raise DatasetError(f"--label-depth leaf: {len(clashes)} folder names hold images under "
                           f"different parents, e.g. '{leaf}' in {', '.join(where[:4])}. Rename "
                           f"them, or label by path with --label-depth {deepest}.")
    need = "inside a folder" if depth == "leaf" else f"at least {depth} folders deep"
    if shallow and not kept:
        raise DatasetError(f"No image is {need} (--label-depth {depth}); {shallow} are "
                           f"shallower. Choose a smaller depth.")
    if shallow:
        walker.report.warnings.append(f"{shallow} images are not {need} and are not used.")
    how = ("the folder holding each image" if depth == "leaf" else "the top folder" if depth == 1
           else f"the first {depth} folder levels")
    walker.report.notes.append(f"Classes are {how} (--label-depth {depth}).")
    return kept, names


def _with_group_regex(index: ImageIndex, pattern: str | None) -> ImageIndex:
    """`index` with its `groups` column from a pattern searched in each file name; a file that
    does not match is a group of its own (with a warning)."""
    if not pattern:
        return index
    regex = _compile(pattern, "group_regex")
    groups, unmatched = [], 0
    for path in index.paths.tolist():
        match = regex.search(os.path.basename(path))
        if match and _first_group(match):
            groups.append(_first_group(match))
        else:
            unmatched += 1
            groups.append("")
    if unmatched == len(groups) and groups:
        examples = ", ".join(repr(os.path.basename(p)) for p in index.paths[:3].tolist())
        raise DatasetError(f"No file name matches --group-regex '{pattern}' (examples: "
                           f"{examples}).")
    if unmatched:
        index.report.warnings.append(f"{unmatched} file names do not match --group-regex "
                                     f"'{pattern}'; each of them is a group of its own.")
    return _with_groups(index, groups)


def _with_groups(index: ImageIndex, groups: list[str]) -> ImageIndex:
    """Empty groups become singletons (named by row, so they never merge)."""
    column = np.array([g or f"{UNGROUPED}{path}" for g, path in zip(groups, index.paths)],
                      dtype=str)
    index = dataclasses.replace(index, groups=column)
    n_groups = len(set(column.tolist()))
    index.report.notes.append(f"{n_groups:,} groups; the split keeps each group on one side.")
    return index


# ----------------------------------------------------------------------------------------
# Tables


def from_table(table: Any, *, root: str | os.PathLike | None = None, path_col: str | None = None,
               label_col: str | None = None, split_col: str | None = None,
               group_col: str | None = None, label_regex: str | None = None,
               group_regex: str | None = None, label_depth: Any = None, check_files: bool = True,
               min_classes: int = 2) -> ImageIndex:
    """Index a table of images: a CSV, TSV or Parquet file, or a pandas DataFrame.

    Columns are found by name when not given (path: `path`, `filename`, `file`, `image`...;
    label: `label`, `class`, `category`; split: `split`) and what was picked is said in
    `index.report.notes`. Relative paths resolve against `root` (default: the table's folder),
    a path without extension is matched to the one image file it names, and a missing file is
    a bad file (reason `missing`). A split column holds train / val / test: test rows are kept
    out of training (`ImageIndex.test_part`). With `label_regex` the label comes from each
    file name instead of a column.

    Args:
        check_files: False trusts the paths (no existence or format check): for tables of
            millions of rows whose files are checked later by the pre-flight.

    Raises:
        DatasetError: unreadable table, missing or ambiguous columns, bad split values, too
            few classes.

    Example:
        >>> index = from_table("labels.csv", path_col="file", group_col="patient")  # doctest: +SKIP
    """
    if label_depth is not None:
        raise ConfigError("--label-depth applies to folders; a table names its labels in a "
                          "column (or use --label-regex on its paths).")
    name, header, columns, base, lines = _read_table(table, root)
    report_notes: list[str] = []
    path_name = _pick_column(name, header, path_col, PATH_COLUMNS, "path", report_notes)
    label_name = None
    if label_regex is None:
        label_name = _pick_column(name, header, label_col, LABEL_COLUMNS, "label", report_notes)
    split_name = _pick_column(name, header, split_col, ("split",), "split", report_notes,
                              required=False)
    group_name = _pick_column(name, header, group_col, (), "group", report_notes,
                              required=bool(group_col))
    raw_paths = columns[path_name]
    n = len(raw_paths)
    labels = columns[label_name] if label_name else [""] * n
    splits = _split_values(name, columns[split_name], lines) if split_name else None
    groups = columns[group_name] if group_name else None

    walker = Walker(follow_links=True)
    walker.report.notes.extend(report_notes)
    rows, paths = _usable_rows(name, raw_paths, labels, lines, base, walker,
                               labelled=bool(label_name), check_files=check_files)
    seen = dict(zip(paths, rows))
    if label_regex:
        paths, names = _labels_from_names(paths, label_regex, walker)
        rows = [seen[p] for p in paths]
    else:
        names = [labels[r].strip() for r in rows]
    missing = [b for b in walker.report.bad_files if b.reason == "missing"]
    if not names and missing:  # usually a table whose paths start elsewhere
        raise DatasetError(f"None of the files {name} names exists: {len(missing)} are missing "
                           f"under {base} (e.g. {missing[0].path}). Set --root to the folder "
                           f"its paths start from.")
    classes = check_classes(names, walker, Path(name), min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    index = dataclasses.replace(
        index, report=walker.report, root=str(base),
        subsets=np.array([splits[r] for r in rows], dtype=str) if splits else None)
    if groups is not None:
        empty = [lines[r] for r in rows if not groups[r].strip()]
        if empty:
            index.report.warnings.append(
                f"{len(empty)} rows have an empty '{group_name}' (lines "
                f"{', '.join(map(str, empty[:5]))}{'...' if len(empty) > 5 else ''}); each of "
                f"them is a group of its own.")
        index = _with_groups(index, [groups[r].strip() for r in rows])
    return _with_group_regex(index, group_regex) if group_regex and groups is None else index


@dataclass(frozen=True)
class TableFiles:
    """Every row of a table with the file its path column names (for prediction: the rows stay
    in table order, and a missing file keeps its row, to get an error there)."""

    header: list[str]
    columns: dict[str, list[str]]
    paths: list[str]


def table_files(table: Any, *, root: str | os.PathLike | None = None,
                path_col: str | None = None) -> TableFiles:
    """The rows of `table` and the file each names (resolved as `from_table` does).

    Raises:
        DatasetError: unreadable table, or no (or an ambiguous) path column.
    """
    name, header, columns, base, _ = _read_table(table, root)
    path_name = _pick_column(name, header, path_col, PATH_COLUMNS, "path", [])
    resolver = _PathResolver(base)
    paths = []
    for raw in columns[path_name]:
        found = resolver.resolve(raw.strip()) if raw.strip() else f"{base}/"
        paths.append(found.path if isinstance(found, BadFile) else found)
    return TableFiles(header, columns, paths)


def _usable_rows(name: str, raw_paths: list[str], labels: list[str], lines: list[int],
                 base: Path, walker: Walker, *, labelled: bool, check_files: bool
                 ) -> tuple[list[int], list[str]]:
    """(row numbers, resolved paths) of the rows that name a usable image once; the others
    are reported on `walker.report` (bad files, repeats)."""
    rows, paths, first_row = [], [], {}
    repeats, conflicting = 0, set()
    resolver = _PathResolver(base)
    for row, (raw, label, line) in enumerate(zip(raw_paths, labels, lines)):
        raw, label = raw.strip(), label.strip()
        if not raw:
            path = BadFile(f"{name}:{line}", "io_error", "row has no path")
        elif labelled and not label:
            path = BadFile(raw, "io_error", f"row {line} has no label")
        else:
            path = resolver.resolve(raw) if check_files else os.path.join(base, raw)
        if isinstance(path, BadFile):
            walker.report.bad_files.append(path)
        elif path in first_row:
            if labels[first_row[path]].strip() == label:
                repeats += 1
            else:
                conflicting.add(path)
        else:
            first_row[path] = row
            if not check_files or walker.classify_file(Path(path), Path(path).name,
                                                       label) is not None:
                rows.append(row)
                paths.append(path)
    walker.report.add_repeats(repeats, conflicting, "rows")
    keep = [i for i, p in enumerate(paths) if p not in conflicting]
    return [rows[i] for i in keep], [paths[i] for i in keep]


class _PathResolver:
    """Table paths to files: relative to `base`, absolute as given, and a name without an
    extension matched to the single image file it names."""

    def __init__(self, base: Path):
        self.base = base
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def resolve(self, raw: str) -> str | BadFile:
        path = self.base / raw  # an absolute raw path replaces base
        try:
            if path.exists():
                return str(path)
            if "\\" in raw and os.sep == "/" and (self.base / raw.replace("\\", "/")).exists():
                return str(self.base / raw.replace("\\", "/"))  # written on Windows
        except (OSError, ValueError) as exc:  # a name too long, a NUL: not a file name
            return BadFile(raw[:200], "io_error", f"not a usable file name ({exc})")
        if not path.suffix or path.suffix.lower() not in IMAGE_SUFFIXES:
            matches = self._stem_matches(path)
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                return BadFile(str(path), "ambiguous", "names several image files: "
                               + ", ".join(os.path.basename(m) for m in matches))
        return BadFile(str(path), "missing", "no such file")

    def _stem_matches(self, path: Path) -> list[str]:
        folder = path.parent
        if folder not in self._listings:  # one listing per folder, not one glob per row
            by_stem: dict[str, list[str]] = defaultdict(list)
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        stem, suffix = os.path.splitext(entry.name)
                        if suffix.lower() in IMAGE_SUFFIXES:
                            by_stem[stem].append(entry.path)
            except OSError:
                pass
            self._listings[folder] = by_stem
        return sorted(self._listings[folder].get(path.name, []))


def _read_table(table: Any, root: str | os.PathLike | None
                ) -> tuple[str, list[str], dict[str, list[str]], Path, list[int]]:
    """(display name, header, {column: str values}, base folder, the line each row starts on)
    of a table; rows are streamed into the columns (a file of millions of rows is never held
    as row lists too). Blank lines are skipped."""
    if type(table).__name__ == "DataFrame":
        base = Path(root) if root is not None else Path.cwd()
        header = [str(c) for c in table.columns]
        _check_header(header, "the DataFrame")
        columns = {str(c): [_cell(v) for v in table[c].tolist()] for c in table.columns}
        return "the DataFrame", header, columns, base, list(range(2, len(table) + 2))
    path = Path(table)
    base = Path(root) if root is not None else path.parent
    if not path.is_file():
        raise DatasetError(f"Table {str(path)!r} does not exist or is not a file.")
    if root is not None and not base.is_dir():
        raise DatasetError(f"--root {str(base)!r} does not exist or is not a folder.")
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pandas as pd
        except ImportError:
            raise DatasetError(f"Reading Parquet needs pandas and pyarrow: {_TABLES_EXTRA}."
                               ) from None
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise DatasetError(f"Reading Parquet needs pyarrow: {_TABLES_EXTRA}.") from None
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors have no common base
            raise DatasetError(f"{path} is not a readable Parquet file: {exc}") from None
        name, header, columns, _, lines = _read_table(frame, base)
        return str(path), header, columns, base, lines
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DatasetError(f"{path} is empty; expected a header row, e.g. path,label.")
            cells: list[list[str]] = [[] for _ in header]
            line = reader.line_num + 1
            for record in reader:
                start, line = line, reader.line_num + 1
                if not any(cell.strip() for cell in record):
                    continue
                if len(record) > len(header):
                    raise DatasetError(f"{path} line {start} has {len(record)} fields, the "
                                       f"header has {len(header)}; quote fields that contain "
                                       f"{'tabs' if delimiter == chr(9) else 'commas'}.")
                record += [""] * (len(header) - len(record))  # a short row: the rest empty
                for column, cell in zip(cells, record):
                    column.append(cell)
                lines.append(start)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           f"save it as UTF-8 (in Excel: CSV UTF-8).") from None
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a readable table: {exc}") from None
    _check_header(header, str(path))
    return str(path), header, dict(zip(header, cells)), base, lines


def _check_header(header: list[str], table: str) -> None:
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DatasetError(f"{table}: the header names {repeated} more than once; give every "
                           f"column its own name.")


def _cell(value: Any) -> str:
    """A DataFrame cell as a table's text: missing is empty, 3.0 is "3" (a label or group
    column with a missing value turns pandas' integers into floats)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _pick_column(table: str, header: list[str], given: str | None, candidates: tuple[str, ...],
                 role: str, notes: list[str], *, required: bool = True) -> str | None:
    """The column for `role`: the given name, else the one recognised candidate."""
    if given is not None:
        if given in header:
            return given
        folded = [h for h in header if h.lower() == given.lower()]
        if len(folded) == 1:
            return folded[0]
        raise DatasetError(f"{table} has no column {given!r} (--{role}-col); its columns are "
                           f"{header}.")
    found = [h for h in header if h.lower() in candidates]
    if len(found) == 1:
        if role in ("path", "label", "split"):
            notes.append(f"Using column '{found[0]}' of {table} as the {role}"
                         + (" (train / val / test)." if role == "split" else "."))
        return found[0]
    if not required and not found:
        return None
    if found:
        raise DatasetError(f"{table} has several possible {role} columns {found}; choose one "
                           f"with --{role}-col.")
    looks_like_data = any(Path(h).suffix.lower() in IMAGE_SUFFIXES for h in header)
    hint = (" Its first line looks like data: add a header line such as path,label."
            if looks_like_data else f" Name it with --{role}-col.")
    raise DatasetError(f"{table} has no {role} column (looked for {list(candidates)}); its "
                       f"columns are {header}.{hint}")


def _split_values(table: str, values: list[str], lines: list[int]) -> list[str]:
    out = []
    for line, value in zip(lines, values):
        split = SPLIT_VALUES.get(value.strip().lower())
        if split is None:
            raise DatasetError(f"{table} line {line}: split value {value!r} is not one of "
                               f"train, val, test.")
        out.append(split)
    return out


def groups_per_class(index: ImageIndex) -> dict[str, int]:
    """Distinct groups holding each class's images (empty without groups)."""
    if index.groups is None:
        return {}
    pairs = Counter(zip(index.labels.tolist(), index.groups.tolist()))
    per_class = Counter(label for label, _ in pairs)
    return {name: per_class.get(c, 0) for c, name in enumerate(index.classes)}


__all__ = ["SourceOptions", "open_dataset", "scan_folder", "from_table", "as_index", "table_files",
           "TableFiles", "is_table", "groups_per_class", "TABLE_ONLY"]
