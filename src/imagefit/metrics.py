"""Metrics from arrays: true labels (or values) and predictions in, plain numbers out, for the
three tasks: `classification_metrics`, `multilabel_metrics`, `regression_metrics`. No model, no
files, no plotting here (STYLE: reports work on arrays).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from imagefit.progress import printable

ECE_BINS = 15


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes in rows and predicted classes in columns."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray,
                               n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: the support-weighted gap between confidence and accuracy in equal-width
    confidence bins (Guo et al., 2017)."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def binary_calibration_error(y_true: np.ndarray, proba: np.ndarray,
                             n_bins: int = ECE_BINS) -> float:
    """ECE of one label's probabilities: the support-weighted gap between the mean
    probability and the share of positives in equal-width probability bins."""
    y_true, proba = np.asarray(y_true, bool), np.asarray(proba, np.float64)
    if not len(y_true):
        return float("nan")
    bins = np.minimum((proba * n_bins).astype(int), n_bins - 1)
    total = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=y_true - proba, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y_true)) if total.any() else float("nan")


def log_loss(y_true: np.ndarray, proba: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped to [eps, 1])."""
    p = np.clip(proba[np.arange(len(y_true)), y_true], eps, 1.0)
    return float(-np.log(p).mean())


def classification_metrics(y_true: np.ndarray, proba: np.ndarray,
                           classes: Sequence[str]) -> dict:
    """The metrics of `imagefit evaluate --json` (keys are a contract).

    Balanced accuracy is the mean recall over classes present in `y_true`; macro-F1 averages F1
    over those classes too (scikit-learn's conventions with labels=present classes). When class
    names are folder paths (`animals/domestic/cat`), `hierarchy_accuracy` holds the accuracy at
    each upper level: `{"level_1": ...}` counts a prediction right when its first folder
    matches the truth's.

    Example:
        >>> m = classification_metrics(np.array([0, 1]), np.array([[.9, .1], [.2, .8]]), ["a", "b"])
        >>> m["accuracy"], m["per_class"]["b"]["recall"]
        (1.0, 1.0)
    """
    y_true = np.asarray(y_true, np.int64)
    proba = np.asarray(proba, np.float64)
    k = len(classes)
    y_pred = proba.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    tp = np.diag(matrix).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    n = len(y_true)
    metrics = {
        "n": int(n),
        "classes": list(classes),
        "accuracy": float((y_pred == y_true).mean()) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "log_loss": log_loss(y_true, proba) if n else float("nan"),
        "ece": expected_calibration_error(y_true, proba) if n else float("nan"),
        "confusion_matrix": matrix.tolist(),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(classes)},
    }
    levels = hierarchy_accuracy(y_true, y_pred, classes)
    if levels:
        metrics["hierarchy_accuracy"] = levels
    return metrics


def hierarchy_accuracy(y_true: np.ndarray, y_pred: np.ndarray,
                       classes: Sequence[str]) -> dict[str, float]:
    """Accuracy at each upper level of `/`-separated class paths, when every class is a path
    of the same depth (as `--label-depth N` makes them); {} otherwise (`n/a` is no hierarchy).

    Example:
        >>> hierarchy_accuracy(np.array([0]), np.array([1]), ["pets/cat", "pets/dog"])
        {'level_1': 1.0}
    """
    depths = {len(c.split("/")) for c in classes}
    depth = depths.pop() if len(depths) == 1 else 1
    out = {}
    for level in range(1, depth):
        prefix = np.array(["/".join(c.split("/")[:level]) for c in classes])
        right = prefix[y_pred] == prefix[y_true]
        out[f"level_{level}"] = float(right.mean()) if len(right) else float("nan")
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, lower: np.ndarray | None = None,
                       upper: np.ndarray | None = None) -> dict:
    """MAE, RMSE, R², median absolute error and Spearman's rank correlation; with prediction
    intervals [`lower`, `upper`], their empirical coverage and mean width.

    R² is 1 - SSE / SST (scikit-learn's `r2_score`; nan for constant targets). Spearman's rho is
    Pearson's correlation of the ranks, ties given their mean rank (nan when either side is
    constant).

    Example:
        >>> m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.5]))
        >>> round(m["mae"], 4), round(m["r2"], 4), m["spearman"]
        (0.3333, 0.75, 0.8660254037844387)
    """
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    n = len(y_true)
    nan = float("nan")
    error = y_pred - y_true
    sst = float(((y_true - y_true.mean()) ** 2).sum()) if n else 0.0
    metrics = {
        "n": int(n),
        "mae": float(np.abs(error).mean()) if n else nan,
        "rmse": float(np.sqrt((error ** 2).mean())) if n else nan,
        "r2": 1.0 - float((error ** 2).sum()) / sst if sst > 0 else nan,
        "median_absolute_error": float(np.median(np.abs(error))) if n else nan,
        "spearman": _pearson(_ranks(y_true), _ranks(y_pred)) if n > 1 else nan,
    }
    if lower is not None and upper is not None:
        lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        inside = (y_true >= lower) & (y_true <= upper)
        metrics["interval_coverage"] = float(inside.mean()) if n else nan
        metrics["interval_mean_width"] = float((upper - lower).mean()) if n else nan
    return metrics


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(values)] - 1
    ranks = np.empty(len(values))
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a ** 2).sum() * (b ** 2).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision of one label: the precision at each positive, ranked by `score`,
    averaged over the positives (scikit-learn's `average_precision_score`: tied scores form
    one threshold). nan without positives.

    Example:
        >>> average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
        0.8333333333333333
    """
    y_true = np.asarray(y_true).astype(bool)
    positives = int(y_true.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    score, y_true = np.asarray(score, np.float64)[order], y_true[order]
    last_of_tie = np.r_[score[1:] != score[:-1], True]  # thresholds: distinct scores
    tp = np.cumsum(y_true)[last_of_tie]
    predicted = (np.flatnonzero(last_of_tie) + 1)
    precision = tp / predicted
    recall_gain = np.diff(np.r_[0, tp]) / positives
    return float((precision * recall_gain).sum())


def multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str],
                       thresholds: np.ndarray | float = 0.5) -> dict:
    """Multi-label metrics of an indicator matrix `y_true` (n, k) and probabilities `proba`:
    labels are predicted where `proba >= thresholds` (one per label, or one for all).

    Keys: micro/macro/samples F1 (macro over the labels with positives or predictions; samples
    over images, where an image with no true and no predicted label agrees fully and scores 1,
    scikit-learn's `zero_division=1`), mAP (over the labels with positives) and per-label AP,
    subset accuracy, Hamming loss, mean ECE over the labels, and per label precision, recall,
    F1, AP, ECE (`binary_calibration_error`), support and the threshold.

    Example:
        >>> m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[.9, .2], [.6, .4]]),
        ...                        ["cat", "dog"])
        >>> m["subset_accuracy"], m["hamming_loss"], m["per_label"]["dog"]["recall"]
        (0.5, 0.25, 0.0)
    """
    y_true = np.asarray(y_true).astype(bool)
    proba = np.asarray(proba, np.float64)
    n, k = y_true.shape
    predicted = proba >= np.broadcast_to(np.asarray(thresholds, np.float64), (k,))
    tp = (y_true & predicted).sum(axis=0).astype(float)
    support, n_predicted = y_true.sum(axis=0), predicted.sum(axis=0)
    precision = np.divide(tp, n_predicted, out=np.zeros(k), where=n_predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + n_predicted, out=np.zeros(k),
                   where=(support + n_predicted) > 0)
    ap = np.array([average_precision(y_true[:, j], proba[:, j]) for j in range(k)])
    active = (support + n_predicted) > 0
    row_tp = (y_true & predicted).sum(axis=1)
    row_total = y_true.sum(axis=1) + predicted.sum(axis=1)
    row_f1 = np.divide(2 * row_tp, row_total, out=np.ones(n), where=row_total > 0)
    all_tp, all_total = tp.sum(), float(support.sum() + n_predicted.sum())
    nan = float("nan")
    ece = np.array([binary_calibration_error(y_true[:, j], proba[:, j]) for j in range(k)])
    return {
        "n": int(n),
        "labels": list(labels),
        "ece": float(np.mean(ece)) if k and n else nan,
        "micro_f1": 2 * all_tp / all_total if all_total else nan,
        "macro_f1": float(f1[active].mean()) if active.any() else nan,
        "samples_f1": float(row_f1.mean()) if n else nan,
        "map": float(np.nanmean(ap)) if (support > 0).any() else nan,
        "subset_accuracy": float((predicted == y_true).all(axis=1).mean()) if n else nan,
        "hamming_loss": float((predicted != y_true).mean()) if n else nan,
        "per_label": {name: {"precision": float(precision[j]), "recall": float(recall[j]),
                             "f1": float(f1[j]), "ap": float(ap[j]), "ece": float(ece[j]),
                             "support": int(support[j]),
                             "threshold": float(np.broadcast_to(thresholds, (k,))[j])}
                      for j, name in enumerate(labels)},
    }


def format_per_class_table(metrics: dict) -> str:
    """A fixed-width per-class table plus the headline line, for the terminal."""
    width = max([len(printable(c)) for c in metrics["classes"]] + [5])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{printable(name):<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                     f"{row['f1']:5.3f}  {row['support']:7d}")
    lines.append(f"accuracy {metrics['accuracy']:.3f} | balanced accuracy "
                 f"{metrics['balanced_accuracy']:.3f} | macro-F1 {metrics['macro_f1']:.3f} | "
                 f"log loss {metrics['log_loss']:.3f} | ECE {metrics['ece']:.3f} | "
                 f"n={metrics['n']}")
    if metrics.get("hierarchy_accuracy"):
        lines.append("accuracy by level of the class path: " + " | ".join(
            f"{name.replace('_', ' ')} {value:.3f}"
            for name, value in metrics["hierarchy_accuracy"].items()))
    return "\n".join(lines)


def format_multilabel_table(metrics: dict) -> str:
    """A multi-label model's per-label table plus the headline line, for the terminal."""
    width = max([len(printable(c)) for c in metrics["labels"]] + [5])
    lines = [f"{'label':<{width}}  precision  recall     f1     AP  threshold  support"]
    for name, row in metrics["per_label"].items():
        lines.append(f"{printable(name):<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                     f"{row['f1']:5.3f}  {row['ap']:5.3f}  {row['threshold']:9.3f}  "
                     f"{row['support']:7d}")
    lines.append(f"mAP {metrics['map']:.3f} | macro-F1 {metrics['macro_f1']:.3f} | micro-F1 "
                 f"{metrics['micro_f1']:.3f} | samples-F1 {metrics['samples_f1']:.3f} | subset "
                 f"accuracy {metrics['subset_accuracy']:.3f} | Hamming loss "
                 f"{metrics['hamming_loss']:.3f} | ECE {metrics['ece']:.3f} | n={metrics['n']}")
    return "\n".join(lines)


def format_regression_line(metrics: dict) -> str:
    """A regression's metrics on one line, for the terminal."""
    line = (f"MAE {metrics['mae']:.4g} | RMSE {metrics['rmse']:.4g} | R² {metrics['r2']:.3f} | "
            f"median |error| {metrics['median_absolute_error']:.4g} | Spearman "
            f"{metrics['spearman']:.3f}")
    if "interval_coverage" in metrics:
        promised = metrics.get("interval_promised")
        line += (f" | interval coverage {metrics['interval_coverage']:.3f}"
                 + (f" (promised {promised:.0%})" if promised else "")
                 + f", mean width {metrics['interval_mean_width']:.4g}")
    return line + f" | n={metrics['n']}"
