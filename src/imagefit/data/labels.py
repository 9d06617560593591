"""Labels and groups read from where images are: a pattern in each file name
(`--label-regex`, `--group-regex`) or the folders above each file (`--label-depth`). Used by
folder trees (`sources.py`) and tables (`tables.py`) alike.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from imagefit.data.index import BadFile, ImageIndex, Walker
from imagefit.errors import ConfigError, DatasetError

# The group of an image that has none (empty group cell, unmatched --group-regex): this prefix
# and the image's path, unique per image, so that it is a group of its own. (Not a NUL: NumPy's
# string functions read a leading NUL as an empty string.)
UNGROUPED = "<no group>:"


def compile_pattern(pattern: str | None, name: str) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"The '{name}' parameter is not a valid regular expression "
                          f"({exc}). Got {pattern!r} instead.") from None


def _first_group(match: re.Match) -> str:
    return match.group(1) if match.re.groups else match.group(0)


def labels_from_names(paths: Iterable[str], pattern: str, walker: Walker
                       ) -> tuple[list[str], list[str]]:
    """(paths, labels) of the files whose name matches `pattern`; the others are bad files
    (reason `no_label`); none matching is an error that shows example names."""
    regex = compile_pattern(pattern, "label_regex")
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


def labels_from_folders(found: Iterable[tuple[str, Path, str]], depth: int | str,
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


def with_group_regex(index: ImageIndex, pattern: str | None) -> ImageIndex:
    """`index` with its `groups` column from a pattern searched in each file name; a file that
    does not match is a group of its own (with a warning)."""
    if not pattern:
        return index
    regex = compile_pattern(pattern, "group_regex")
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
    return with_groups(index, groups)


def with_groups(index: ImageIndex, groups: list[str]) -> ImageIndex:
    """Empty groups become singletons (named by row, so they never merge)."""
    column = np.array([g or f"{UNGROUPED}{path}" for g, path in zip(groups, index.paths)],
                      dtype=str)
    index = dataclasses.replace(index, groups=column)
    n_groups = len(set(column.tolist()))
    index.report.notes.append(f"{n_groups:,} groups; the split keeps each group on one side.")
    return index


def groups_per_class(index: ImageIndex) -> dict[str, int]:
    """Distinct groups holding each class's images (empty without groups)."""
    if index.groups is None:
        return {}
    pairs = Counter(zip(index.labels.tolist(), index.groups.tolist()))
    per_class = Counter(label for label, _ in pairs)
    return {name: per_class.get(c, 0) for c, name in enumerate(index.classes)}
