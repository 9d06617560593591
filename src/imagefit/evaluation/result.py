"""Evaluating a fitted classifier on a labelled dataset: predictions and metrics as arrays,
and the CSV of predictions (`path,label,confidence,prob_<class>...`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from imagefit.data.index import BadFile, ImageIndex
from imagefit.data.sources import SourceOptions, open_dataset, scan_folder
from imagefit.estimator import ImageClassifier
from imagefit.evaluation.ranking import Rankings, rank_per_class
from imagefit.evaluation.prediction_csv import top_k_text, write_prediction_rows
from imagefit.features.extract import Predictions
from imagefit.metrics import classification_metrics


@dataclass
class EvaluationResult:
    """Metrics (the `evaluate --json` keys) and the per-image predictions behind them."""

    metrics: dict
    predictions: Predictions
    y_true: np.ndarray
    bad_files: list[BadFile]

    def rankings(self, k: int = 8) -> Rankings:
        """Per class: the `k` most confident, least confident and confidently wrong images."""
        return rank_per_class(self.y_true, self.predictions.proba, k)

    def label_issues(self) -> list[tuple[str, str, str, float]]:
        """Likely mislabelled images of this (held-out) set by confident learning on the
        model's predictions: (path, given_label, suggested_label, score), most likely first."""
        from imagefit.evaluation.issues import find_label_issues

        ok = self.predictions.ok & (self.y_true >= 0)
        rows = np.flatnonzero(ok)
        if len(rows) < 2:
            return []
        found = find_label_issues(self.y_true[rows], self.predictions.proba[rows])
        classes = self.predictions.classes
        return [(str(self.predictions.paths[rows[i]]), classes[self.y_true[rows[i]]],
                 classes[s], float(score))
                for i, s, score in zip(found.indices, found.suggested, found.score)]

    def save_report(self, folder: str | os.PathLike) -> Path:
        """Write an HTML report of this evaluation (index.html, rankings.csv,
        label_issues.csv); returns the page. For label issues of the training data and
        duplicates, use `imagefit report RUN`. An alias of `report.save_evaluation_report`
        (as Keras' `model.save()` is of `saving.save_model()`)."""
        from imagefit.report.evaluation import save_evaluation_report

        return save_evaluation_report(self, folder)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `metrics.json` and `predictions.csv` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(self.metrics, indent=2,
                                                        ensure_ascii=True), encoding="utf-8")
        write_predictions_csv(self.predictions, folder / "predictions.csv", y_true=self.y_true)
        return folder


def evaluate(model: ImageClassifier, data: ImageIndex | str | os.PathLike, *,
             progress: bool = False) -> EvaluationResult:
    """Predict every image of `data` and compute the metrics.

    Args:
        model: a fitted classifier (e.g. from `load_model`); an `ImageRegressor` gets
            `evaluation.regression.evaluate_regressor` (a table of values as `data`), a
            multi-label one `evaluation.tagging.evaluate_tags` (a table of label sets).
        data: an `ImageIndex` or a dataset folder/CSV; class names are matched by name, and
            classes unknown to the model are an error.

    Example:
        >>> result = imagefit.evaluate(clf, "data/test")     # doctest: +SKIP
        >>> round(result.metrics["balanced_accuracy"], 3)    # doctest: +SKIP
        0.912
    """
    if not hasattr(model, "classes_"):  # an ImageRegressor
        from imagefit.evaluation.regression import evaluate_regressor

        index = data if isinstance(data, ImageIndex) else open_dataset(
            data, SourceOptions(task="regress"), min_classes=1)
        return evaluate_regressor(model, index, progress=progress)
    if model.multilabel_:
        from imagefit.evaluation.tagging import evaluate_tags

        index = data if isinstance(data, ImageIndex) else open_dataset(
            data, SourceOptions(task="multilabel"), min_classes=1)
        return evaluate_tags(model, index, progress=progress)
    index = data if isinstance(data, ImageIndex) else scan_folder(data, min_classes=1)
    index = index.with_classes(model.classes_)
    preds = model.predict_files(index.paths, progress=progress)
    ok = preds.ok
    bad = list(index.report.bad_files) + [f for f in preds.failures if f is not None]
    metrics = classification_metrics(index.labels[ok], preds.proba[ok], model.classes_)
    return EvaluationResult(metrics, preds, index.labels, bad)


def write_predictions_csv(preds: Predictions | Iterable[Predictions], path: str | os.PathLike,
                          *, y_true: np.ndarray | None = None, top_k: int | None = None,
                          leading: dict[str, list[str]] | None = None) -> int:
    """`path,label,confidence,prob_<class>...,error` rows in input order (a contract); returns
    the number of rows. `preds` may be an iterable of chunks, written as they come.

    With `y_true`, a `true_label` column follows `path`; with `top_k`, a `top_k` column lists the
    k most likely classes as `class:probability` separated by `;`. `leading` columns (a
    table's own, one value per row) come first; a name they share with a prediction column is
    prefixed with `input_`.
    """
    def header(classes: list[str]) -> list[str]:
        return (["path"] + (["true_label"] if y_true is not None else []) + ["label", "confidence"]
                + [f"prob_{c}" for c in classes] + (["top_k"] if top_k else []) + ["error"])

    def row(chunk: Predictions, i: int, n: int) -> list[str]:
        classes, out = chunk.classes, [str(chunk.paths[i])]
        if y_true is not None:
            out.append(classes[y_true[n]] if y_true[n] >= 0 else "")
        if chunk.errors[i]:
            return out + ["", ""] + [""] * len(classes) + ([""] if top_k else [])
        p = chunk.proba[i]
        out += [classes[int(p.argmax())], f"{p.max():.6f}"] + [f"{v:.6f}" for v in p]
        return out + ([top_k_text(classes, p, top_k)] if top_k else [])

    return write_prediction_rows(preds, path, header, row, leading)


def write_label_issues(issues: list[tuple[str, str, str, float]], path: Path) -> None:
    """`path,given_label,suggested_label,score`, most likely issues first."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "given_label", "suggested_label", "score"])
        writer.writerows((p, g, s, f"{score:.6f}") for p, g, s, score in issues)
