"""Indexing a dataset: a folder of class sub-folders, a `train/` + `val/` pair, or a CSV of
`path,label`. The result, `ImageIndex`, holds NumPy arrays (never one Python object per image, so
DataLoader workers do not copy it page by page) and a `ScanReport` of everything skipped or ignored.
This module reads only the first bytes of each file; decoding is the pre-flight's job (audit.py).
"""

from __future__ import annotations

import csv
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
from imagefit.errors import ConfigError, DatasetError, ImageLoadError

VAL_DIR_NAMES = ("val", "valid", "validation")
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
    extension_mismatch: int = 0
    # The scan's `min_classes`: the pre-flight holds the classes that survive decoding to it.
    min_classes: int = 1

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
        subsets: optional str array ("train", "val") from a `train/` + `val/` layout.
        sha256: optional str array of content hashes (filled by the pre-flight).
        report: what the scan skipped, ignored or warned about.
        checked: whether every file went through the pre-flight (`data.audit.preflight`);
            `fit` runs it on an index that did not.

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

    def __post_init__(self) -> None:
        n = len(self.paths)
        for name in ("labels", "subsets", "sha256"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"column {name!r} has {len(column)} rows, paths has {n}")

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

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> np.ndarray:
        """Images per class, in the order of `classes`."""
        known = self.labels[self.labels >= 0]
        return np.bincount(known, minlength=len(self.classes))

    def label_names(self) -> np.ndarray:
        """The class name of every row ("" where unknown)."""
        names = np.array(list(self.classes) + [""], dtype=str)
        return names[self.labels]

    def take(self, rows: np.ndarray) -> "ImageIndex":
        """A new index with the given rows (an index array or boolean mask)."""
        pick = (lambda a: None if a is None else a[rows])
        return dataclasses.replace(self, paths=self.paths[rows], labels=self.labels[rows],
                                   subsets=pick(self.subsets), sha256=pick(self.sha256))

    def with_classes(self, classes: Sequence[str]) -> "ImageIndex":
        """This index with labels re-expressed against `classes` (matched by name).

        Raises:
            DatasetError: a class that has images here is not in `classes`.
        """
        classes = tuple(classes)
        if self.classes == classes:
            return self
        used = [c for i, c in enumerate(self.classes) if (self.labels == i).any()]
        unknown = [c for c in used if c not in classes]
        if unknown:
            raise DatasetError(f"Classes {unknown} are not among the model's classes "
                               f"{list(classes)}.")
        lookup = np.array([classes.index(c) if c in classes else -1 for c in self.classes] + [-1])
        return dataclasses.replace(self, labels=lookup[self.labels], classes=classes)

    def with_hashes(self) -> "ImageIndex":
        """This index with the `sha256` column filled (reads every file once if missing)."""
        if self.sha256 is not None:
            return self
        hashes = np.array([sha256_file(p) for p in self.paths], dtype="<U64")
        return dataclasses.replace(self, sha256=hashes)

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["ImageIndex", "ImageIndex"]:
        """Split into (train, validation), stratified by class and seeded.

        A `train/` + `val/` folder layout is kept as it is. Otherwise each class sends about
        `val_fraction` of its images to validation, at least one where the class has two or more
        distinct images. Files with the same bytes always land on the same side, and the choice
        depends only on each file's content and the seed, so adding files later leaves the
        existing assignments almost unchanged.

        Raises:
            ConfigError: if `val_fraction` is not in (0, 1).
        """
        if self.subsets is not None and {"train", "val"} <= set(self.subsets.tolist()):
            return self.take(self.subsets == "train"), self.take(self.subsets == "val")
        if not isinstance(val_fraction, (float, int)) or not 0 < val_fraction < 1:
            raise ConfigError(f"The 'val_fraction' parameter must be a float in (0, 1). "
                              f"Got {val_fraction!r} instead.")
        index = self.with_hashes()
        is_val = assign_validation(index.sha256, index.labels, val_fraction, seed)
        for c, name in enumerate(index.classes):
            members = index.labels == c
            if members.any() and not (is_val & members).any():
                index.report.warnings.append(
                    f"Class '{name}' has no validation image (only one distinct image); its "
                    f"validation metrics will be missing.")
        return index.take(~is_val), index.take(is_val)


def assign_validation(hashes: np.ndarray, labels: np.ndarray, val_fraction: float,
                      seed: int) -> np.ndarray:
    """Boolean mask of validation rows: per class, content groups in a seeded hash order."""
    keys = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{h}".encode(), digest_size=8)
                                    .digest(), "big") for h in hashes], dtype=np.uint64)
    # A group is all rows sharing bytes; it follows the label of its first row.
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    group_label = labels[first]
    group_size = np.bincount(inverse, minlength=len(first))
    group_key = keys[first]
    val_group = np.zeros(len(first), bool)
    for c in np.unique(group_label):
        groups = np.flatnonzero(group_label == c)
        if len(groups) < 2:
            continue
        order = groups[np.argsort(group_key[groups], kind="stable")]
        want = max(1, round(val_fraction * group_size[groups].sum()))
        taken = np.cumsum(group_size[order])
        n_val = min(int(np.searchsorted(taken, want) + 1), len(order) - 1)
        val_group[order[:n_val]] = True
    return val_group[inverse]


def scan_folder(root: str | os.PathLike, *, follow_links: bool = True,
                min_classes: int = 2) -> ImageIndex:
    """Index a dataset: class sub-folders, a `train/` + `val/` pair, or a `path,label` CSV.

    Class names are the first-level folder names, sorted; images in deeper sub-folders belong to
    their first-level class. Formats are decided by content, not by name. Clutter
    (`.DS_Store`, `Thumbs.db`, `__MACOSX/`, `._*`, hidden entries, non-image files) is ignored
    and counted; files that promise an image but are not one are listed as bad files. Directory
    links are followed once each (loops cannot hang or duplicate).

    Args:
        min_classes: fewer usable classes is an error (2 for training; 1 to evaluate a folder
            that holds a single class).

    Raises:
        DatasetError: no such folder, no class folders, fewer than `min_classes` usable
            classes, or class names that collide (case or Unicode normalisation).

    Example:
        >>> index = imagefit.scan_folder("data/")          # doctest: +SKIP
        >>> index.classes, index.counts()                   # doctest: +SKIP
        (('cat', 'dog'), array([120, 45]))
    """
    root_path = Path(root)
    if root_path.is_file() and root_path.suffix.lower() == ".csv":
        return read_csv_index(root_path, min_classes=min_classes)
    if not root_path.is_dir():
        raise DatasetError(f"Dataset folder {str(root_path)!r} does not exist or is not a folder. "
                           f"Pass a folder of class sub-folders or a CSV of path,label.")
    walker = _Walker(follow_links, root_path)
    subdirs = {d.name.lower(): d for d in walker.child_dirs(root_path)}
    val_name = next((n for n in VAL_DIR_NAMES if n in subdirs), None)
    if "train" in subdirs and val_name and walker.child_dirs(subdirs["train"]):
        parts = [("train", subdirs["train"]), ("val", subdirs[val_name])]
        for other in sorted(set(subdirs) - {"train", val_name}):
            walker.report.warnings.append(f"Folder '{subdirs[other].name}/' is not used for "
                                          f"training (only train/ and {val_name}/ are).")
    else:
        parts = [("", root_path)]
    rows: list[tuple[str, str, str]] = []
    for subset, folder in parts:
        rows.extend(walker.walk_classes(folder, subset))
    rows.extend(walker.walk_deferred())
    walker.finish()
    paths, names, subsets = (list(col) for col in zip(*rows)) if rows else ([], [], [])
    classes = _check_classes(names, walker, root_path, min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    subset_array = np.array(subsets, dtype=str) if parts[0][0] else None
    return ImageIndex(index.paths, index.labels, index.classes, subset_array, None,
                      walker.report, str(root_path))


def read_csv_index(csv_path: str | os.PathLike, *, min_classes: int = 2) -> ImageIndex:
    """Index a CSV with columns `path,label` (paths relative to the CSV's folder)."""
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            if "path" not in fields or "label" not in fields:
                raise DatasetError(f"{csv_path} must have a header with columns 'path' and "
                                   f"'label'; found {list(fields)}.")
            records = [(row[fields["path"]] or "", row[fields["label"]] or "") for row in reader]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           f"save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise DatasetError(f"{csv_path} is not a readable CSV: {exc}") from None
    walker = _Walker(follow_links=True)
    paths, names = [], []
    for raw_path, label in records:
        path = csv_path.parent / raw_path.strip()
        label = label.strip()
        if not label or not raw_path.strip():
            walker.report.bad_files.append(BadFile(str(path), "io_error",
                                                   "row has no label" if not label
                                                   else "row has no path"))
            continue
        if walker.classify_file(path, path.name, path.name) is not None:
            paths.append(str(path))
            names.append(label)
    classes = _check_classes(names, walker, csv_path, min_classes)
    walker.report.min_classes = min_classes
    index = ImageIndex.from_paths(paths, names, classes)
    return ImageIndex(index.paths, index.labels, index.classes, None, None, walker.report,
                      str(csv_path.parent))


def refuse_output_inside(out: str | os.PathLike, data_paths: Sequence[str | os.PathLike]
                         ) -> None:
    """ConfigError if `out` is, or is inside, one of the dataset folders: imagefit never writes
    into user data (a report folder there would even become a new class)."""
    target = Path(out).resolve()
    for data in data_paths:
        root = Path(data).resolve()
        root = root.parent if root.is_file() else root
        if target == root or root in target.parents:
            raise ConfigError(f"The output folder {out} is inside the dataset {data}; imagefit "
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


def _check_classes(names: list[str], walker: "_Walker", root: Path,
                   min_classes: int = 2) -> tuple[str, ...]:
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


class _Walker:
    """One recursive `os.scandir` pass with loop-safe link following and clutter accounting.

    Links that point inside the dataset are followed last, after every real file and folder:
    a file or folder is indexed at its real location, under its real class, whatever the
    sort order. (Followed in walk order, `cat/more -> ../dog` would turn every dog into a cat
    and drop the class 'dog'.) Links to places outside the dataset are followed in place.
    """

    def __init__(self, follow_links: bool, root: Path | None = None):
        self.follow_links = follow_links
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
            elif self.classify_file(Path(entry.path), entry.name, entry.name,
                                    register=False) is not None:
                self.root_images += 1

    def walk_deferred(self) -> Iterable[tuple[str, str, str]]:
        """Yield (path, class, subset) reached only through links inside the dataset, once
        everything else is indexed: what was already seen counts as a repeat, not again."""
        while self._deferred:  # following a deferred folder may defer more links
            path, label, subset, top, is_dir = self._deferred.pop(0)
            name = os.path.basename(path)
            if not is_dir:
                if self.classify_file(Path(path), name, label, subset=subset) is not None:
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

    def finish(self) -> None:
        """Report, per class, the images found in sub-folders (after links are resolved)."""
        for (subset, label), nested in self._nested.items():
            if nested:
                detail = ", ".join(f"{k}/ ({v})" for k, v in sorted(nested.items()))
                self.report.warnings.append(f"Class '{label}' includes sub-folders: {detail}.")

    def classify_file(self, path: Path, name: str, label: str, *, subset: str = "",
                      register: bool = True) -> str | None:
        """Return the format of a usable image; otherwise count it as ignored or bad.

        With `register`, a file already indexed (same device and inode, reached through a
        link) is counted once, under the class it was first indexed with."""
        category = _clutter_category(name)
        if category:
            self.report.ignored[category] += 1
            return None
        suffix = Path(name).suffix.lower()
        try:
            stat = path.stat()
            with open(path, "rb") as f:
                head = f.read(32)
        except OSError as exc:
            self.report.bad_files.append(BadFile(str(path), "io_error", exc.strerror or str(exc)))
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
        fmt = sniff_format(head)
        if fmt in ALLOWED_FORMATS:
            if suffix in IMAGE_SUFFIXES and not _suffix_matches(suffix, fmt):
                self.report.extension_mismatch += 1
            return fmt
        if fmt is not None:
            self.report.bad_files.append(BadFile(str(path), "format_not_allowed",
                                                 f"{fmt} images are not accepted; supported: "
                                                 f"{', '.join(ALLOWED_FORMATS)}"))
        elif suffix in IMAGE_SUFFIXES:
            reason = "empty" if stat.st_size == 0 else "unidentified"
            message = ("file is empty (0 bytes)" if reason == "empty" else
                       f"named {suffix} but its content is not an image ({stat.st_size:,} bytes)")
            self.report.bad_files.append(BadFile(str(path), reason, message))
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
        for entry in self._entries(folder):
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
                elif self.classify_file(Path(entry.path), entry.name, label,
                                        subset=subset) is not None:
                    if top:
                        self._nested.setdefault((subset, label), Counter())[top] += 1
                    yield entry.path

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


def _suffix_matches(suffix: str, fmt: str) -> bool:
    expected = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "PNG": (".png",), "WEBP": (".webp",),
                "BMP": (".bmp", ".dib"), "GIF": (".gif",), "TIFF": (".tif", ".tiff")}
    return suffix in expected.get(fmt, ())
