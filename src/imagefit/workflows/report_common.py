"""What the report of every kind of run shares (`workflows.report` for classes and values,
`workflows.report_tags` for label sets): the result type, the gallery and subset sizes, and
the search for exact and near duplicates across the splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefit.data.audit import preflight
from imagefit.data.index import ImageIndex, refuse_output_inside
from imagefit.data.sources import SourceOptions, open_dataset
from imagefit.data.text import concat_text
from imagefit.errors import ConfigError
from imagefit.evaluation.issues import (classify_duplicate_pairs, exact_duplicate_groups,
                                        near_duplicate_pairs)

GALLERY_SIZE = 8
# A training value whose out-of-fold residual has a modified z-score above this is listed
# (3.5: Iglewicz and Hoaglin's outlier rule).
VALUE_ISSUE_Z = 3.5
GRADCAMS_PER_CLASS = 3
# Label issues are searched among at most this many training images (a stratified subset of a
# larger set): each needs its features, which cost ~10 ms on a CPU when not cached.
MAX_TRAIN_JUDGED = 10_000


@dataclass
class ReportResult:
    index_html: Path
    n_evaluated: int
    n_label_issues: int
    duplicate_summary: dict
    evaluation: object   # the evaluated set's result: EvaluationResult, RegressionResult, TagResult


_OTHER_DATA = {
    "classify": "This run classifies: report on a folder or table of images and their classes.",
    "regress": "This run is a regression: report on a table of images and values (--task "
               "regress reads one).",
    "multilabel": "This run is multi-label: report on a table of images and their labels "
                  "(joined by |, or 0/1 columns; --task multilabel)."}


def report_parts(model, full_train: ImageIndex, full_val: ImageIndex, data, out,
                 progress: bool, task: str = "classify") -> tuple[dict[str, ImageIndex],
                                                                  list[str]]:
    """The sets a report judges, and notes on what was subsampled: a stratified training
    subset (label issues need each image's features), the validation rows training used
    (max_val), and with `data` (a folder, table or `ImageIndex` of the model's `task`) its
    pre-flighted images, under "test". `out` is refused inside the data before anything is
    written."""
    parts = {"train": full_train.subset(MAX_TRAIN_JUDGED, model.seed),
             "val": full_val.subset(model.settings_.max_val, model.seed)}
    notes = []
    if len(parts["train"]) < len(full_train):
        notes.append(f"Label issues searched among a stratified {len(parts['train']):,} of the "
                     f"{len(full_train):,} training images.")
    if len(parts["val"]) < len(full_val) and data is None:
        notes.append(f"Evaluated on the {len(parts['val']):,} validation images training used, "
                     f"a stratified subset of the {len(full_val):,} (--max-val).")
    if data is not None:
        test = open_dataset(data, SourceOptions(task=task), min_classes=1)
        if (test.is_regression, test.is_multilabel) != (task == "regress", task == "multilabel"):
            raise ConfigError(_OTHER_DATA[task])
        if task != "regress":
            test = test.with_classes(model.classes_)
        parts["test"] = preflight(test, image_size=model.preprocessing_.image_size,
                                  max_pixels=model.max_pixels, progress=progress).index
        if out is not None:  # a table's images may lie anywhere
            refuse_output_inside(Path(out), [data, parts["test"]])
    return parts, notes


def find_duplicates(parts: dict[str, ImageIndex], features: dict,
                    labels: np.ndarray | None = None, across: str = "classes",
                    names: np.ndarray | None = None) -> dict:
    """Exact groups (same bytes) and near-duplicate pairs (embeddings) over every split, with
    counts of label conflicts (across classes; or across what `labels` codes, e.g. distinct
    values or label sets, shown as `names`) and leakage (across splits)."""
    paths = concat_text(index.paths for index in parts.values())
    if labels is None:
        labels = np.concatenate([index.labels for index in parts.values()])
    subsets = np.concatenate([[name] * len(index) for name, index in parts.items()])
    hashes = np.concatenate([index.sha256 for index in parts.values()])
    embeddings = np.concatenate([f.features for f in features.values()])
    rows = np.flatnonzero(np.concatenate([f.ok for f in features.values()]))
    exact = exact_duplicate_groups(hashes)
    near = near_duplicate_pairs(embeddings[rows])
    if len(near):
        near[:, :2] = rows[near[:, :2].astype(int)]
        same_bytes = hashes[near[:, 0].astype(int)] == hashes[near[:, 1].astype(int)]
        near = near[~same_bytes]
    exact_info = classify_duplicate_pairs(exact, labels, subsets)
    near_info = classify_duplicate_pairs(near, labels, subsets)
    summary = {"exact duplicate groups": len(exact),
               f"exact pairs across {across} (label conflicts)": exact_info["label_conflict"],
               "exact pairs across splits (leakage)": exact_info["leakage"],
               "near-duplicate pairs": near_info["n_pairs"],
               f"near pairs across {across}": near_info["label_conflict"],
               "near pairs across splits (leakage)": near_info["leakage"]}
    describe = (lambda i: (str(paths[i]), _label(parts, labels[i]) if names is None
                           else str(names[i]), str(subsets[i])))
    groups = [[describe(int(i)) for i in group] for group in exact]
    groups += [[describe(int(i)), describe(int(j))] for i, j, _ in near[:30]]
    return {"summary": summary, "groups": groups}


def _label(parts: dict[str, ImageIndex], label: int) -> str:
    classes = next(iter(parts.values())).classes
    return classes[label] if label >= 0 else "?"
