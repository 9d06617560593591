"""Calibration on the validation set. Classes: temperature scaling (Guo et al., 2017), one scalar
T dividing the logits, fitted by minimising the negative log-likelihood; it changes confidence,
never the predicted class. Regression: split-conformal prediction intervals (Lei et al., 2018).
"""

from __future__ import annotations

import math

import numpy as np


def _nll(logits: np.ndarray, y: np.ndarray, beta: float) -> float:
    z = logits * beta
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, *,
                    bounds: tuple[float, float] = (0.05, 20.0), iterations: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, y).

    The NLL is convex in beta = 1/T, so a golden-section search over beta is exact enough and
    needs no gradient. Returns 1.0 when there is nothing to fit on.

    Example:
        >>> logits = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
        >>> fit_temperature(logits, np.array([0, 1, 1, 0])) > 1.0   # overconfident -> T > 1
        True
    """
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    if len(y) == 0:
        return 1.0
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, y, c), _nll(logits, y, d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, y, d)
    beta = (a + b) / 2
    return float(1.0 / beta)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) per row, in float64, stable for large logits."""
    z = np.asarray(logits, np.float64) / temperature
    if not len(z):
        return z
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def conformal_halfwidth(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) * coverage)-th smallest absolute residual of
    n validation images. For a new image exchangeable with them, [prediction - q, prediction + q]
    holds its true value with probability at least `coverage`. inf when n is too small to
    promise that (n < coverage / (1 - coverage): 9 images for 90 %).

    Example:
        >>> conformal_halfwidth(np.arange(1.0, 20.0), 0.9)  # 19 residuals: the 18th smallest
        18.0
    """
    r = np.sort(np.abs(np.asarray(residuals, np.float64)))
    k = math.ceil((len(r) + 1) * coverage)
    return float(r[k - 1]) if k <= len(r) else float("inf")


def fit_platt(logits: np.ndarray, tags: np.ndarray, *, pos_weight: np.ndarray | None = None,
              iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Per-label Platt scaling: (a, b) with sigmoid(a * logit + b) the calibrated probability
    of each label, fitted on (logits, tags) by Newton's method on the log loss against Platt's
    smoothed targets, (n+ + 1) / (n+ + 2) for positives and 1 / (n- + 2) for negatives (Platt
    1999; Lin, Lin and Weng 2007), so that a label with few validation images, or one the
    logits separate perfectly, keeps finite, moderate probabilities. A label without any
    positive or any negative has nothing to fit: it keeps a = 1 and b = -log(pos_weight),
    undoing the shift that weighing positives by `pos_weight` puts on the logits (b = 0
    without weights).

    Example:
        >>> z = np.array([[-3.0], [-2.0], [2.0], [3.0], [2.5], [-2.5]])
        >>> a, b = fit_platt(z, np.array([[0], [1], [1], [1], [0], [0]]))
        >>> bool(0 < a[0] < 1)   # overconfident logits are softened
        True
    """
    logits, tags = np.asarray(logits, np.float64), np.asarray(tags, bool)
    n_labels = tags.shape[1]
    a = np.ones(n_labels)
    b = (np.zeros(n_labels) if pos_weight is None
         else -np.log(np.asarray(pos_weight, np.float64)))
    for k in range(n_labels):
        z, y = logits[:, k], tags[:, k]
        positives, negatives = int(y.sum()), int((~y).sum())
        if not positives or not negatives:
            continue
        t = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))
        a[k], b[k] = _newton_logistic(z, t, iterations)
    return a, b


def _newton_logistic(z: np.ndarray, t: np.ndarray, iterations: int) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a z + b) against soft targets `t`."""
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])

    def loss(w):
        s = x @ w
        return float(np.sum(np.logaddexp(0, s) - t * s))

    current = loss(w)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (p - t)
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-6 and loss(w - size * step) > current:
            size /= 2
        if size <= 1e-6:
            break
        w = w - size * step
        new = loss(w)
        if current - new < 1e-10:
            current = new
            break
        current = new
    return float(w[0]), float(w[1])


def platt_proba(logits: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of each label: sigmoid(a * logit + b), column by column."""
    s = np.asarray(logits, np.float64) * np.asarray(a)[None, :] + np.asarray(b)[None, :]
    return 0.5 * (1.0 + np.tanh(0.5 * s))  # the sigmoid, without overflow warnings


def best_f1_thresholds(proba: np.ndarray, tags: np.ndarray, default: float = 0.5
                       ) -> np.ndarray:
    """Per label, the decision threshold on `proba` with the highest F1 on (proba, tags): a
    label is predicted where proba >= its threshold. Ties go to the higher threshold (fewer
    false positives); a label without positives here keeps `default`.

    Example:
        >>> p = np.array([[0.9], [0.4], [0.35], [0.1]])
        >>> best_f1_thresholds(p, np.array([[1], [1], [0], [0]])).tolist()
        [0.4]
    """
    proba, tags = np.asarray(proba, np.float64), np.asarray(tags, bool)
    thresholds = np.full(tags.shape[1], float(default))
    for k in range(tags.shape[1]):
        y = tags[:, k]
        if not y.any():
            continue
        order = np.argsort(-proba[:, k], kind="stable")
        p, hits = proba[order, k], np.cumsum(y[order])
        last = np.r_[p[1:] != p[:-1], True]  # the last row of each run of equal scores
        predicted = np.arange(1, len(p) + 1)
        f1 = 2 * hits / (predicted + y.sum())
        f1 = np.where(last, f1, -1.0)
        best = int(np.flatnonzero(f1 == f1.max())[0])
        thresholds[k] = p[best]
    return thresholds
