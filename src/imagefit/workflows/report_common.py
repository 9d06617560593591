"""What the report of every kind of run shares (`workflows.report` for classes and values,
`workflows.report_tags` for label sets): the result type, the gallery and subset sizes, and
the search for exact and near duplicates across the splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefit.data.index import ImageIndex
from imagefit.data.text import concat_text
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
