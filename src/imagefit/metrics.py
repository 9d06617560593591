"""Classification metrics from arrays: true labels and predicted probabilities in, plain numbers
out. No model, no files, no plotting here (STYLE: reports work on arrays).
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
