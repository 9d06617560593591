"""Every imbalance correction of imagefit: class weights, logit adjustment, balanced sampling.

The "auto" rule: no correction up to a largest/smallest class ratio of 1.5; class weights up
to 10x (exact and cheap for moderate imbalance); beyond 10x a balanced sampler, because weights
that large let a few minority images dominate the loss gradient, while resampling shows each
draw with fresh augmentation. Randomness comes only from generators made from (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from imagefit._validation import check_choice, check_int, check_scalar, param_error
from imagefit.errors import ConfigError

BALANCE_CHOICES = ("auto", "weights", "sampler", "none")
CLASS_WEIGHT_CHOICES = ("balanced", "effective_number", "none")
# Above this ratio of largest to smallest class, "auto" turns class weights on...
AUTO_IMBALANCE_RATIO = 1.5
# ...and above this one, the balanced sampler instead.
AUTO_SAMPLER_RATIO = 10.0
# Stand-in prior of an empty class: log(1e-12) ~ -27.6 keeps logits finite.
_EMPTY_PRIOR = 1e-12
# Last word of the sampler's seed: SeedSequence ignores trailing zeros, so [seed, 0] alone would
# replay np.random.default_rng(seed), the stream other seeded code (fold splits) draws from.
_SAMPLER_STREAM = 0x5A3B1E
# Indices `BalancedSampler.__iter__` turns into Python ints at a time.
_ITER_BLOCK = 1 << 16
_SUBSET_STREAM = 0x5B5E7  # `stratified_subset`'s generator


def imbalance_ratio(counts: np.ndarray) -> float:
    """Largest class count over smallest non-empty class count (1.0 when balanced)."""
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def resolve_balance(balance: str, counts: np.ndarray) -> str:
    """Turn "auto" into "none", "weights" or "sampler" by the imbalance ratio of `counts`.

    Example:
        >>> [resolve_balance("auto", np.array(c)) for c in ([15, 10], [100, 10], [101, 10])]
        ['none', 'weights', 'sampler']
    """
    check_choice("balance", balance, BALANCE_CHOICES)
    if balance != "auto":
        return balance
    ratio = imbalance_ratio(np.asarray(counts))
    if ratio <= AUTO_IMBALANCE_RATIO:
        return "none"
    return "weights" if ratio <= AUTO_SAMPLER_RATIO else "sampler"


# -- class weights ------------------------------------------------------------------------------

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


def effective_number_weights(counts: np.ndarray, beta: float = 0.999) -> np.ndarray:
    """Class-balanced weights of Cui et al. (CVPR 2019): (1 - beta) / (1 - beta**count).

    The weights are rescaled so that sum(weight * count) equals the number of samples, the scale
    of "balanced". beta=0 gives equal weights; beta -> 1 tends to "balanced". Empty classes get 0.

    Example:
        >>> effective_number_weights(np.array([30, 10]), beta=0.9).round(3).tolist()
        [0.895, 1.316]
    """
    check_scalar("beta", beta, 0, 1, high_open=True)
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    if beta == 0.0:
        weights[present] = 1.0
    else:  # expm1 keeps 1 - beta**n accurate when beta is close to 1
        weights[present] = (1.0 - beta) / -np.expm1(counts[present] * np.log(beta))
    total = (weights * counts).sum()
    return weights * (counts.sum() / total) if total > 0 else weights


def class_weights(spec: str | Mapping[str, float] | None, counts: np.ndarray,
                  classes: Sequence[str]) -> np.ndarray:
    """Per-class loss weights from a spec: "balanced", "effective_number", "none"/None or a dict.

    A dict maps class names to weights; classes it leaves out get 1.0.

    Example:
        >>> class_weights({"owl": 3}, np.array([5, 5]), ["cat", "owl"]).tolist()
        [1.0, 3.0]
    """
    counts = np.asarray(counts)
    if len(counts) != len(classes):
        raise ConfigError(f"The 'counts' parameter must have one entry per class "
                          f"({len(classes)}). Got {len(counts)} instead.")
    if isinstance(spec, Mapping):
        unknown = sorted(str(name) for name in spec if name not in classes)
        if unknown:
            raise ConfigError(f"The 'class_weight' parameter names unknown classes {unknown}. "
                              f"Valid classes: {list(classes)}.")
        bad = {name: w for name, w in spec.items() if not _is_weight(w)}
        if bad:
            raise ConfigError(f"The 'class_weight' parameter must map classes to finite "
                              f"weights >= 0. Got {bad!r} instead.")
        return np.array([float(spec.get(name, 1.0)) for name in classes])
    check_choice("class_weight", "none" if spec is None else spec, CLASS_WEIGHT_CHOICES)
    if spec == "balanced":
        return balanced_class_weights(counts)
    if spec == "effective_number":
        return effective_number_weights(counts)
    return np.ones(len(counts))


def logit_adjustment(counts: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Offsets tau * log(prior) of logit-adjusted training (Menon et al., ICLR 2021).

    The caller adds them to the logits inside the training loss only; at prediction nothing is
    added, and that difference is what removes the prior and balances the classes. An empty class
    gets log(1e-12) ~ -27.6 * tau: it drops out of the training softmax, so nothing pushes its
    logit down; drop empty classes before training.

    Example:
        >>> logit_adjustment(np.array([3, 1])).round(4).tolist()
        [-0.2877, -1.3863]
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.number)) \
            or not 0.0 <= tau < np.inf:
        raise param_error("tau", "a finite float >= 0", tau)
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise ConfigError("The 'counts' parameter must contain at least one sample. "
                          f"Got {counts.tolist()} instead.")
    prior = np.maximum(counts / counts.sum(), _EMPTY_PRIOR)
    return tau * np.log(prior)


def stacked_correction_warning(balance: str,
                               class_weight_spec: str | Mapping[str, float] | None) -> str | None:
    """A warning when a balanced sampler meets balancing class weights, else None.

    `balance` is the resolved value (after `resolve_balance`). The sampler already shows every
    class equally often; weights on top count the minority classes twice.

    Example:
        >>> stacked_correction_warning("sampler", None) is None
        True
    """
    check_choice("balance", balance, BALANCE_CHOICES)
    if isinstance(class_weight_spec, Mapping):
        balancing = any(float(w) != 1.0 for w in class_weight_spec.values())
    else:
        balancing = class_weight_spec in ("balanced", "effective_number")
    if balance != "sampler" or not balancing:
        return None
    return (f"balance='sampler' with class_weight={class_weight_spec!r}: the balanced sampler "
            "already draws every class equally often, and class weights on top stack a second "
            "correction that over-corrects toward the minority classes. Use one of the two: "
            "class_weight='none' with the sampler, or balance='weights'.")


# -- balanced sampler ---------------------------------------------------------------------------

class BalancedSampler:
    """Epochs in which every present class gets an equal share of draws (a DataLoader sampler).

    Within a class, draws cycle through fresh random permutations of its images ("stratified
    cycling"): each image is drawn floor or ceil of share/count times per epoch, with lower variance
    than i.i.d. multinomial draws. A class larger than its share is under-sampled: a new random
    subset each epoch. The epoch's list is shuffled and is a pure function of (seed, epoch).

    Args:
        labels: (n,) int class id of each image.
        seed: with the epoch, seeds everything.
        num_samples: draws per epoch over all ranks. Default: classes present times the largest
            class count (the smallest with replacement=False), capped by `max_per_class`.
        max_per_class: draws per class per epoch ("500 of the 100,000"); sets the default.
        replacement: if False, no image repeats within an epoch, so the share is at most the
            smallest class.
        rank, world_size: like DistributedSampler. Every rank builds the same list, pads it by
            repeating from the start to a multiple of world_size and takes list[rank::world_size].

    Example:
        >>> labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
        >>> sampler = BalancedSampler(labels, seed=0)
        >>> len(sampler), np.bincount(labels[sampler.indices(0)]).tolist()
        (12, [6, 6])
    """

    def __init__(self, labels: np.ndarray, *, seed: int = 0, num_samples: int | None = None,
                 max_per_class: int | None = None, replacement: bool = True, rank: int = 0,
                 world_size: int = 1):
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"The 'labels' parameter must be a non-empty 1-D array of int "
                              f"class ids. Got shape {labels.shape}, dtype {labels.dtype} instead.")
        check_int("seed", seed, 0)
        check_int("world_size", world_size, 1)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) \
                or not 0 <= rank < world_size:
            raise param_error("rank", f"an int in [0, {world_size})", rank)
        if num_samples is not None and max_per_class is not None:
            raise ConfigError("Pass at most one of 'num_samples' and 'max_per_class'. "
                              f"Got {num_samples!r} and {max_per_class!r}.")
        # Images grouped by class as two arrays (not a list of lists): cheap to copy to workers.
        self._order = np.argsort(labels, kind="stable").astype(np.int64)
        _, counts = np.unique(labels, return_counts=True)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        k = len(counts)
        per_class = int(counts.max() if replacement else counts.min())
        if max_per_class is not None:
            check_int("max_per_class", max_per_class, 1)
            per_class = min(per_class, max_per_class)
        if num_samples is None:
            num_samples = k * per_class
        check_int("num_samples", num_samples, 1)
        if not replacement and num_samples > k * counts.min():
            raise ConfigError(f"The 'num_samples' parameter must be <= {k * counts.min()} "
                              f"(classes x smallest class) with replacement=False. "
                              f"Got {num_samples} instead.")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_samples, self.replacement, self.epoch = int(num_samples), replacement, 0

    def __len__(self) -> int:
        """Indices this rank gets per epoch."""
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[int]:
        # Block by block: the epoch as one list would hold a Python int per draw in the process
        # that iterates it (~36 MB per million draws, for the whole epoch).
        indices = self.indices(self.epoch)
        return (i for first in range(0, len(indices), _ITER_BLOCK)
                for i in indices[first:first + _ITER_BLOCK].tolist())

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that `__iter__` yields (call before each epoch, as with torch)."""
        check_int("epoch", epoch, 0)
        self.epoch = int(epoch)

    def full_indices(self, epoch: int) -> np.ndarray:
        """The whole epoch's list of `num_samples` indices, before padding and rank split."""
        check_int("epoch", epoch, 0)
        rng = np.random.default_rng([self.seed, epoch, _SAMPLER_STREAM])
        k = len(self._starts) - 1
        shares = np.full(k, self.num_samples // k)
        shares[rng.choice(k, self.num_samples % k, replace=False)] += 1
        parts = []
        for c in range(k):
            members = self._order[self._starts[c]:self._starts[c + 1]]
            cycles, rest = divmod(int(shares[c]), len(members))
            if cycles:
                parts.append(rng.permuted(np.tile(members, (cycles, 1)), axis=1).ravel())
            parts.append(members[rng.choice(len(members), rest, replace=False)])
        return rng.permutation(np.concatenate(parts))

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's int64 indices for `epoch` (`len(self)` of them)."""
        full = self.full_indices(epoch)
        padded = np.resize(full, len(self) * self.world_size)  # repeats from the start
        return padded[self.rank::self.world_size]


def stratified_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of at most `limit` images spread as evenly over the classes as their sizes
    allow: a class smaller than its share is taken whole, the others share what is left; the
    rows of each class are chosen at random, a pure function of (labels, limit, seed).

    Example:
        >>> labels = np.array([0] * 10 + [1] * 1000 + [2] * 3)
        >>> np.bincount(labels[stratified_subset(labels, 30)]).tolist()
        [10, 17, 3]
    """
    labels = np.asarray(labels)
    check_int("limit", limit, 1)
    if len(labels) <= limit:
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.zeros_like(counts)
    left = int(limit)
    for i, c in enumerate(np.argsort(counts, kind="stable")):  # smallest classes first
        quota[c] = min(counts[c], left // (len(counts) - i))
        left -= quota[c]
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng([seed, _SUBSET_STREAM])
    rows = [rng.choice(order[starts[c]:starts[c + 1]], quota[c], replace=False)
            for c in range(len(classes))]
    return np.sort(np.concatenate(rows))


def _is_weight(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.number))
            and bool(np.isfinite(value)) and value >= 0)


def iterative_stratification(y: np.ndarray, fractions: Sequence[float],
                             seed: int = 0) -> np.ndarray:
    """The part (0, 1, ...) of each row of a multi-label indicator matrix `y` (n, k), each
    part getting about its `fractions` share of the rows and of every label's positives.

    Iterative stratification (Sechidis, Tsoumakas and Vlahavas, ECML 2011): the label with the
    fewest positives still unassigned goes first, each of its rows to the part that most
    lacks that label (then the part that most lacks rows; then a seeded draw), so that rare
    labels, which a random split drops from one side, are spread first. Rows without any
    label go last, to the parts that most lack rows.

    Example:
        >>> y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]])
        >>> iterative_stratification(y, [0.5, 0.5], seed=0).tolist()
        [1, 0, 1, 0, 0, 1]
    """
    y = np.asarray(y).astype(bool)
    if y.ndim != 2:
        raise ConfigError(f"The 'y' parameter must be an indicator matrix (n, k). Got shape "
                          f"{y.shape} instead.")
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or len(fractions) < 2 or (fractions <= 0).any() \
            or not np.isclose(fractions.sum(), 1.0):
        raise ConfigError(f"The 'fractions' parameter must be two or more positive shares "
                          f"summing to 1. Got {fractions.tolist()} instead.")
    rng = np.random.default_rng(seed)
    n, k = y.shape
    wanted_rows = fractions * n                           # c_j
    wanted = np.outer(fractions, y.sum(axis=0))          # c_j^l
    part = np.full(n, -1, np.int64)
    left = y.copy()                                      # positives not yet assigned
    while left.any():
        remaining = left.sum(axis=0)
        fewest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = int(rng.choice(fewest))
        for row in rng.permutation(np.flatnonzero(left[:, label])):
            j = _most_lacking(wanted[:, label], wanted_rows, rng)
            part[row] = j
            wanted[j] -= y[row]
            wanted_rows[j] -= 1
            left[row] = False
    for row in rng.permutation(np.flatnonzero(part < 0)):  # rows without labels
        j = _most_lacking(wanted_rows, wanted_rows, rng)
        part[row] = j
        wanted_rows[j] -= 1
    return part


def _most_lacking(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> int:
    """The part with the largest `first`, ties broken by the largest `second`, then by a
    seeded draw."""
    best = np.flatnonzero(first == first.max())
    if len(best) > 1:
        best = best[second[best] == second[best].max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))
