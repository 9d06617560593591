"""Indexing a folder of class sub-folders or a `train/` + `val/` pair (other shapes, tables
among them, are read by `sources.py` into the same `ImageIndex`). The result, `ImageIndex`,
holds NumPy arrays (never one Python object per image, so DataLoader workers do not copy it
page by page) and a `ScanReport` of everything skipped or ignored.
This module reads only the first bytes of each file; decoding is the pre-flight's job (audit.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imagefit._fileio import sha256_file
from imagefit.data.images import ALLOWED_FORMATS, IMAGE_SUFFIXES, sniff_format
from imagefit.data.known_hashes import KnownFormats
from imagefit.data.sampling import iterative_stratification, stratified_subset
from imagefit.data.text import compact
from imagefit.errors import ConfigError, DatasetError, ImageLoadError

VAL_DIR_NAMES = ("val", "valid", "validation")
TAG_SEPARATOR = "|"  # between the labels of one image in split.csv, predictions, the CLI
ARRAY_SUFFIXES = (".npz", ".mat")  # files that hold their images (arrays.py)
_IGNORED_FILE_NAMES = {".ds_store": ".DS_Store", "thumbs.db": "Thumbs.db",
                       "desktop.ini": "desktop.ini"}
_IGNORED_DIR_NAMES = {"__macosx": "__MACOSX", ".ipynb_checkpoints": ".ipynb_checkpoints"}


@dataclass(frozen=True)
class BadFile:
    """A file that looks like an image but cannot be used, with the reason."""

    path: str
    reason: str
    message: str

    def error(self, where: str = "") -> ImageLoadError:
        """This failure as the exception a decoder raises (`where` is added to the message)."""
        return ImageLoadError(self.reason, f"{self.message} {where}".rstrip())


@dataclass
class ScanReport:
    """What scanning saw besides the usable images; nothing is skipped silently."""

    ignored: Counter = field(default_factory=Counter)
    bad_files: list[BadFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was chosen (columns, label rules)
    extension_mismatch: int = 0
    # The scan's `min_classes`: the pre-flight holds the classes that survive decoding to it.
    min_classes: int = 1

    def add_repeats(self, repeats: int, conflicting: Iterable[str], what: str) -> None:
        """Report rows that repeat an earlier (file, label), used once, and each file given
        two labels: a bad file (`conflicting_labels`), used in neither class."""
        if repeats:
            self.warnings.append(f"{repeats} {what} repeat an earlier one (same file, same "
                                 f"label) and are used once.")
        self.bad_files.extend(BadFile(p, "conflicting_labels", f"{what} give it different "
                                      f"labels") for p in sorted(conflicting))

    def ignored_summary(self) -> str:
        """One line such as `Ignored 5 non-image files (.DS_Store x2, .txt x3).`"""
        total = sum(self.ignored.values())
        if not total:
            return ""
        parts = ", ".join(f"{k} x{v}" for k, v in sorted(self.ignored.items()))
        return f"Ignored {total} non-image entries ({parts})."


@dataclass(frozen=True, eq=False)
class ImageIndex:
    """A table of images: paths, integer labels into `classes`, and optional columns.

    Attributes:
        paths: str array of file paths.
        labels: int64 array; -1 where unknown.
        classes: class names; `labels` index into it.
        subsets: optional str array ("train", "val", "test") from a `train/` + `val/` layout or
            a table's split column.
        sha256: optional str array of content hashes (filled by the pre-flight).
        groups: optional str array: images of one group (patient, specimen...) are never
            split between training and validation.
        report: what the scan skipped, ignored or warned about.
        checked: whether every file went through the pre-flight (`data.audit.preflight`);
            `fit` runs it on an index that did not.
        targets: optional float array: each image's value, for regression (`from_values`);
            `labels` and `classes` then hold the values' quantile bins, so that splits and
            subsets are stratified by value.
        tags: optional bool matrix (n, len(classes)): the labels of each image, for multi-label
            tagging (`from_tags`); `labels` then holds each image's rarest label (-1: none), so
            that subsets spread the rare labels, and `counts()` gives each label's images.

    Example:
        >>> index = ImageIndex.from_paths(["a.png", "b.png"], ["cat", "dog"])
        >>> index.classes, index.labels.tolist()
        (('cat', 'dog'), [0, 1])
    """

    paths: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    subsets: np.ndarray | None = None
    sha256: np.ndarray | None = None
    report: ScanReport = field(default_factory=ScanReport)
    root: str | None = None
    checked: bool = False
    groups: np.ndarray | None = None
    targets: np.ndarray | None = None
    tags: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        for name in ("labels", "subsets", "sha256", "groups", "targets", "tags"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"column {name!r} has {len(column)} rows, paths has {n}")
        for name in ("paths", "subsets", "sha256", "groups"):
            object.__setattr__(self, name, compact(getattr(self, name)))  # frozen

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                   classes: Sequence[str] | None = None) -> "ImageIndex":
        """Build an index from file paths and (optionally) their class names."""
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        if labels is None:
            return cls(path_array, np.full(len(path_array), -1, np.int64), tuple(classes or ()))
        if len(labels) != len(path_array):
            raise ConfigError(f"Got {len(path_array)} paths but {len(labels)} labels.")
        names = [str(label) for label in labels]
        class_list = tuple(classes) if classes is not None else tuple(sorted(set(names)))
        lookup = {c: i for i, c in enumerate(class_list)}
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            raise ConfigError(f"Labels {unknown[:5]} are not among the classes {list(class_list)}.")
        return cls(path_array, np.array([lookup[n] for n in names], np.int64), class_list)

    @classmethod
    def from_values(cls, paths: Sequence[str | os.PathLike], values: Sequence[float]
                    ) -> "ImageIndex":
        """An index of images with a number each (regression): `targets` holds the values,
        `labels` their quantile bins (`value_strata`).

        Raises:
            ConfigError: lengths differ, or a value is not a finite number.
        """
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        try:
            targets = np.asarray(values, np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError("Regression targets must be numbers.") from None
        if len(targets) != len(path_array):
            raise ConfigError(f"Got {len(path_array)} paths but {len(targets)} values.")
        if not np.isfinite(targets).all():
            raise ConfigError(f"Regression targets must be finite numbers; "
                              f"{int((~np.isfinite(targets)).sum())} are NaN or infinite.")
        labels, classes = value_strata(targets)
        return cls(path_array, labels, classes, targets=targets)

    @classmethod
    def from_tags(cls, paths: Sequence[str | os.PathLike], tags,
                  classes: Sequence[str] | None = None) -> "ImageIndex":
        """An index of images with any number of labels each (multi-label tagging).

        Args:
            tags: per image, a list (or set) of label names; or an indicator matrix
                (n, n_labels) of 0/1, its columns named by `classes` (default "0", "1"...).
            classes: the label names in order (default: the sorted names used).

        Raises:
            ConfigError: lengths differ, a matrix that is not 0/1, an unknown label, or a
                label name holding `|` (the separator of label sets in files).

        Example:
            >>> index = ImageIndex.from_tags(["a.png", "b.png"], [["cat"], ["cat", "dog"]])
            >>> index.classes, index.tags.astype(int).tolist()
            (('cat', 'dog'), [[1, 0], [1, 1]])
        """
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        matrix, names = tags_matrix(tags, classes)
        if matrix.shape[0] != len(path_array):
            raise ConfigError(f"Got {len(path_array)} paths but {matrix.shape[0]} label sets.")
        joined = [name for name in names if TAG_SEPARATOR in name]
        if joined:
            raise ConfigError(f"Label names {joined[:5]} hold '{TAG_SEPARATOR}', which separates "
                              f"the labels of an image in imagefit's files; rename them.")
        return cls(path_array, rarest_tag(matrix), names, tags=matrix)

    @property
    def is_regression(self) -> bool:
        return self.targets is not None

    @property
    def is_multilabel(self) -> bool:
        return self.tags is not None

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> np.ndarray:
        """Images per class, in the order of `classes` (multi-label: images per label)."""
        if self.tags is not None:
            return self.tags.sum(axis=0).astype(np.int64)
        known = self.labels[self.labels >= 0]
        return np.bincount(known, minlength=len(self.classes))

    def label_names(self) -> np.ndarray:
        """The class name of every row ("" where unknown); multi-label: the row's labels
        joined with `|`."""
        if self.tags is not None:
            return np.array([TAG_SEPARATOR.join(self.classes[i] for i in np.flatnonzero(row))
                             for row in self.tags], dtype=str)
        names = np.array(list(self.classes) + [""], dtype=str)
        return names[self.labels]

    def take(self, rows: np.ndarray) -> "ImageIndex":
        """A new index with the given rows (an index array or boolean mask). A regression's
        value bins are those of the rows taken (so a validation part read back from
        split.csv has the bins, and the subsets, it had in training)."""
        pick = (lambda a: None if a is None else a[rows])
        labels, classes = self.labels[rows], self.classes
        if self.targets is not None:
            labels, classes = value_strata(self.targets[rows])
        if self.tags is not None:
            labels = rarest_tag(self.tags[rows])
        return dataclasses.replace(self, paths=self.paths[rows], labels=labels, classes=classes,
                                   subsets=pick(self.subsets), sha256=pick(self.sha256),
                                   groups=pick(self.groups), targets=pick(self.targets),
                                   tags=pick(self.tags))

    def without_test(self) -> "ImageIndex":
        """The rows for training and validation: all but those marked `test`.

        Raises:
            DatasetError: every row is marked test, or a class has only test rows (a model
                cannot learn it).
        """
        if self.subsets is None or not (self.subsets == "test").any():
            return self
        kept = self.take(self.subsets != "test")
        if not len(kept):
            raise DatasetError("The split column marks every row 'test': nothing is left to "
                               "train on. Mark some rows train (and val, or let imagefit "
                               "split them).")
        if self.is_regression:  # no classes: any range of values may be held out
            return kept
        only_test = [c for c, n, all_n in zip(self.classes, kept.counts(), self.counts())
                     if n == 0 and all_n > 0]
        if only_test and self.is_multilabel:  # the other labels can still be learnt
            kept.report.warnings.append(f"Labels {only_test} appear only on test rows: the "
                                        f"model will never predict them.")
        elif only_test:
            raise DatasetError(f"Classes {only_test} have only test rows: a model cannot learn "
                               f"them. Mark some of their rows train.")
        return kept

    def test_part(self) -> "ImageIndex":
        """The rows a table's split column marks `test` (held out of training; may be empty)."""
        if self.subsets is None:
            return self.take(np.zeros(len(self), bool))
        return self.take(self.subsets == "test")

    def with_classes(self, classes: Sequence[str]) -> "ImageIndex":
        """This index with labels re-expressed against `classes` (matched by name).

        Raises:
            DatasetError: a class that has images here is not in `classes`.
        """
        classes = tuple(classes)
        if self.classes == classes:
            return self
        if self.tags is not None:
            return self._with_tag_columns(classes)
        used = [c for i, c in enumerate(self.classes) if (self.labels == i).any()]
        unknown = [c for c in used if c not in classes]
        if unknown:
            raise DatasetError(f"Classes {unknown} are not among the model's classes "
                               f"{list(classes)}.")
        lookup = np.array([classes.index(c) if c in classes else -1 for c in self.classes] + [-1])
        return dataclasses.replace(self, labels=lookup[self.labels], classes=classes)

    def _with_tag_columns(self, classes: tuple[str, ...]) -> "ImageIndex":
        used = [c for c, n in zip(self.classes, self.counts()) if n > 0]
        unknown = [c for c in used if c not in classes]
        if unknown:
            raise DatasetError(f"Labels {unknown} are not among the model's labels "
                               f"{list(classes)}.")
        tags = np.zeros((len(self), len(classes)), bool)
        for i, name in enumerate(self.classes):
            if name in classes:
                tags[:, classes.index(name)] = self.tags[:, i]
        return dataclasses.replace(self, labels=rarest_tag(tags), classes=classes, tags=tags)

    def subset(self, limit: int | None, seed: int = 0) -> "ImageIndex":
        """At most `limit` rows (None: all), spread evenly over the classes as far as their
        sizes allow (`data.sampling.stratified_subset`); the same rows for the same seed."""
        if limit is None or len(self) <= limit:
            return self
        return self.take(stratified_subset(self.labels, limit, seed))

    def with_hashes(self) -> "ImageIndex":
        """This index with the `sha256` column filled (reads every file once if missing)."""
        if self.sha256 is not None:
            return self
        hashes = np.array([sha256_file(p) for p in self.paths], dtype="<U64")
        return dataclasses.replace(self, sha256=hashes)

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["ImageIndex", "ImageIndex"]:
        """Split into (train, validation), stratified by class and seeded.

        Rows marked `test` (a table's split column) are in neither part. A `train/` + `val/`
        folder layout, or a split column with train and val rows, is kept as it is. Otherwise
        each class sends about `val_fraction` of its images to validation, at least one where
        the class has two or more distinct images. Files with the same bytes, and images of
        the same group (`groups`), always land on the same side; with groups, how far the class
        proportions moved is reported. The choice depends only on each file's content (or
        group) and the seed, so adding files later leaves the existing assignments almost
        unchanged. Label sets (`tags`) are split by iterative stratification over those units
        instead, seeded (`assign_validation_tags`): every label's share of validation stays
        near `val_fraction`, but adding files may move others, and a label left without a
        validation image is warned about.

        Raises:
            ConfigError: if `val_fraction` is not in (0, 1).
        """
        index = self.without_test()
        if index.subsets is not None:
            if {"train", "val"} <= set(index.subsets.tolist()):
                return index.take(index.subsets == "train"), index.take(index.subsets == "val")
        if not isinstance(val_fraction, (float, int)) or not 0 < val_fraction < 1:
            raise ConfigError(f"The 'val_fraction' parameter must be a float in (0, 1). "
                              f"Got {val_fraction!r} instead.")
        index = index.with_hashes()
        if index.tags is not None:
            is_val = assign_validation_tags(index.sha256, index.tags, val_fraction, seed,
                                            groups=index.groups)
            train, val = index.take(~is_val), index.take(is_val)
            missing = [c for c, n, n_val in zip(index.classes, index.counts(), val.counts())
                       if n and not n_val]
            if missing:
                index.report.warnings.append(
                    f"Labels {missing[:10]} have no validation image (too few images); their "
                    f"calibration and thresholds are not fitted, and their validation metrics "
                    f"will be missing.")
            return train, val
        is_val = assign_validation(index.sha256, index.labels, val_fraction, seed,
                                   groups=index.groups)
        for c, name in enumerate(index.classes):
            members = index.labels == c
            if members.any() and not (is_val & members).any():
                unit = "group" if index.groups is not None else "distinct image"
                index.report.warnings.append(
                    f"Class '{name}' has no validation image (only one {unit}); its "
                    f"validation metrics will be missing.")
        train, val = index.take(~is_val), index.take(is_val)
        if index.groups is not None and len(val):
            shares = _validation_shares(index.labels, is_val, len(index.classes))
            overall = is_val.mean()
            worst = int(np.nanargmax(np.abs(shares - overall)))
            index.report.warnings.append(
                f"Grouped split: {len(np.unique(val.groups))} of "
                f"{len(np.unique(index.groups))} groups in validation; class shares in "
                f"validation moved by up to {abs(shares[worst] - overall) * 100:.1f} points "
                f"('{index.classes[worst]}': {shares[worst]:.0%} vs {overall:.0%} overall).")
        return train, val


def value_strata(values: np.ndarray, max_bins: int = 10) -> tuple[np.ndarray, tuple[str, ...]]:
    """(bin of each value, bin names): up to `max_bins` quantile bins, at least 5 values a bin
    where there are enough, so that a split or subset stratified by bin spreads the range of
    the values over both sides.

    Example:
        >>> value_strata(np.arange(10.0)[::-1], max_bins=2)
        (array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0]), ('bin 1', 'bin 2'))
    """
    n_bins = int(max(1, min(max_bins, len(values) // 5)))
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(values) else []
    bins = np.searchsorted(np.asarray(edges), values, side="right")
    used, labels = np.unique(bins, return_inverse=True)  # equal edges: no empty bin
    return labels.astype(np.int64), tuple(f"bin {i + 1}" for i in range(len(used)))


def tags_matrix(tags, classes: Sequence[str] | None = None
                ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label sets (lists of names) or an indicator matrix as (a bool matrix (n, n_labels),
    its column names): `classes` when given, else the sorted names used ("0", "1"... for a
    matrix).

    Raises:
        ConfigError: a matrix holding other values than 0 and 1, or a name not in `classes`.
    """
    if isinstance(tags, np.ndarray) and tags.ndim == 2 and tags.dtype != object:
        if not np.isin(tags, (0, 1)).all():
            raise ConfigError("A multi-label indicator matrix must hold only 0 and 1 "
                              "(or True and False).")
        if classes is not None and len(classes) != tags.shape[1]:
            raise ConfigError(f"The indicator matrix has {tags.shape[1]} columns but "
                              f"{len(classes)} label names were given.")
        names = (tuple(str(c) for c in classes) if classes is not None
                 else tuple(str(i) for i in range(tags.shape[1])))
        return tags.astype(bool), names
    rows = [[str(t) for t in ([row] if isinstance(row, str) else row)] for row in tags]
    names = (tuple(str(c) for c in classes) if classes is not None
             else tuple(sorted({t for row in rows for t in row})))
    lookup = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(rows), len(names)), bool)
    for r, row in enumerate(rows):
        unknown = [t for t in row if t not in lookup]
        if unknown:
            raise ConfigError(f"Labels {unknown[:5]} are not among the labels {list(names)}.")
        matrix[r, [lookup[t] for t in row]] = True
    return matrix, names


def rarest_tag(tags: np.ndarray) -> np.ndarray:
    """Each row's rarest label (the one with fewest images; -1 for a row without labels): the
    stratum a subset or a per-class count uses for multi-label rows."""
    if tags.shape[1] == 0:
        return np.full(len(tags), -1, np.int64)
    counts = tags.sum(axis=0)
    rank = np.where(tags, counts[None, :], np.iinfo(np.int64).max)
    return np.where(tags.any(axis=1), rank.argmin(axis=1), -1).astype(np.int64)


def assign_validation_tags(hashes: np.ndarray, tags: np.ndarray, val_fraction: float,
                           seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of validation rows for multi-label rows: iterative stratification
    (`data.sampling.iterative_stratification`) over units of rows that share bytes or a group,
    a unit holding the labels of all its rows."""
    unit, _ = _units(hashes, groups)
    unit_tags = np.zeros((int(unit.max()) + 1 if len(unit) else 0, tags.shape[1]), bool)
    np.logical_or.at(unit_tags, unit, tags)
    if len(unit_tags) < 2:
        return np.zeros(len(hashes), bool)
    part = iterative_stratification(unit_tags, [1 - val_fraction, val_fraction], seed=seed)
    return (part == 1)[unit]


def _validation_shares(labels: np.ndarray, is_val: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of its images in validation (NaN for a class with none)."""
    total = np.bincount(labels[labels >= 0], minlength=n_classes).astype(float)
    in_val = np.bincount(labels[is_val & (labels >= 0)], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, in_val / total, np.nan)


def assign_validation(hashes: np.ndarray, labels: np.ndarray, val_fraction: float,
                      seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of validation rows, moved in units: rows that share bytes or a group.

    Per class (a unit counts for the most common label of its rows), units are taken in a
    seeded hash order until about `val_fraction` of the class's images are in; each class
    keeps at least one unit for training."""
    unit, unit_key = _units(hashes, groups)
    n_units = len(unit_key)
    keys = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8)
                                    .digest(), "big") for k in unit_key], dtype=np.uint64)
    if groups is None:  # a content group follows the label of its first row
        unit_label = labels[np.unique(unit, return_index=True)[1]]
    else:  # a group follows its most common label
        known = labels >= 0
        votes = np.zeros((n_units, int(labels.max()) + 1 if known.any() else 1), np.int64)
        np.add.at(votes, (unit[known], labels[known]), 1)
        unit_label = np.where(votes.sum(1) > 0, votes.argmax(1), -1)
    unit_size = np.bincount(unit, minlength=n_units)
    val_unit = np.zeros(n_units, bool)
    for c in np.unique(unit_label[unit_label >= 0]):
        members = np.flatnonzero(unit_label == c)
        if len(members) < 2:
            continue
        order = members[np.argsort(keys[members], kind="stable")]
        want = max(1, round(val_fraction * unit_size[members].sum()))
        taken = np.cumsum(unit_size[order])
        n_val = min(int(np.searchsorted(taken, want) + 1), len(order) - 1)
        val_unit[order[:n_val]] = True
    return val_unit[unit]


def _units(hashes: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """(unit of each row, a stable key per unit): rows joined by equal bytes, and by equal
    group where groups are given (a union-find over both)."""
    n = len(hashes)
    if groups is None:
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        return inverse.reshape(-1), [str(hashes[i]) for i in first]
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in (hashes, groups):
        first_row: dict[str, int] = {}
        for row, value in enumerate(column.tolist()):
            other = first_row.setdefault(value, row)
            if other != row:
                parent[find(row)] = find(other)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, inverse = np.unique(roots, return_inverse=True)
    inverse = inverse.reshape(-1)
    key: dict[int, str] = {}
    for row, u in enumerate(inverse.tolist()):  # a unit's key: its smallest group name
        name = f"g:{groups[row]}"
        key[u] = min(key.get(u, name), name)
    return inverse, [key[u] for u in range(len(key))]


def scan_class_folders(root: str | os.PathLike, *, follow_links: bool = True,
                       min_classes: int = 2,
                       known_formats: KnownFormats | None = None) -> ImageIndex:
    """Index a folder of class sub-folders, or a folder holding `train/` + `val/` ones.

    Class names are the first-level folder names, sorted; images in deeper sub-folders belong to
    their first-level class. Formats are decided by content, not by name. Clutter
    (`.DS_Store`, `Thumbs.db`, `__MACOSX/`, `._*`, hidden entries, non-image files) is ignored
    and counted; files that promise an image but are not one are listed as bad files. Directory
    links are followed once each (loops cannot hang or duplicate).

    Args:
        min_classes: fewer usable classes is an error (2 for training; 1 to evaluate a folder
            that holds a single class).
        known_formats: what earlier pre-flights found (`KnownHashes.formats`): a file they
            saw, unchanged since, is stat'ed but not opened.

    Raises:
        DatasetError: no such folder, no class folders, fewer than `min_classes` usable
            classes, or class names that collide (case or Unicode normalisation).
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"Dataset folder {str(root_path)!r} does not exist or is not a folder. "
                           f"Pass a folder of class sub-folders, or a table (CSV, TSV, Parquet) "
                           f"of paths and labels.")
    walker = Walker(follow_links, root_path, known_formats)
    parts = walker.split_folders(root_path, classes_below=True)
    rows: list[tuple[str, str, str]] = []
    for subset, folder in parts:
        rows.extend(walker.walk_classes(folder, subset))
    rows.extend(walker.walk_deferred())
    walker.finish()
    paths, names, subsets = (list(col) for col in zip(*rows)) if rows else ([], [], [])
    classes = check_classes(names, walker, root_path, min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    subset_array = np.array(subsets, dtype=str) if parts[0][0] else None
    return ImageIndex(index.paths, index.labels, index.classes, subset_array, None,
                      walker.report, str(root_path))


def refuse_output_inside(out: str | os.PathLike,
                         data: Sequence["str | os.PathLike | ImageIndex"]) -> None:
    """ConfigError if `out` is, or is inside, a dataset folder: imagefit never writes into user
    data (a report folder there would even become a new class).

    Each entry of `data` is a dataset folder, or an `ImageIndex`, whose images' folders are
    protected (for a table, those, not the table's own folder, where `runs/` may well go).
    A file entry (a table, an array file) protects nothing by itself: pass its index too.
    """
    target = Path(out).resolve()
    folders: list[str | os.PathLike] = []
    for entry in data:
        if isinstance(entry, ImageIndex):
            folders += sorted({os.path.dirname(p) for p in entry.paths.tolist()})
        elif not Path(entry).is_file():
            folders.append(entry)
    for folder in folders:
        root = Path(folder).resolve()
        if target == root or root in target.parents:
            raise ConfigError(f"The output folder {out} is inside the dataset {folder}; imagefit "
                              f"never writes into your data. Choose an output folder elsewhere.")


def expand_paths(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Files to predict: each file as given, each folder expanded recursively (sorted).

    Inside folders, clutter and files that are neither images nor named like images are left
    out; a file named like an image stays in, so that it gets an error row if it is unreadable.
    """
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            out.append(os.fspath(item))
            continue
        usable = (lambda d: not d.startswith(".") and d.lower() not in _IGNORED_DIR_NAMES)
        # Folders reached without links: a link to one of them is not followed, so that its
        # files are listed under their real path (not cat/more/x.jpg for a link more -> ../dog).
        real: set[tuple[int, int]] = set()
        for folder, dirs, _ in os.walk(path):
            real.add(_dir_key_or_none(folder))
            dirs[:] = [d for d in dirs if usable(d)]
        real.discard(None)
        seen: set[tuple[int, int]] = set()
        for folder, dirs, files in os.walk(path, followlinks=True):
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((stat.st_dev, stat.st_ino))
            dirs[:] = sorted(d for d in dirs if usable(d) and not (
                os.path.islink(os.path.join(folder, d))
                and _dir_key_or_none(os.path.join(folder, d)) in real))
            for name in sorted(files):
                if _clutter_category(name):
                    continue
                full = os.path.join(folder, name)
                if Path(name).suffix.lower() in IMAGE_SUFFIXES or _sniff_file(full) is not None:
                    out.append(full)
    return out


def _dir_key_or_none(folder: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _sniff_file(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(32))
    except OSError:
        return None


def check_classes(names: list[str], walker: "Walker", root: Path,
                  min_classes: int = 2) -> tuple[str, ...]:
    """The sorted class names of an index being built, after the checks every source shares:
    names that collide by case or Unicode form, no images, fewer than `min_classes`, class
    folders left empty, split-like names, images outside any class (warnings on `walker`).

    Raises:
        DatasetError: colliding names, no images, or too few classes.
    """
    present = set(names)
    for name in walker.class_dirs:
        if name not in present:
            walker.report.warnings.append(f"Class folder '{name}' has no usable images and is "
                                          f"left out.")
    classes = tuple(sorted(present))
    seen: dict[str, str] = {}
    for name in classes:
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            first = seen[key]
            if unicodedata.normalize("NFC", first) == unicodedata.normalize("NFC", name):
                # Both names print alike; only their escaped code points tell them apart.
                raise DatasetError(f"Class folders {first!r} and {name!r} differ only in Unicode "
                                   f"form ({ascii(first)} and {ascii(name)}: the same letters, "
                                   f"composed differently, as macOS writes them); merge or "
                                   f"rename one of them.")
            raise DatasetError(f"Class folders {first!r} and {name!r} differ only in case or "
                               f"Unicode form; merge or rename one of them.")
        seen[key] = name
    if not classes:
        if walker.root_images:
            raise DatasetError(f"Found {walker.root_images} images directly in {root} but no class "
                               f"sub-folders. Expected {root}/<class>/<image>.")
        raise DatasetError(f"Found no images in {root}. Supported formats: "
                           f"{', '.join(ALLOWED_FORMATS)}.")
    if len(classes) < min_classes:
        raise DatasetError(f"Only 1 class found ({classes[0]!r}) in {root}; a classifier needs at "
                           f"least 2 class sub-folders.")
    split_like = {"train", "test", "val", "valid", "validation"}
    if set(c.lower() for c in classes) <= split_like:
        walker.report.warnings.append(f"The class folders of {root} are named "
                                      f"{', '.join(classes)}: if these are splits, pass the "
                                      f"training folder ({root}/train) instead.")
    if walker.root_images:
        walker.report.warnings.append(f"{walker.root_images} images lie directly in {root}, "
                                      f"outside any class folder; they are not used.")
    return classes


class Walker:
    """One recursive `os.scandir` pass with loop-safe link following and clutter accounting.

    Links that point inside the dataset are followed last, after every real file and folder:
    a file or folder is indexed at its real location, under its real class, whatever the
    sort order. (Followed in walk order, `cat/more -> ../dog` would turn every dog into a cat
    and drop the class 'dog'.) Links to places outside the dataset are followed in place.
    """

    def __init__(self, follow_links: bool, root: Path | None = None,
                 known_formats: KnownFormats | None = None):
        self.follow_links = follow_links
        self._known = known_formats
        self.report = ScanReport()
        self.class_dirs: list[str] = []
        self.root_images = 0
        self._root = os.path.realpath(root) if root is not None else None
        # (dev, inode) -> the (subset, class) it was indexed under; (subset, None) for roots.
        self._seen_dirs: dict[tuple[int, int], tuple[str, str | None]] = {}
        self._seen_files: dict[tuple[int, int], tuple[str, str]] = {}
        # (path, class or None for a class-level folder link, subset, nested-under, is_dir)
        self._deferred: list[tuple[str, str | None, str, str | None, bool]] = []
        self._nested: dict[tuple[str, str], Counter] = {}
        if root is not None:  # a link back to the dataset folder is a cycle in every layout
            try:
                self._seen_dirs[self._dir_key(Path(root))] = ("", None)
            except OSError:
                pass

    def split_folders(self, root: Path, *, classes_below: bool
                      ) -> list[tuple[str, Path | os.DirEntry]]:
        """[("train", train/), ("val", val/)] when `root` holds both (and, with
        `classes_below`, train/ holds class folders); else [("", root)]. Other folders beside
        them are reported as unused."""
        subdirs = {d.name.lower(): d for d in self.child_dirs(root)}
        val_name = next((n for n in VAL_DIR_NAMES if n in subdirs), None)
        if "train" not in subdirs or not val_name or (
                classes_below and not self.child_dirs(subdirs["train"])):
            return [("", root)]
        for other in sorted(set(subdirs) - {"train", val_name}):
            self.report.warnings.append(f"Folder '{subdirs[other].name}/' is not used for "
                                        f"training (only train/ and {val_name}/ are).")
        return [("train", subdirs["train"]), ("val", subdirs[val_name])]

    def child_dirs(self, folder: Path) -> list[os.DirEntry]:
        """Sub-folders that would be walked (for layout detection: counts nothing)."""
        return [e for e in self._entries(folder) if e.is_dir(follow_symlinks=True)
                and not e.name.startswith(".") and e.name.lower() not in _IGNORED_DIR_NAMES
                and (self.follow_links or not e.is_symlink())]

    def walk_classes(self, folder: Path, subset: str = "") -> Iterable[tuple[str, str, str]]:
        """Yield (path, class, subset) for the class folders of `folder`; links that point
        inside the dataset are kept for `walk_deferred`."""
        self._seen_dirs.setdefault(self._dir_key(folder), (subset, None))
        for entry in self._entries(folder):
            if entry.is_dir(follow_symlinks=True):
                if not self._usable_dir(entry):
                    continue
                if self._points_inside(entry):
                    self._deferred.append((entry.path, None, subset, None, True))
                elif self._first_visit(entry, (subset, entry.name)):
                    yield from self._walk_class(Path(entry.path), entry.name, subset)
            elif self.classify_file(entry.path, entry.name, entry.name,
                                    register=False) is not None:
                self.root_images += 1

    def walk_deferred(self) -> Iterable[tuple[str, str, str]]:
        """Yield (path, class, subset) reached only through links inside the dataset, once
        everything else is indexed: what was already seen counts as a repeat, not again."""
        while self._deferred:  # following a deferred folder may defer more links
            path, label, subset, top, is_dir = self._deferred.pop(0)
            name = os.path.basename(path)
            if not is_dir:
                if self.classify_file(path, name, label, subset=subset) is not None:
                    if top:
                        self._nested.setdefault((subset, label), Counter())[top] += 1
                    yield path, label, subset
                continue
            try:
                key = self._dir_key(Path(path))
            except OSError:
                self.report.warnings.append(f"Broken folder link {path} skipped.")
                continue
            owner = self._seen_dirs.get(key)
            if owner is not None:
                self.report.ignored["folder link cycle or repeat"] += 1
                if owner[1] is not None and owner != (subset, label or name):
                    self.report.warnings.append(
                        f"{path} is a link to a folder already indexed under class "
                        f"'{owner[1]}'; it is not followed (its images count once, as "
                        f"'{owner[1]}').")
                continue
            if label is None:  # a class-level link to an unwalked folder: a class of its own
                self._seen_dirs[key] = (subset, name)
                yield from self._walk_class(Path(path), name, subset)
            else:
                self._seen_dirs[key] = (subset, label)
                for found in self._walk_files(Path(path), label, subset, top or name):
                    yield found, label, subset

    def walk_tree(self, folder: Path) -> Iterable[str]:
        """Every usable image under `folder`, at any depth (labels are the caller's job)."""
        self._seen_dirs.setdefault(self._dir_key(folder), ("", None))
        yield from self._walk_files(folder, "", "")
        for path, _, _ in self.walk_deferred():
            yield path

    def finish(self) -> None:
        """Report, per class, the images found in sub-folders (after links are resolved)."""
        for (subset, label), nested in self._nested.items():
            if nested:
                detail = ", ".join(f"{k}/ ({v})" for k, v in sorted(nested.items()))
                self.report.warnings.append(f"Class '{label}' includes sub-folders: {detail}.")

    def classify_file(self, path: str, name: str, label: str, *, subset: str = "",
                      register: bool = True,
                      remembered: tuple[os.stat_result, str] | None = None) -> str | None:
        """Return the format of a usable image; otherwise count it as ignored or bad.

        With `register`, a file already indexed (same device and inode, reached through a
        link) is counted once, under the class it was first indexed with. `remembered`: the
        file's stat and the format an earlier run found in it, unchanged since (the file is
        then not opened)."""
        category = _clutter_category(name)
        if category:
            self.report.ignored[category] += 1
            return None
        suffix = os.path.splitext(name)[1].lower()  # pathlib's suffix (faster), but for a
        suffix = "" if suffix == "." else suffix     # name ending in a dot
        try:
            if remembered is None:
                stat = os.stat(path)
                with open(path, "rb") as f:
                    head = f.read(32)
            else:
                stat, head = remembered[0], b""
        except OSError as exc:
            self.report.bad_files.append(BadFile(path, "io_error", exc.strerror or str(exc)))
            return None
        key = (stat.st_dev, stat.st_ino)
        if register and key in self._seen_files:
            first_subset, first = self._seen_files[key]
            self.report.ignored["linked duplicate"] += 1
            if (first_subset, first) != (subset, label):
                where = f"{first_subset}/" if first_subset != subset else ""
                self.report.warnings.append(f"{path} is a link to a file already indexed under "
                                            f"class '{where}{first}'; it is counted once, as "
                                            f"'{where}{first}'.")
            return None
        if register:
            self._seen_files[key] = (subset, label)
        fmt = sniff_format(head) if remembered is None else remembered[1]
        if fmt in ALLOWED_FORMATS:
            if suffix in IMAGE_SUFFIXES and not _suffix_matches(suffix, fmt):
                self.report.extension_mismatch += 1
            return fmt
        if fmt is not None:
            self.report.bad_files.append(BadFile(path, "format_not_allowed",
                                                 f"{fmt} images are not accepted; supported: "
                                                 f"{', '.join(ALLOWED_FORMATS)}"))
        elif suffix in IMAGE_SUFFIXES:
            reason = "empty" if stat.st_size == 0 else "unidentified"
            message = ("file is empty (0 bytes)" if reason == "empty" else
                       f"named {suffix} but its content is not an image ({stat.st_size:,} bytes)")
            self.report.bad_files.append(BadFile(path, reason, message))
        else:
            self.report.ignored[suffix or "no extension"] += 1
        return None

    def _walk_class(self, folder: Path, label: str, subset: str
                    ) -> Iterable[tuple[str, str, str]]:
        self.class_dirs.append(label)
        self._nested.setdefault((subset, label), Counter())
        for path in self._walk_files(folder, label, subset):
            yield path, label, subset

    def _walk_files(self, folder: Path, label: str, subset: str,
                    top: str | None = None) -> Iterable[str]:
        entries = self._entries(folder)
        remembered = self._remembered(entries)
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                if not self._usable_dir(entry):
                    continue
                sub = top or entry.name
                if self._points_inside(entry):
                    self._deferred.append((entry.path, label, subset, sub, True))
                elif self._first_visit(entry, (subset, label)):
                    yield from self._walk_files(Path(entry.path), label, subset, sub)
            elif entry.is_file(follow_symlinks=True) or entry.is_symlink():
                if self._points_inside(entry):
                    self._deferred.append((entry.path, label, subset, top, False))
                elif self.classify_file(entry.path, entry.name, label, subset=subset,
                                        remembered=remembered.get(entry.name)) is not None:
                    if top:
                        self._nested.setdefault((subset, label), Counter())[top] += 1
                    yield entry.path

    def _remembered(self, entries: list[os.DirEntry]) -> dict[str, tuple[os.stat_result, str]]:
        """name -> (stat, format) for the plain files of one folder that `known_formats`
        holds unchanged (same inode, size and modification time): looked up a folder at a time,
        in NumPy."""
        if self._known is None:
            return {}
        names, stats = [], []
        for entry in entries:
            if entry.is_file(follow_symlinks=False):  # links are opened, as always
                try:
                    stats.append(entry.stat(follow_symlinks=False))
                except OSError:
                    continue
                names.append(entry.name)
        if not names:
            return {}
        formats = self._known.of(np.array([(s.st_ino, s.st_size, s.st_mtime_ns) for s in stats],
                                          np.int64).T)
        return {name: (stat, fmt) for name, stat, fmt in zip(names, stats, formats)
                if fmt is not None}

    def _points_inside(self, entry: os.DirEntry) -> bool:
        """Is `entry` a link whose target lies inside the dataset (then it waits its turn)?"""
        if self._root is None or not entry.is_symlink():
            return False
        target = os.path.realpath(entry.path)
        return target == self._root or target.startswith(self._root.rstrip(os.sep) + os.sep)

    def _entries(self, folder: Path) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.report.warnings.append(f"Could not read folder {folder}: {exc.strerror or exc}")
            return []

    def _usable_dir(self, entry: os.DirEntry) -> bool:
        category = _IGNORED_DIR_NAMES.get(entry.name.lower())
        if category is None and entry.name.startswith("."):
            category = "hidden folder"
        if category:
            self.report.ignored[category] += 1
            return False
        if entry.is_symlink() and not self.follow_links:
            self.report.ignored["folder link (not followed)"] += 1
            return False
        return True

    def _first_visit(self, entry: os.DirEntry, owner: tuple[str, str]) -> bool:
        try:
            key = self._dir_key(Path(entry.path))
        except OSError:
            self.report.warnings.append(f"Broken folder link {entry.path} skipped.")
            return False
        if key in self._seen_dirs:
            self.report.ignored["folder link cycle or repeat"] += 1
            return False
        self._seen_dirs[key] = owner
        return True

    @staticmethod
    def _dir_key(folder: Path) -> tuple[int, int]:
        stat = folder.stat()
        return stat.st_dev, stat.st_ino


def _clutter_category(name: str) -> str | None:
    lower = name.lower()
    if lower in _IGNORED_FILE_NAMES:
        return _IGNORED_FILE_NAMES[lower]
    if name.startswith("._"):
        return "AppleDouble ._*"
    if lower.endswith(":zone.identifier"):
        return "Zone.Identifier"
    if name.startswith("."):
        return "hidden file"
    return None


_SUFFIXES_OF = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "PNG": (".png",),
                "WEBP": (".webp",), "BMP": (".bmp", ".dib"), "GIF": (".gif",),
                "TIFF": (".tif", ".tiff")}


def _suffix_matches(suffix: str, fmt: str) -> bool:
    return suffix in _SUFFIXES_OF.get(fmt, ())
