"""`imagefit report` for a multi-label run: per-label metrics and galleries of the evaluated
set (the validation split, or `--data`), label co-occurrence, label issues of the training data
from out-of-fold probabilities of a sigmoid head on the stored features (a tag probably missing,
or probably wrong), duplicates and leakage. `workflows.report.build_run_report` calls it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imagefit.data.index import ImageIndex
from imagefit.estimator import ImageClassifier
from imagefit.evaluation.issues import find_tag_issues, out_of_fold_tag_probabilities
from imagefit.evaluation.tagging import tag_result
from imagefit.features.extract import Predictions
from imagefit.report.html import TagReportData, render_tags_report
from imagefit.workflows.report_common import (GALLERY_SIZE, ReportResult, find_duplicates,
                                              report_parts)
from imagefit.workflows.run_folder import RunFolder


def tags_report(clf: ImageClassifier, run_folder: RunFolder, data, out,
                progress: bool) -> ReportResult:
    """`build_run_report` for a multi-label model (same arguments, same result)."""
    full_train, full_val = run_folder.read_split(clf.classes_, multilabel=True)
    parts, notes = report_parts(clf, full_train, full_val, data, out, progress,
                                task="multilabel")
    features = {name: clf.embed_index(index, progress=progress) for name, index in parts.items()}
    name = "test" if data is not None else "val"
    evaluated, extracted = parts[name], features[name]
    proba = np.full((len(evaluated), len(clf.classes_)), np.nan)
    if extracted.ok.any():
        proba[extracted.ok] = clf.proba_from_features(extracted.features[extracted.ok])
    result = tag_result(clf, Predictions(evaluated.paths, proba, clf.classes_,
                                         extracted.failures), evaluated.tags, extracted.failed)
    out_dir = Path(out) if out else run_folder.report
    out_dir.mkdir(parents=True, exist_ok=True)
    issues = _tag_issues(clf, parts["train"], features["train"])
    _write_tag_issues(issues, out_dir / "label_issues.csv")
    names = np.concatenate([p.label_names() for p in parts.values()]).astype(object)
    codes = np.unique(names.astype(str), return_inverse=True)[1]
    duplicates = find_duplicates(parts, features, labels=codes, across="label sets", names=names)
    seen = np.concatenate([full_train.tags, full_val.tags]).astype(np.int64)
    on = f"{len(evaluated):,} test images" if data is not None else "the validation split"
    report = TagReportData(
        title=f"imagefit report: {run_folder.path.name}",
        subtitle=f"{clf.backbone_name_} at {clf.preprocessing_.image_size}px · multi-label, "
                 f"{len(clf.classes_)} labels · evaluated on {on}",
        metrics=result.metrics, labels=clf.classes_, paths=evaluated.paths,
        rankings=result.rankings(GALLERY_SIZE), co_occurrence=seen.T @ seen,
        co_occurrence_note=("Images carrying both labels (row and column) in the training and "
                            "validation data; the diagonal is each label's count."),
        history=run_folder.read_history(),
        label_counts={name: index.counts() for name, index in parts.items()},
        label_issues=issues,
        label_issue_note=("Training images where a label is probably missing, or probably "
                          "wrong: out-of-fold probabilities (5-fold cross-validation of a "
                          "sigmoid head on the cached features), then confident learning per "
                          "label; most likely first. Check them before trusting the metrics."),
        duplicates=duplicates,
        notes=notes + ([] if data is not None else [
            "The thresholds and the calibration were fitted on these validation images, so "
            "their F1 here is optimistic; report --data on held-out images tests them."]))
    return ReportResult(render_tags_report(report, out_dir), int(extracted.ok.sum()),
                        len(issues), duplicates["summary"], result)


def _tag_issues(clf: ImageClassifier, train: ImageIndex, extracted
                ) -> list[tuple[str, str, bool, float]]:
    """(path, label, missing?, score) of the training tags that look wrong or missing."""
    ok = extracted.ok
    tags = train.tags[ok]
    if len(tags) < 10:
        return []
    oof = out_of_fold_tag_probabilities(
        extracted.features[ok], tags, seed=clf.seed, dropout=float(clf.settings_.dropout),
        groups=None if train.groups is None else train.groups[ok])
    found = find_tag_issues(tags, oof)
    paths = train.paths[ok]
    return [(str(paths[r]), clf.classes_[j], bool(missing), float(score))
            for r, j, missing, score in zip(found.rows, found.labels, found.missing, found.score)]


def _write_tag_issues(issues: list[tuple[str, str, bool, float]], path: Path) -> None:
    """A multi-label run's `label_issues.csv`: `path,label,issue,score` (issue: `missing`, the
    label looks present but is not given; `wrong`, given but looks absent)."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "issue", "score"])
        writer.writerows((p, label, "missing" if missing else "wrong", f"{score:.6f}")
                         for p, label, missing, score in issues)
