"""Dataset issues from arrays: likely label errors (confident learning on out-of-fold
probabilities) and exact or near duplicates, split into label conflicts and train/test leakage.
Arrays in, arrays out: no files, no plotting; the only model is the head that
`out_of_fold_probabilities` trains on features it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from imagefit._validation import check_int, check_scalar
from imagefit.data.index import rarest_tag, value_strata
from imagefit.data.text import as_text
from imagefit.errors import ConfigError, DatasetError
from imagefit.models.net import make_head
from imagefit.train.engine import LoopSettings, StepSettings, fit_loop
from imagefit.train.loader import shuffled_indices
from imagefit.train.objectives import MultiLabel, ridge_fit

# Cosine similarity of EfficientNet-Lite0 features (224 px) from which two images count as near
# duplicates, measured with benchmarks/near_duplicates.py (400 photo crops + 60 planted copies).
# At 0.92 it finds 45/48 single-edit copies (resized to 70% 12/12, JPEG quality 60 11/12,
# flipped 12/12, 90% crop 10/12) but none of the 12 with all four edits (they score 0.83-0.90);
# no crops of two different photographs reach 0.80. The cost is look-alikes: 1,000 distinct
# Fashion-MNIST images give 45 pairs at 0.92 (0.009% of all pairs), 165 at 0.90, 3 at 0.95,
# and the count grows fast below: 0.92 is where single edits are still nearly all found and
# look-alikes stay few enough to review. Other backbones or image sizes need their own value.
NEAR_DUPLICATE_THRESHOLD = 0.92
RANK_BY = ("self_confidence", "normalized_margin")


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare
class LabelIssues:
    """Rows whose given label is probably wrong, most likely issue first.

    Attributes:
        indices: flagged row indices (int64).
        suggested: for each flagged row, the most probable class other than the given one.
        score: for each flagged row, in [0, 1], higher = more likely mislabelled
            (1 - self-confidence by default; 1 - normalised margin with that ranking).
        normalized_margin: for each flagged row, (p[given] - max p[other] + 1) / 2, in [0, 1],
            lower = more likely mislabelled (cleanlab's "normalized_margin" label quality).
        confident_joint: (k, k) int64 counts, given label in rows, likely true label in columns,
            calibrated so that row i sums to the number of rows labelled i.
    """

    indices: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    normalized_margin: np.ndarray
    confident_joint: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


# -- label errors -------------------------------------------------------------------------------

def stratified_fold_ids(labels: np.ndarray, n_folds: int = 5, seed: int = 0,
                        groups: np.ndarray | None = None) -> np.ndarray:
    """Assign every row to one of `n_folds` folds, stratified by label and seeded.

    Each class's rows are shuffled and dealt round-robin starting at fold 0, so every fold gets
    a near-equal share of every class; a class smaller than `n_folds` fills the first folds.
    With `groups`, whole groups are dealt instead (largest first, in a seeded order within a
    size), each to the fold holding the fewest rows of its most common class: no group is in
    two folds, and classes spread as evenly as the groups allow.

    Args:
        labels: (n,) class of each row (any sortable values).
        n_folds: number of folds, at least 2.
        seed: seeds the shuffles.
        groups: (n,) group of each row (patient, specimen...), or None.

    Returns:
        (n,) int64 fold number of each row.

    Example:
        >>> stratified_fold_ids(np.array([0, 0, 0, 1, 1, 1]), n_folds=3).tolist()
        [1, 2, 0, 2, 1, 0]
    """
    check_int("n_folds", n_folds, 2)
    check_int("seed", seed, 0)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"The 'labels' parameter must be a 1-D array. "
                          f"Got shape {labels.shape} instead.")
    rng = np.random.default_rng(seed)
    if groups is not None:
        return _group_fold_ids(labels, np.asarray(groups), n_folds, rng)
    folds = np.empty(len(labels), np.int64)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rng.shuffle(members)
        folds[members] = np.arange(len(members)) % n_folds
    return folds


def _group_fold_ids(labels: np.ndarray, groups: np.ndarray, n_folds: int,
                    rng: np.random.Generator) -> np.ndarray:
    _, y = np.unique(labels, return_inverse=True)
    _, g = np.unique(groups, return_inverse=True)
    y, g = y.reshape(-1), g.reshape(-1)
    n_groups = int(g.max()) + 1 if len(g) else 0
    votes = np.zeros((n_groups, int(y.max()) + 1 if len(y) else 1), np.int64)
    np.add.at(votes, (g, y), 1)
    sizes = votes.sum(1)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    per_fold = np.zeros((n_folds, votes.shape[1]), np.int64)
    group_fold = np.empty(n_groups, np.int64)
    for group in order:
        main = votes[group].argmax()
        fold = int(np.lexsort((per_fold.sum(1), per_fold[:, main]))[0])
        group_fold[group] = fold
        per_fold[fold] += votes[group]
    return group_fold[g]


def out_of_fold_values(features: np.ndarray, values: np.ndarray, *, n_folds: int = 5,
                       seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """Cross-validated predictions of a regression: each row's value predicted by a ridge
    regression (`train.objectives.ridge_fit`, penalty by generalised cross-validation) fitted
    on the other folds; folds stratified by the values' quantile bins, a group's rows in one.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(60, 4))
        >>> oof = out_of_fold_values(x, x @ [1.0, 2.0, 0.0, -1.0])
        >>> bool(np.abs(oof - x @ [1.0, 2.0, 0.0, -1.0]).max() < 0.05)
        True
    """
    x, y = np.asarray(features, np.float64), np.asarray(values, np.float64)
    folds = stratified_fold_ids(value_strata(y)[0], n_folds, seed, groups)
    oof = np.empty(len(y))
    for fold in range(n_folds):
        held = folds == fold
        if held.any() and (~held).sum() >= 2:
            weight, bias, _ = ridge_fit(x[~held], y[~held])
            oof[held] = x[held] @ weight + bias
        else:
            oof[held] = y[~held].mean() if (~held).any() else y[held]
    return oof


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, *,
                              n_folds: int = 5, seed: int = 0,
                              class_weight: np.ndarray | None = None, epochs: int = 60,
                              lr: float = 1e-3, dropout: float = 0.2,
                              batch_size: int = 64,
                              groups: np.ndarray | None = None) -> np.ndarray:
    """Cross-validated class probabilities: each row is predicted by a head that never saw it.

    Stratified K-fold (`stratified_fold_ids`) over imagefit's head (dropout + linear), trained
    on the other folds with imagefit's own loop (Adam, weighted cross-entropy, `epochs` full
    epochs; nothing is held out, so the last epoch is used). Uncalibrated softmax: confident
    learning only compares probabilities within a column, which temperature scaling preserves.

    Args:
        features: (n, d) float features (e.g. bottleneck features of a frozen backbone).
        labels: (n,) int class of each row, in [0, n_classes).
        groups: (n,) group of each row, or None: a group's rows are predicted by a head that
            saw none of them (images of one patient teach each other their labels).
        n_classes: number of classes (columns of the result).
        n_folds: folds, at least 2.
        seed: seeds the folds, each fold's initialisation and dropout, and the batch order.
        class_weight: (n_classes,) cross-entropy weights, as in training; default unweighted.
        epochs, lr, dropout, batch_size: the head's training settings.

    Returns:
        (n, n_classes) float64 probabilities; each row sums to 1.

    Raises:
        ConfigError: a parameter or array shape is invalid.
        DatasetError: some fold has no rows to train on (every class has a single row).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 20)
        >>> x = (rng.normal(size=(40, 8)) + np.where(y[:, None] == 1, 1.5, -1.5)).astype(np.float32)
        >>> proba = out_of_fold_probabilities(x, y, 2, n_folds=4, epochs=20, lr=0.05)
        >>> proba.shape, bool((proba.argmax(axis=1) == y).mean() > 0.9)
        ((40, 2), True)
    """
    check_int("n_classes", n_classes, 2)
    for name, value, minimum in (("n_folds", n_folds, 2), ("seed", seed, 0),
                                 ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        check_int(name, value, minimum)
    check_scalar("lr", lr, 0, None, low_open=True)
    check_scalar("dropout", dropout, 0, 1, high_open=True)
    x = _check_matrix("features", features)
    y = _check_labels(labels, len(x), n_classes)
    if groups is not None and len(groups) != len(y):
        raise ConfigError(f"The 'groups' parameter must have one value per row ({len(y)}). "
                          f"Got {len(groups)} instead.")
    if class_weight is not None:
        class_weight = np.asarray(class_weight, dtype=np.float64)
        if class_weight.shape != (n_classes,):
            raise ConfigError(f"The 'class_weight' parameter must have shape ({n_classes},). "
                              f"Got shape {class_weight.shape} instead.")
    folds = stratified_fold_ids(y, n_folds, seed, groups=groups)
    if len(np.unique(folds)) == 1:
        # Every class has one row, so all rows sit in fold 0 and nothing is left to train on.
        raise DatasetError("Cross-validation needs rows outside each fold, but every class has "
                           "a single row. Use more rows per class.")
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    proba = np.zeros((len(y), n_classes), np.float64)
    settings = LoopSettings(epochs, lr, patience=10, stage="cv")
    threads = torch.get_num_threads()
    # One thread: a 64 x d batch is too small to split. For n=2000, d=1280 on 2 cores this took
    # 9.6 s vs 11.0 s with two threads when idle, and 13 s vs 146 s beside another busy process
    # (OpenMP hand-offs). It also keeps the result independent of the machine's core count.
    torch.set_num_threads(1)
    try:
        for fold in range(n_folds):
            test = np.flatnonzero(folds == fold)
            if len(test):
                train = torch.from_numpy(folds != fold)
                head = _fit_fold(xt[train], yt[train], n_classes, settings,
                                 seed=seed * 1_000 + fold, dropout=dropout,
                                 batch_size=batch_size, class_weight=class_weight)
                with torch.no_grad():
                    logits = head(xt[torch.from_numpy(test)]).double()
                proba[test] = torch.softmax(logits, dim=1).numpy()
    finally:
        torch.set_num_threads(threads)
    return proba


def out_of_fold_tag_probabilities(features: np.ndarray, tags: np.ndarray, *, n_folds: int = 5,
                                  seed: int = 0, epochs: int = 60, lr: float = 1e-3,
                                  dropout: float = 0.2, batch_size: int = 64,
                                  groups: np.ndarray | None = None) -> np.ndarray:
    """Cross-validated label probabilities of a multi-label set: each row predicted by a
    sigmoid head (dropout + linear, binary cross-entropy with the training's per-label
    positive weights, `objectives.MultiLabel.fitted`) trained on the other folds; folds
    stratified by each row's rarest label, a group's rows in one fold.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> tags = rng.random((60, 2)) < 0.5
        >>> x = (rng.normal(size=(60, 6)) + 2.0 * np.c_[tags, tags, tags] - 1).astype(np.float32)
        >>> oof = out_of_fold_tag_probabilities(x, tags, n_folds=3, epochs=30, lr=0.05)
        >>> bool(((oof >= 0.5) == tags).mean() > 0.85)
        True
    """
    for name, value, minimum in (("n_folds", n_folds, 2), ("seed", seed, 0),
                                 ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        check_int(name, value, minimum)
    x = _check_matrix("features", features)
    tags = np.asarray(tags, bool)
    if tags.shape[0] != len(x) or tags.ndim != 2:
        raise ConfigError(f"The 'tags' parameter must be a 0/1 matrix with one row per feature "
                          f"row ({len(x)}). Got shape {tags.shape} instead.")
    strata = rarest_tag(tags)
    folds = stratified_fold_ids(np.where(strata < 0, tags.shape[1], strata), n_folds, seed,
                                groups=groups)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(tags.astype(np.float32))
    proba = np.zeros(tags.shape, np.float64)
    settings = LoopSettings(epochs, lr, patience=10, stage="cv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as out_of_fold_probabilities: small batches
    try:
        for fold in range(n_folds):
            test = np.flatnonzero(folds == fold)
            if len(test) and (folds != fold).any():
                train = folds != fold
                objective = MultiLabel.fitted(tags[train])
                head = _fit_fold(xt[torch.from_numpy(train)], yt[torch.from_numpy(train)],
                                 tags.shape[1], settings, seed=seed * 1_000 + fold,
                                 dropout=dropout, batch_size=batch_size, class_weight=None,
                                 objective=objective)
                with torch.no_grad():
                    proba[test] = torch.sigmoid(head(xt[torch.from_numpy(test)]).double()).numpy()
            elif len(test):
                proba[test] = tags.mean(axis=0)
    finally:
        torch.set_num_threads(threads)
    return proba


@dataclass
class TagIssues:
    """Label issues of a multi-label set, most likely first: `rows`, `labels` (column),
    `missing` (True: the label is absent but looks present; False: given but looks absent)
    and `score` (the out-of-fold probability of the opposite of what was given)."""

    rows: np.ndarray
    labels: np.ndarray
    missing: np.ndarray
    score: np.ndarray


def find_tag_issues(tags: np.ndarray, pred_probs: np.ndarray) -> TagIssues:
    """Confident learning per label, as a binary problem (Northcutt et al., JAIR 2021): with
    t+ the mean out-of-fold probability over the rows given the label and t- the mean over
    the others, a row without the label whose probability reaches t+ probably misses it, and
    a row with it whose probability is at most t- probably has it wrongly. Ranked by the
    probability of the opposite of what was given.

    Example:
        >>> tags = np.array([[1], [1], [1], [0], [0], [0]])
        >>> p = np.array([[0.9], [0.8], [0.1], [0.2], [0.1], [0.95]])
        >>> found = find_tag_issues(tags, p)
        >>> found.rows.tolist(), found.missing.tolist()
        ([5, 2], [True, False])
    """
    tags, p = np.asarray(tags, bool), np.asarray(pred_probs, np.float64)
    found = []
    for j in range(tags.shape[1]):
        given, absent = tags[:, j], ~tags[:, j]
        if not given.any() or not absent.any():
            continue
        t_pos, t_neg = p[given, j].mean(), p[absent, j].mean()
        if t_pos <= t_neg:  # the label is not learnt: its probabilities say nothing
            continue
        found += [(r, j, True, p[r, j]) for r in np.flatnonzero(absent & (p[:, j] >= t_pos))]
        found += [(r, j, False, 1 - p[r, j]) for r in np.flatnonzero(given & (p[:, j] <= t_neg))]
    found.sort(key=lambda item: -item[3])
    columns = list(zip(*found)) if found else [[], [], [], []]
    return TagIssues(np.array(columns[0], np.int64), np.array(columns[1], np.int64),
                     np.array(columns[2], bool), np.array(columns[3], np.float64))


def _fit_fold(x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: LoopSettings, *,
              seed: int, dropout: float, batch_size: int,
              class_weight: np.ndarray | None, objective=None) -> torch.nn.Module:
    """Train one fold's head with imagefit's loop; return it in eval mode, last epoch's weights."""
    # A private generator state: seeding must not reset the caller's global RNG streams.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head(x.shape[1], n_classes, dropout)

        order = shuffled_indices(len(y), seed)

        def batches(epoch: int, first: int):
            for rows in torch.from_numpy(order(epoch)).split(batch_size)[first:]:
                yield x[rows], y[rows]

        # Nothing is held out: with empty targets fit_loop runs every epoch and keeps the last.
        no_targets = np.zeros((0, n_classes) if objective is not None else 0,
                              np.float32 if objective is not None else np.int64)
        fit_loop(head, batches, lambda: torch.zeros(0, n_classes), no_targets,
                 n_classes, settings, step_settings=StepSettings(class_weight=class_weight,
                                                                 objective=objective))
    return head.eval()


def compute_confident_joint(labels: np.ndarray, pred_probs: np.ndarray, *,
                            calibrate: bool = True) -> np.ndarray:
    """The confident joint of confident learning (Northcutt et al., JAIR 2021).

    Class j's threshold t_j is the mean probability of j over the rows labelled j. A row
    labelled i counts in C[i][j] when p_j >= t_j, j being the most probable class among those
    above their threshold; rows above no threshold are not counted. Calibrated (the default),
    each row is rescaled to the number of rows labelled i and rounded preserving that total.

    Args:
        labels: (n,) int given labels, in [0, k).
        pred_probs: (n, k) out-of-sample probabilities.
        calibrate: rescale to the label counts.

    Returns:
        (k, k) int64 counts, given label in rows, likely true label in columns. A class with no
        rows has no threshold: nothing is counted into it, and its row is zero.

    Example:
        >>> p = np.array([[.9, .1], [.8, .2], [.3, .7], [.2, .8], [.9, .1]])
        >>> compute_confident_joint(np.array([0, 0, 1, 1, 1]), p).tolist()
        [[2, 0], [1, 2]]
    """
    probs = _check_probs(pred_probs)
    y = _check_labels(labels, len(probs), probs.shape[1])
    k = probs.shape[1]
    counts = np.bincount(y, minlength=k)
    thresholds = np.full(k, np.inf)
    present = counts > 0
    sums = np.zeros(k)
    np.add.at(sums, y, probs[np.arange(len(y)), y])
    thresholds[present] = sums[present] / counts[present]
    # The tolerance keeps a row sitting exactly on a mean (e.g. all rows of a class equal)
    # from dropping out through float rounding of that mean; cleanlab uses the same 1e-6.
    above = probs >= thresholds - 1e-6
    counted = above.any(axis=1)
    guess = np.where(above, probs, -np.inf).argmax(axis=1)
    joint = np.zeros((k, k), np.int64)
    np.add.at(joint, (y[counted], guess[counted]), 1)
    # Every class keeps at least one correctly labelled row (as in the paper and cleanlab):
    # it keeps each row's total positive, so calibration never divides by zero.
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    if not calibrate:
        return joint
    scaled = joint / joint.sum(axis=1, keepdims=True) * counts[:, None]
    return np.stack([_round_preserving_sum(row) for row in scaled])


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray, *,
                      rank_by: str = "self_confidence") -> LabelIssues:
    """Rows that are probably mislabelled, by confident learning ("prune by noise rate").

    For each off-diagonal cell (i, j) of the calibrated confident joint (see
    `compute_confident_joint`), the C[i][j] rows labelled i with the largest margin
    p_j - p_i are flagged (cleanlab's `filter_by="prune_by_noise_rate"`). A class with a single
    row is never pruned, and every class keeps at least one row. Flagged rows are ranked by
    self-confidence p[given], lowest first (cleanlab's default), or by normalised margin.

    Args:
        labels: (n,) int given labels, in [0, k).
        pred_probs: (n, k) out-of-sample probabilities, e.g. from `out_of_fold_probabilities`
            (in-sample probabilities hide the errors a model has memorised).
        rank_by: "self_confidence" or "normalized_margin".

    Returns:
        `LabelIssues`, empty arrays when nothing is flagged.

    Example:
        >>> p = np.array([[.9, .1], [.8, .2], [.9, .1], [.3, .7], [.2, .8], [.1, .9]])
        >>> issues = find_label_issues(np.array([0, 0, 1, 1, 1, 1]), p)
        >>> issues.indices.tolist(), issues.suggested.tolist(), issues.score.round(2).tolist()
        ([2], [0], [0.9])
    """
    if rank_by not in RANK_BY:
        raise ConfigError(f"The 'rank_by' parameter must be one of {list(RANK_BY)}. "
                          f"Got {rank_by!r} instead.")
    probs = _check_probs(pred_probs)
    y = _check_labels(labels, len(probs), probs.shape[1])
    joint = compute_confident_joint(y, probs)
    counts = np.bincount(y, minlength=probs.shape[1])
    flagged = np.zeros(len(y), bool)
    for i in np.flatnonzero(counts > 1):
        prune = _leave_one(joint[i], i, counts[i])
        rows = np.flatnonzero(y == i)
        for j in np.flatnonzero(prune):
            margin = probs[rows, j] - probs[rows, i]
            # Stable sort: equal margins are taken in row order, so results are reproducible.
            flagged[rows[np.argsort(-margin, kind="stable")[:prune[j]]]] = True
    indices = np.flatnonzero(flagged)
    self_conf = probs[indices, y[indices]]
    others = probs[indices].copy()
    others[np.arange(len(indices)), y[indices]] = -np.inf
    suggested = others.argmax(axis=1)
    margin = (self_conf - others.max(axis=1, initial=-np.inf) + 1.0) / 2.0
    quality = self_conf if rank_by == "self_confidence" else margin
    order = np.argsort(quality, kind="stable")
    return LabelIssues(indices=indices[order].astype(np.int64),
                       suggested=suggested[order].astype(np.int64),
                       score=np.clip(1.0 - quality[order], 0.0, 1.0),
                       normalized_margin=margin[order], confident_joint=joint)


def self_confidence_ranking(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Every row index, by the probability of its given label, lowest first (ties: row order).

    The plain baseline for `find_label_issues`: its top k are the k least self-confident rows.

    Args:
        labels: (n,) int given labels, in [0, k).
        pred_probs: (n, k) probabilities.

    Returns:
        (n,) int64 row indices.

    Example:
        >>> self_confidence_ranking(np.array([0, 1, 1]), np.array([[.6, .4], [.9, .1], [.2, .8]]))
        array([1, 0, 2])
    """
    probs = _check_probs(pred_probs)
    y = _check_labels(labels, len(probs), probs.shape[1])
    return np.argsort(probs[np.arange(len(y)), y], kind="stable").astype(np.int64)


# -- duplicates ---------------------------------------------------------------------------------

def exact_duplicate_groups(hashes: np.ndarray) -> list[np.ndarray]:
    """Groups of rows with identical content hashes (e.g. `ImageIndex.sha256`).

    Args:
        hashes: (n,) hash strings; empty strings (no hash known) are never grouped.

    Returns:
        One ascending int64 index array per hash shared by two or more rows, in order of
        first occurrence.

    Example:
        >>> exact_duplicate_groups(np.array(["b", "a", "b", "c", "a", "b"]))
        [array([0, 2, 5]), array([1, 4])]
    """
    hashes = as_text(hashes)
    if hashes.ndim != 1:
        raise ConfigError(f"The 'hashes' parameter must be a 1-D array. "
                          f"Got shape {hashes.shape} instead.")
    _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1]) if len(hashes) else []
    groups = [(first[u], m.astype(np.int64)) for u, m in enumerate(members)
              if counts[u] >= 2 and hashes[first[u]] != ""]
    return [m for _, m in sorted(groups, key=lambda g: g[0])]


def near_duplicate_pairs(embeddings: np.ndarray, *, threshold: float = NEAR_DUPLICATE_THRESHOLD,
                         block: int = 2048) -> np.ndarray:
    """Pairs of rows whose embeddings have cosine similarity >= `threshold`.

    Similarities are float32 dot products of L2-normalised rows, computed `block` rows at a
    time against the rows after them, so memory is O(n * d + block * n), not O(n^2). The
    threshold is compared in float32 too. An all-zero row (e.g. a failed image) matches nothing.

    Args:
        embeddings: (n, d) embeddings, e.g. backbone features.
        threshold: cosine similarity in [-1, 1]; the default is measured for imagefit's
            EfficientNet-Lite0 features (see `NEAR_DUPLICATE_THRESHOLD`).
        block: rows per block.

    Returns:
        (m, 3) float64 rows (i, j, similarity) with i < j, most similar first (ties: by i,
        then j); `pairs[:, :2].astype(int)` gives the indices.

    Example:
        >>> e = np.array([[1, 0], [0.99, 0.1], [0, 1]], np.float32)
        >>> near_duplicate_pairs(e, threshold=0.95).round(3)
        array([[0.   , 1.   , 0.995]])
    """
    check_scalar("threshold", threshold, -1, 1)
    check_int("block", block, 1)
    x = _check_matrix("embeddings", embeddings)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    valid = norms[:, 0] > 0
    has_zero_rows = not valid.all()
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    limit = np.float32(threshold)
    found_i, found_j, found_s = [], [], []
    n = len(unit)
    for start in range(0, n, block):
        stop = min(start + block, n)
        # Only the rows from `start` on: pairs with earlier rows were found in earlier blocks.
        sims = unit[start:stop] @ unit[start:].T
        keep = sims >= limit
        if has_zero_rows:
            # A zero row has no direction; with threshold <= 0 it would match everything.
            keep &= valid[start:stop, None] & valid[None, start:]
        # Column c is row start + c: inside the block's own square keep c > r (i < j, no i == i).
        keep[:, :stop - start] = np.triu(keep[:, :stop - start], k=1)
        r, c = np.nonzero(keep)
        found_i.append(r + start)
        found_j.append(c + start)
        found_s.append(sims[r, c])
    if not found_i:
        return np.zeros((0, 3), np.float64)
    i, j, s = (np.concatenate(a) for a in (found_i, found_j, found_s))
    order = np.lexsort((j, i, -s))
    return np.column_stack([i[order], j[order], s[order]]).astype(np.float64)


def group_pairs(pairs: np.ndarray, n: int) -> list[np.ndarray]:
    """Connected components of a pair graph (union-find), e.g. of `near_duplicate_pairs`.

    Args:
        pairs: (m, 2) or (m, 3) array; the first two columns are row indices in [0, n).
        n: number of rows.

    Returns:
        Components of two or more rows, each an ascending int64 array, ordered by their
        smallest row.

    Example:
        >>> group_pairs(np.array([[3, 4, .99], [0, 2, .98], [2, 5, .97]]), 6)
        [array([0, 2, 5]), array([3, 4])]
    """
    check_int("n", n, 0)
    edges = _pair_indices(pairs, n)
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving keeps the trees shallow
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(a) for a in range(n)], dtype=np.int64)
    _, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1]) if n else []
    # Roots are each component's smallest row, so np.unique's order is by smallest row.
    return [m.astype(np.int64) for u, m in enumerate(members) if counts[u] >= 2]


def classify_duplicate_pairs(pairs_or_groups: np.ndarray | Sequence[np.ndarray],
                             labels: np.ndarray, subsets: np.ndarray | None = None) -> dict:
    """Sort duplicate pairs into same-class, label-conflict and leakage pairs.

    A pair within one class is redundant; across classes it is a label conflict (the same
    image cannot be both); across subsets (e.g. "train" and "val"/"test") it is leakage, which
    inflates held-out scores. Leakage is counted independently of the class split.

    Args:
        pairs_or_groups: (m, 2) or (m, 3) pairs (e.g. from `near_duplicate_pairs`), or a list
            of groups (e.g. from `exact_duplicate_groups`), each expanded to all its pairs.
        labels: (n,) class of each row (ints or names).
        subsets: (n,) subset of each row ("train", "val", ...); None means one subset.

    Returns:
        dict with counts "n_pairs", "same_class", "label_conflict", "leakage" and (k, 2) int64
        arrays of (i, j) pairs "same_class_pairs", "label_conflict_pairs", "leakage_pairs", in
        input order.

    Example:
        >>> out = classify_duplicate_pairs([np.array([0, 1, 2])], np.array(["a", "a", "b"]),
        ...                                np.array(["train", "val", "train"]))
        >>> out["same_class"], out["label_conflict"], out["leakage"]
        (1, 2, 2)
        >>> out["leakage_pairs"].tolist()
        [[0, 1], [1, 2]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"The 'labels' parameter must be a 1-D array. "
                          f"Got shape {labels.shape} instead.")
    n = len(labels)
    if subsets is not None:
        subsets = np.asarray(subsets)
        if subsets.shape != labels.shape:
            raise ConfigError(f"The 'subsets' parameter must have shape {labels.shape} like "
                              f"'labels'. Got shape {subsets.shape} instead.")
    if isinstance(pairs_or_groups, (list, tuple)):
        expanded = []
        for group in pairs_or_groups:
            g = np.asarray(group, dtype=np.int64)
            a, b = np.triu_indices(len(g), k=1)
            expanded.append(np.column_stack([g[a], g[b]]))
        edges = _pair_indices(np.concatenate(expanded) if expanded else np.zeros((0, 2)), n)
    else:
        edges = _pair_indices(pairs_or_groups, n)
    i, j = edges[:, 0], edges[:, 1]
    same = labels[i] == labels[j]
    leak = (subsets[i] != subsets[j]) if subsets is not None else np.zeros(len(edges), bool)
    return {"n_pairs": len(edges), "same_class": int(same.sum()),
            "label_conflict": int((~same).sum()), "leakage": int(leak.sum()),
            "same_class_pairs": edges[same], "label_conflict_pairs": edges[~same],
            "leakage_pairs": edges[leak]}


# -- helpers ------------------------------------------------------------------------------------

def _round_preserving_sum(row: np.ndarray) -> np.ndarray:
    """Round to ints summing to round(row.sum()): floor, then +1 on the largest remainders."""
    floors = np.floor(row)
    short = int(round(row.sum() - floors.sum()))
    # Stable order: equal remainders go to the lower class index, reproducibly.
    floors[np.argsort(-(row - floors), kind="stable")[:short]] += 1
    return floors.astype(np.int64)


def _leave_one(joint_row: np.ndarray, i: int, count: int) -> np.ndarray:
    """Off-diagonal prune counts of class i, cut so that at least one row of i is kept."""
    prune = joint_row.copy()
    prune[i] = 0
    while prune.sum() > count - 1:
        prune[np.argmax(prune)] -= 1
    return prune


def _check_matrix(name: str, value) -> np.ndarray:
    """A finite 2-D float32 array, or a ConfigError naming the parameter."""
    x = np.asarray(value, dtype=np.float32)
    if x.ndim != 2:
        raise ConfigError(f"The '{name}' parameter must be a 2-D array of shape (n, d). "
                          f"Got shape {x.shape} instead.")
    if not np.isfinite(x).all():
        raise ConfigError(f"The '{name}' parameter must be finite. Got NaN or infinite "
                          f"values instead.")
    return x


def _check_probs(pred_probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ConfigError(f"The 'pred_probs' parameter must be a 2-D array of shape (n, k) with "
                          f"k >= 2. Got shape {probs.shape} instead.")
    if not np.isfinite(probs).all():
        raise ConfigError("The 'pred_probs' parameter must be finite. Got NaN or infinite "
                          "values instead.")
    return probs


def _check_labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ConfigError(f"The 'labels' parameter must have shape ({n},). "
                          f"Got shape {y.shape} instead.")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ConfigError(f"The 'labels' parameter must hold ints in [0, {k}). "
                          f"Got {y.dtype} values in [{y.min()}, {y.max()}] instead.")
    return y.astype(np.int64)


def _pair_indices(pairs: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ConfigError(f"The 'pairs' parameter must be a 2-D array of shape (m, 2) or (m, 3). "
                          f"Got shape {p.shape} instead.")
    edges = p[:, :2].astype(np.int64)
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        raise ConfigError(f"The 'pairs' parameter must hold row indices in [0, {n}). "
                          f"Got values in [{edges.min()}, {edges.max()}] instead.")
    return edges
