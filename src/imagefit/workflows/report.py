"""`imagefit report`: the report of a run. Predictions on the validation set (or a given test
folder), rankings, label issues of the training data from out-of-fold predictions of the head on the
stored bottleneck features, exact and near duplicates across train/validation/test, training
curves, and Grad-CAM maps of the confidently wrong images; a regression's and a multi-label
run's (`report_tags.py`) own versions; what they share is in `report_common.py`. Rendering is
html.py's job.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imagefit.bundle import resolve_model_dir
from imagefit.data.images import load_image
from imagefit.data.index import ImageIndex
from imagefit.errors import ImageLoadError
from imagefit.estimator import ImageClassifier, load_model
from imagefit.evaluation.regression import regression_result, write_value_issues
from imagefit.evaluation.result import EvaluationResult, write_label_issues
from imagefit.evaluation.issues import (
    find_label_issues,
    out_of_fold_probabilities,
    out_of_fold_values,
)
from imagefit.evaluation.ranking import rank_per_class
from imagefit.explain import gradcam, overlay
from imagefit.features.extract import Predictions, error_texts
from imagefit.metrics import classification_metrics
from imagefit.regressor import ImageRegressor
from imagefit.report.html import (RegressionReportData, ReportData, render_regression_report,
                                  render_report)
from imagefit.workflows.report_common import (GALLERY_SIZE, ReportResult, find_duplicates,
                                              report_parts)
from imagefit.workflows.report_tags import tags_report
from imagefit.workflows.run_folder import RunFolder

# A training value whose out-of-fold residual has a modified z-score above this is listed
# (3.5: Iglewicz and Hoaglin's outlier rule).
VALUE_ISSUE_Z = 3.5
GRADCAMS_PER_CLASS = 3


def build_run_report(run: str | os.PathLike, *, data: str | os.PathLike | ImageIndex | None = None,
                     out: str | os.PathLike | None = None, progress: bool = False) -> ReportResult:
    """(Re)build `RUN/report/` (or `out`): index.html, rankings.csv, label_issues.csv.

    Args:
        run: a run folder written by `imagefit train`.
        data: labelled test data to evaluate instead of the run's validation split: a folder
            or table, or an `ImageIndex` (`open_dataset` reads other shapes).
        out: the report folder (default `RUN/report`).

    Example:
        >>> build_run_report("runs/demo", data="examples/fashion-mnist-demo/test")  # doctest: +SKIP
        ReportResult(index_html=PosixPath('runs/demo/report/index.html'), ...)
    """
    model_dir = resolve_model_dir(run)
    run_folder = RunFolder.of_model(model_dir)
    run_dir = run_folder.path
    clf = load_model(model_dir)
    if isinstance(clf, ImageRegressor):
        return _regression_report(clf, run_folder, data, out, progress)
    if clf.multilabel_:
        return tags_report(clf, run_folder, data, out, progress)
    parts, notes = report_parts(clf, *run_folder.read_split(clf.classes_), data, out, progress)
    train = parts["train"]
    features = {name: clf.embed_index(index, progress=progress) for name, index in parts.items()}
    eval_name = "test" if data is not None else "val"
    evaluated, extracted = parts[eval_name], features[eval_name]
    x_eval, ok_eval = extracted.features, extracted.ok
    proba = np.full((len(evaluated), len(clf.classes_)), np.nan)
    if ok_eval.any():
        proba[ok_eval] = clf.proba_from_features(x_eval[ok_eval])
    y_eval = evaluated.labels
    metrics = classification_metrics(y_eval[ok_eval], proba[ok_eval], clf.classes_)
    rankings = rank_per_class(y_eval, proba, k=GALLERY_SIZE)

    out_dir = Path(out) if out else run_folder.report
    out_dir.mkdir(parents=True, exist_ok=True)
    rankings.write_csv(out_dir / "rankings.csv", evaluated.paths, clf.classes_)
    issues = _label_issues(clf, train, features["train"].features, features["train"].ok)
    write_label_issues(issues, out_dir / "label_issues.csv")
    duplicates = find_duplicates(parts, features)
    report = ReportData(
        title=f"imagefit report: {run_dir.name}",
        subtitle=f"{clf.backbone_name_} at {clf.preprocessing_.image_size}px · evaluated on the "
                 f"{_test_data(data, evaluated) if data is not None else 'validation split'} · "
                 f"temperature {clf.temperature_:.3f}",
        metrics=metrics, classes=clf.classes_, paths=evaluated.paths, y_true=y_eval,
        proba=proba, rankings=rankings, temperature=clf.temperature_,
        history=run_folder.read_history(),
        class_counts={name: index.counts() for name, index in parts.items()},
        label_issues=issues,
        label_issue_note=("Training images whose given label disagrees with out-of-fold "
                          "predictions (5-fold cross-validation of the head on the cached "
                          "features, then confident learning); most likely first. Check them "
                          "before trusting the metrics."),
        duplicates=duplicates, gradcams=_gradcams(clf, evaluated.paths, rankings),
        notes=notes + ([f"{(~ok_eval).sum()} evaluated files could not be read."]
                       if (~ok_eval).any() else []))
    index_html = render_report(report, out_dir)
    evaluation = EvaluationResult(metrics, Predictions(evaluated.paths, proba, clf.classes_,
                                                       extracted.failures), y_eval,
                                  extracted.failed)
    return ReportResult(index_html, int(ok_eval.sum()), len(issues), duplicates["summary"],
                        evaluation)


def _label_issues(clf: ImageClassifier, train: ImageIndex, x: np.ndarray, ok: np.ndarray
                  ) -> list[tuple[str, str, str, float]]:
    labels = train.labels[ok]
    if len(labels) < 10 or len(np.unique(labels)) < 2:
        return []
    oof = out_of_fold_probabilities(x[ok], labels, len(clf.classes_), seed=clf.seed,
                                    class_weight=clf.class_weight_,
                                    dropout=float(clf.settings_.dropout),
                                    groups=None if train.groups is None else train.groups[ok])
    found = find_label_issues(labels, oof)
    paths = train.paths[ok]
    return [(str(paths[i]), clf.classes_[labels[i]], clf.classes_[s], float(score))
            for i, s, score in zip(found.indices, found.suggested, found.score)]


def _test_data(data, evaluated: ImageIndex) -> str:
    """How the subtitle names `--data`: its folder or table, or the images' count for an
    index read elsewhere (its root may be "." or None)."""
    if isinstance(data, ImageIndex):
        return f"{len(evaluated):,} test images"
    return f"test data {data}"


def _regression_report(reg: ImageRegressor, run_folder: RunFolder, data, out,
                       progress: bool) -> ReportResult:
    """`build_run_report` for a regression: predicted-vs-true, residuals, the largest errors,
    values far from their out-of-fold prediction, duplicates."""
    parts, notes = report_parts(reg, *run_folder.read_split(None), data, out, progress,
                                task="regress")  # the training subset stratified by value
    train = parts["train"]
    features = {name: reg.embed_index(index, progress=progress) for name, index in parts.items()}
    name = "test" if data is not None else "val"
    evaluated, extracted = parts[name], features[name]
    value = np.full(len(evaluated), np.nan)
    if extracted.ok.any():
        value[extracted.ok] = reg.predict_features(extracted.features[extracted.ok])
    errors = error_texts(extracted.failures)
    result = regression_result(reg, evaluated.paths, evaluated.targets, value, errors,
                               extracted.failed)
    out_dir = Path(out) if out else run_folder.report
    out_dir.mkdir(parents=True, exist_ok=True)
    issues = _value_issues(reg, train, features["train"])
    write_value_issues(issues, out_dir / "label_issues.csv")
    codes = np.unique(np.concatenate([p.targets for p in parts.values()]), return_inverse=True)[1]
    names = np.array([f"{v:.4g}" for p in parts.values() for v in p.targets], dtype=object)
    duplicates = find_duplicates(parts, features, labels=codes, across="values", names=names)
    on = f"{len(evaluated):,} test images" if data is not None else "the validation split"
    report = RegressionReportData(
        title=f"imagefit report: {run_folder.path.name}",
        subtitle=f"{reg.backbone_name_} at {reg.preprocessing_.image_size}px · regression "
                 f"({reg.loss} loss) · evaluated on {on}",
        metrics=result.metrics, paths=evaluated.paths, y_true=evaluated.targets, value=value,
        halfwidth=reg.halfwidth_, history=run_folder.read_history(), label_issues=issues,
        label_issue_note=("Training images whose value lies far from what the other images "
                          "predict for it (5-fold cross-validated ridge regression on the "
                          "cached features; modified z-score of the residual above "
                          f"{VALUE_ISSUE_Z}); most likely first. Check them before trusting "
                          "the metrics."),
        duplicates=duplicates,
        notes=notes + ([] if data is not None else [
            f"The {reg.interval:.0%} interval was fitted on these validation images, so its "
            f"coverage here is not a test of it; report --data on held-out images is."]))
    return ReportResult(render_regression_report(report, out_dir), int(extracted.ok.sum()),
                        len(issues), duplicates["summary"], result)


def _value_issues(reg: ImageRegressor, train: ImageIndex, extracted
                  ) -> list[tuple[str, float, float, float]]:
    """(path, given value, out-of-fold prediction, score) of the training values that look
    wrong: the residual of a 5-fold ridge regression on the features, as a modified z-score
    (Iglewicz and Hoaglin: 0.6745 (r - median) / MAD), above VALUE_ISSUE_Z; highest first."""
    ok = extracted.ok
    x, y = extracted.features[ok], train.targets[ok]
    if len(y) < 10:
        return []
    groups = None if train.groups is None else train.groups[ok]
    oof = out_of_fold_values(x, y, seed=reg.seed, groups=groups)
    residual = y - oof
    mad = float(np.median(np.abs(residual - np.median(residual))))
    if mad == 0:
        return []
    score = 0.6745 * np.abs(residual - np.median(residual)) / mad
    paths = train.paths[ok]
    return [(str(paths[i]), float(y[i]), float(oof[i]), float(score[i]))
            for i in np.argsort(-score, kind="stable") if score[i] > VALUE_ISSUE_Z]


def _gradcams(clf: ImageClassifier, paths: np.ndarray, rankings) -> dict[int, np.ndarray]:
    prep, maps = clf.preprocessing_, {}
    for c in range(len(clf.classes_)):
        for pos in rankings.select(c, "wrong")[:GRADCAMS_PER_CLASS]:
            row = int(rankings.row[pos])
            try:
                image = load_image(str(paths[row]), prep.image_size, background=prep.background)
            except ImageLoadError:
                continue
            heat = gradcam(clf, image, int(rankings.predicted[pos]))
            maps[row] = overlay(image, heat)
    return maps
