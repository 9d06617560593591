"""Evaluating a fitted multi-label `ImageClassifier` on images with known label sets: the
metrics (`metrics.multilabel_metrics`), the per-label rankings a report shows, and the CSV of
predictions (`path[,true_labels],labels,prob_<label>...,error`, labels joined with `|`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from imagefit.data.index import TAG_SEPARATOR, BadFile, ImageIndex
from imagefit.errors import ConfigError
from imagefit.estimator import ImageClassifier
from imagefit.evaluation.prediction_csv import top_k_text, write_prediction_rows
from imagefit.evaluation.regression import json_text
from imagefit.features.extract import Predictions
from imagefit.metrics import multilabel_metrics


@dataclass
class TagResult:
    """Metrics (the `evaluate --json` keys of a multi-label model) and the per-image
    probabilities behind them; a file that could not be decoded has a NaN row."""

    metrics: dict
    predictions: Predictions
    tags: np.ndarray          # bool (n, n_labels): the true label sets
    thresholds: np.ndarray
    bad_files: list[BadFile]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `metrics.json` and `predictions.csv` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json_text(self.metrics), encoding="utf-8")
        write_tag_predictions_csv(self.predictions, folder / "predictions.csv",
                                  self.thresholds, tags=self.tags)
        return folder

    def save_report(self, folder: str | os.PathLike) -> Path:
        """Write an HTML report of this evaluation (per-label metrics, galleries, the label
        co-occurrence of this set); returns the page. `imagefit report RUN` adds label issues
        of the training data and duplicates."""
        from imagefit.report.evaluation import save_tags_report

        return save_tags_report(self, folder)

    def rankings(self, k: int = 8) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """Per label, (row, probability) of: the most confident positives ("confident"),
        the positives it missed with the lowest probability ("missed"), and the negatives
        it gave the highest probability ("false_positive"), `k` of each."""
        ok = self.predictions.ok
        proba = self.predictions.proba
        out = {}
        for j, name in enumerate(self.predictions.classes):
            p, y = proba[:, j], self.tags[:, j]
            hit = ok & y & (p >= self.thresholds[j])
            missed = ok & y & (p < self.thresholds[j])
            wrong = ok & ~y & (p >= self.thresholds[j])
            out[name] = {"confident": _top(hit, -p, k, p), "missed": _top(missed, p, k, p),
                         "false_positive": _top(wrong, -p, k, p)}
        return out


def _top(rows: np.ndarray, key: np.ndarray, k: int, p: np.ndarray) -> list[tuple[int, float]]:
    chosen = np.flatnonzero(rows)
    chosen = chosen[np.argsort(key[chosen], kind="stable")[:k]]
    return [(int(i), float(p[i])) for i in chosen]


def tag_result(model: ImageClassifier, preds: Predictions, tags: np.ndarray,
               bad_files: list[BadFile] | None = None) -> TagResult:
    """Metrics of predictions already made (the rows of files that failed left out)."""
    ok = preds.ok
    metrics = {"task": "multilabel",
               **multilabel_metrics(tags[ok], preds.proba[ok], model.classes_,
                                    model.thresholds_),
               "n_failed": int((~ok).sum())}
    return TagResult(metrics, preds, np.asarray(tags, bool), model.thresholds_,
                     list(bad_files or []))


def evaluate_tags(model: ImageClassifier, data: ImageIndex, *,
                  progress: bool = False) -> TagResult:
    """Predict every image of `data` (an `ImageIndex` with label sets; labels matched by
    name) and compute the metrics.

    Example:
        >>> result = evaluate_tags(clf, open_dataset("test.csv",
        ...                        SourceOptions(task="multilabel")))  # doctest: +SKIP
        >>> result.metrics["map"], result.metrics["macro_f1"]         # doctest: +SKIP
        (0.91, 0.84)
    """
    if data.tags is None:
        raise ConfigError("This model predicts label sets: evaluate it on a table of images and "
                          "their labels (joined by |, or 0/1 columns; --task multilabel).")
    data = data.with_classes(model.classes_)
    preds = model.predict_files(data.paths, progress=progress)
    bad = list(data.report.bad_files) + [f for f in preds.failures if f is not None]
    return tag_result(model, preds, data.tags, bad)


def validation_tags_result(model: ImageClassifier) -> TagResult:
    """Metrics on the validation set from the probabilities `fit` already computed."""
    preds, tags = model.validation_
    return tag_result(model, preds, tags)


def tag_names(classes, row: np.ndarray) -> str:
    """The names of the set labels of a 0/1 `row`, joined with `|`."""
    return TAG_SEPARATOR.join(classes[j] for j in np.flatnonzero(row))


def write_tag_predictions_csv(preds: Predictions | Iterable[Predictions],
                              path: str | os.PathLike, thresholds: np.ndarray, *,
                              tags: np.ndarray | None = None, top_k: int | None = None,
                              leading: dict[str, list[str]] | None = None) -> int:
    """`path[,true_labels],labels,prob_<label>...[,top_k],error` rows in input order (a
    contract): `labels` are those whose probability reaches their threshold, joined with `|`
    (empty: none); `top_k` lists the k most likely labels as `label:probability` joined with
    `;`. `leading` columns (a table's own) come first, a shared name prefixed with `input_`.
    Returns the number of rows."""
    def header(classes: list[str]) -> list[str]:
        return (["path"] + (["true_labels"] if tags is not None else []) + ["labels"]
                + [f"prob_{c}" for c in classes] + (["top_k"] if top_k else []) + ["error"])

    def row(chunk: Predictions, i: int, n: int) -> list[str]:
        classes, out = chunk.classes, [str(chunk.paths[i])]
        if tags is not None:
            out.append(tag_names(classes, tags[n]))
        if chunk.errors[i]:
            return out + [""] * (1 + len(classes) + (1 if top_k else 0))
        p = chunk.proba[i]
        out += [tag_names(classes, p >= thresholds)] + [f"{v:.6f}" for v in p]
        return out + ([top_k_text(classes, p, top_k)] if top_k else [])

    return write_prediction_rows(preds, path, header, row, leading)
