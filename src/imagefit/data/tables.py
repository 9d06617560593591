"""Tables of images: CSV, TSV, Parquet or a pandas DataFrame, with chosen or recognised
columns for path, label, a fixed split (train / val / test) and a group. Reading streams the
rows into columns; paths resolve against a root, an extensionless path is matched to the one
image file it names, and every unusable row is a bad file with its reason, never a crash.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.data.images import IMAGE_SUFFIXES
from imagefit.data.index import BadFile, ImageIndex, Walker, check_classes
from imagefit.data.labels import labels_from_names, with_group_regex, with_groups
from imagefit.errors import ConfigError, DatasetError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
PATH_COLUMNS = ("path", "filename", "file", "image", "file_name", "filepath", "image_path",
                "image_id", "img")
LABEL_COLUMNS = ("label", "class", "category")
VALUE_COLUMNS = ("value", "target")  # recognised as the label column when regressing
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test"}
_TABLES_EXTRA = "pip install 'imagefit[tables]' (pandas and pyarrow)"
def is_table(data: Any) -> bool:
    """A table path (by suffix) or a pandas DataFrame."""
    if type(data).__name__ == "DataFrame":
        return True
    return isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in TABLE_SUFFIXES


def from_table(table: Any, *, root: str | os.PathLike | None = None, path_col: str | None = None,
               label_col: str | None = None, split_col: str | None = None,
               group_col: str | None = None, label_regex: str | None = None,
               group_regex: str | None = None, label_depth: Any = None, check_files: bool = True,
               min_classes: int = 2, task: str = "classify",
               label_sep: str | None = None) -> ImageIndex:
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
        task: "classify" (labels are class names; the default), "regress" (labels are
            numbers: the index has `targets`), or "auto" (what `imagefit train` passes):
            regress when every label is a number and some are not
            whole (a column of whole numbers stays class names: ids, or counts; say
            "regress" to predict them as numbers). What was decided is said in the notes.
            "multilabel": any number of labels per image (`index.tags`), either joined in
            the label column by `label_sep` (default `|`, or `;` where no label holds `|`)
            or marked 0/1 in several columns named by `label_col="a,b,c"`; "auto" picks it
            for such columns, or for labels holding `|` or `;`.
        label_sep: multi-label: the separator of the labels in one column.

    Raises:
        DatasetError: unreadable table, missing or ambiguous columns, bad split values, too
            few classes, or (regress) a label that is not a number.

    Example:
        >>> index = from_table("labels.csv", path_col="file", group_col="patient")  # doctest: +SKIP
    """
    if label_depth is not None:
        raise ConfigError("--label-depth applies to folders; a table names its labels in a "
                          "column (or use --label-regex on its paths).")
    name, header, columns, base, lines = _read_table(table, root)
    report_notes: list[str] = []
    path_name = _pick_column(name, header, path_col, PATH_COLUMNS, "path", report_notes)
    label_name = indicator = None
    if label_col is not None and "," in label_col and label_col not in header \
            and label_regex is None:  # a column named "a, b" is still one column
        if task not in ("auto", "multilabel"):
            raise ConfigError("Several label columns (--label-col a,b,c) are 0/1 labels of a "
                              "multi-label task; use --task multilabel (or auto).")
        indicator = [_pick_column(name, header, c.strip(), (), "label", report_notes)
                     for c in label_col.split(",") if c.strip()]
    elif label_regex is None:
        candidates = LABEL_COLUMNS
        if task == "regress" or (task == "auto" and not any(h.lower() in LABEL_COLUMNS
                                                             for h in header)):
            candidates += VALUE_COLUMNS  # a `value` column beside a `label` one stays aside
        label_name = _pick_column(name, header, label_col, candidates, "label", report_notes)
    split_name = _pick_column(name, header, split_col, ("split",), "split", report_notes,
                              required=False)
    group_name = _pick_column(name, header, group_col, (), "group", report_notes,
                              required=bool(group_col))
    raw_paths = columns[path_name]
    n = len(raw_paths)
    labels = columns[label_name] if label_name else [""] * n
    if indicator:
        labels = _indicator_labels(name, indicator, columns, lines)
        label_name = ",".join(indicator)
    splits = _split_values(name, columns[split_name], lines) if split_name else None
    groups = columns[group_name] if group_name else None

    walker = Walker(follow_links=True)
    walker.report.notes.extend(report_notes)
    rows, paths = _usable_rows(name, raw_paths, labels, lines, base, walker,
                               labelled=bool(label_name) and not indicator,
                               check_files=check_files)
    seen = dict(zip(paths, rows))
    if label_regex:
        paths, names = labels_from_names(paths, label_regex, walker)
        rows = [seen[p] for p in paths]
    else:
        names = [labels[r].strip() for r in rows]
    missing = [b for b in walker.report.bad_files if b.reason == "missing"]
    if not names and missing:  # usually a table whose paths start elsewhere
        raise DatasetError(f"None of the files {name} names exists: {len(missing)} are missing "
                           f"under {base} (e.g. {missing[0].path}). Set --root to the folder "
                           f"its paths start from.")
    task = _decide_task(task, name, label_name, names, [lines[r] for r in rows],
                        walker.report.notes, indicator=bool(indicator), label_sep=label_sep)
    if task == "multilabel":
        index = _tag_index(paths, names, indicator, label_sep, walker, name)
    elif task == "regress":
        index = ImageIndex.from_values(paths, [float(v) for v in names])
        walker.report.min_classes = 1
    else:
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
        index = with_groups(index, [groups[r].strip() for r in rows])
    return with_group_regex(index, group_regex) if group_regex and groups is None else index


TASKS = ("auto", "classify", "regress", "multilabel")
TAG_SEPARATORS = ("|", ";")
_INDICATOR_VALUES = {"0": False, "1": True, "false": False, "true": True, "0.0": False,
                     "1.0": True}


def _indicator_labels(table: str, names: list[str], columns: dict[str, list[str]],
                      lines: list[int]) -> list[str]:
    """The 0/1 label columns `names` as one label text per row (the set labels joined by an
    ASCII unit separator, "" for none)."""
    bad = [(line, c, v) for c in names for line, v in zip(lines, columns[c])
           if v.strip().lower() not in _INDICATOR_VALUES]
    if bad:
        shown = ", ".join(f"line {line} column '{c}': {v!r}" for line, c, v in bad[:5])
        raise DatasetError(f"{table}: the label columns {names} must hold 0 or 1 on every "
                           f"row; {len(bad)} cells do not ({shown}).")
    return ["\x1f".join(c for c in names if _INDICATOR_VALUES[columns[c][r].strip().lower()])
            for r in range(len(lines))]


def _tag_index(paths: list[str], texts: list[str], indicator: list[str] | None,
               label_sep: str | None, walker: Walker, table: str) -> ImageIndex:
    """A multi-label index from each row's label text (split by the separator)."""
    if indicator:
        sep, classes = "\x1f", indicator
    else:
        sep = label_sep or next((s for s in TAG_SEPARATORS if any(s in t for t in texts)), "|")
        classes = None
        walker.report.notes.append(f"Task: multi-label, labels separated by {sep!r}.")
    tags = [sorted({t.strip() for t in text.split(sep) if t.strip()}) for text in texts]
    index = ImageIndex.from_tags(paths, tags, classes)
    unused = [c for c, n in zip(index.classes, index.counts()) if n == 0]
    if unused:
        walker.report.warnings.append(f"Labels {unused} are set on no image: the model will "
                                      f"never predict them.")
    if not index.classes:
        raise DatasetError(f"{table}: no image has a label; multi-label training needs some.")
    walker.report.min_classes = 1
    return index


def _decide_task(task: str, table: str, column: str | None, values: list[str],
                 lines: list[int], notes: list[str], *, indicator: bool = False,
                 label_sep: str | None = None) -> str:
    """"classify", "regress" or "multilabel" for the label `values` (see `from_table`)."""
    if task not in TASKS:
        raise ConfigError(f"The task must be one of {', '.join(TASKS)}, not {task!r}.")
    if task == "multilabel" or indicator:
        if column is None:
            raise ConfigError("Multi-label training reads its labels from a column "
                              "(--label-col), not from file names.")
        if indicator:
            notes.append(f"Task: multi-label, from the 0/1 columns {column.split(',')}.")
        return "multilabel"
    if task == "auto" and column is not None and any(
            s in v for v in values for s in ((label_sep,) if label_sep else TAG_SEPARATORS)):
        return "multilabel"
    if task == "classify" or column is None:
        if task == "regress":
            raise ConfigError("Regression reads its values from a label column "
                              "(--label-col), not from file names.")
        return "classify"
    numbers = [_number(v) for v in values]
    if task == "regress":
        bad = [(line, v) for line, v, x in zip(lines, values, numbers) if x is None]
        if bad:
            shown = ", ".join(f"line {line}: {v!r}" for line, v in bad[:5])
            raise DatasetError(f"{table}: column '{column}' must hold a number on every row "
                               f"to regress; {len(bad)} do not ({shown}). Fix them, or "
                               f"classify with --task classify.")
        notes.append(f"Task: regression on column '{column}'.")
        return "regress"
    if not values or any(x is None for x in numbers):
        return "classify"
    if all(x.is_integer() for x in numbers):
        notes.append(f"Column '{column}' holds whole numbers: they are class names here "
                     f"(--task regress predicts them as numbers).")
        return "classify"
    notes.append(f"Task: regression (column '{column}' holds numbers, not all whole; "
                 f"--task classify treats them as class names).")
    return "regress"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


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
            if not check_files or walker.classify_file(path, os.path.basename(path),
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
