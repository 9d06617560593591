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
