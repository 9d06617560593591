"""Class weights for imbalanced data. (Balanced samplers and under-sampling come with the
augmentation work; this module owns every imbalance correction.)
"""

from __future__ import annotations

import numpy as np

from imagefit.errors import ConfigError

BALANCE_CHOICES = ("auto", "weights", "none")
# Above this ratio of largest to smallest class, "auto" turns class weights on.
AUTO_IMBALANCE_RATIO = 1.5


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count over smallest non-empty class count (1.0 when balanced)."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def resolve_balance(balance: str, counts: np.ndarray) -> str:
    """Turn "auto" into "weights" or "none" by the imbalance ratio of `counts`."""
    if balance not in BALANCE_CHOICES:
        raise ConfigError(f"The 'balance' parameter must be one of {list(BALANCE_CHOICES)}. "
                          f"Got {balance!r} instead.")
    if balance == "auto":
        return "weights" if imbalance_ratio(counts) > AUTO_IMBALANCE_RATIO else "none"
    return balance


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's "balanced" weights: n_samples / (n_classes * count) per class.

    Classes with no samples get weight 0 (they contribute no loss anyway).

    Example:
        >>> balanced_class_weights(np.array([30, 10])).tolist()
        [0.6666666666666666, 2.0]
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
