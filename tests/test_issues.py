"""Dataset-issue analysis from arrays: confident learning finds planted label flips, out-of-fold
probabilities never come from a model that saw the row, and the block-wise near-duplicate
search equals the brute-force O(n^2) one."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from imagefit.errors import ConfigError, DatasetError
from imagefit.evaluation import issues
from imagefit.evaluation.issues import (
    NEAR_DUPLICATE_THRESHOLD,
    LabelIssues,
    classify_duplicate_pairs,
    compute_confident_joint,
    exact_duplicate_groups,
    find_label_issues,
    group_pairs,
    near_duplicate_pairs,
    out_of_fold_probabilities,
    self_confidence_ranking,
    stratified_fold_ids,
)
from imagefit.models.net import make_head
from imagefit.train.engine import LoopSettings, fit_loop
from imagefit.train.loader import shuffled_indices


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _noisy_case(seed: int = 0, n: int = 400, k: int = 4, n_flips: int = 10):
    """Probabilities a decent model would give for the TRUE labels; then some labels flipped."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k))
    logits[np.arange(n), truth] += 4.0
    proba = _softmax(logits)
    flipped = np.sort(rng.choice(n, n_flips, replace=False))
    given = truth.copy()
    given[flipped] = (truth[flipped] + rng.integers(1, k, n_flips)) % k
    return truth, given, proba, flipped


def test_docstring_examples_run():
    result = doctest.testmod(issues, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0


# -- confident learning ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finds_planted_flips_and_suggests_the_true_label(seed):
    truth, given, proba, flipped = _noisy_case(seed)
    found = find_label_issues(given, proba)
    hits = np.intersect1d(found.indices, flipped)
    assert len(hits) / len(flipped) >= 0.8                      # recall
    assert len(hits) / max(len(found.indices), 1) >= 0.8        # precision
    position = {row: i for i, row in enumerate(found.indices)}
    for row in hits:
        assert found.suggested[position[row]] == truth[row]
    # The planted flips are the least self-confident rows: they lead the ranking.
    top = found.indices[:len(hits)]
    assert len(np.intersect1d(top, flipped)) >= 0.8 * len(hits)


def test_clean_confident_data_has_no_issues():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 30)
    proba = np.full((90, 3), 0.05)
    proba[np.arange(90), y] = 0.9
    proba[np.arange(90), y] += rng.uniform(-0.02, 0.02, 90)    # rows differ, nothing crosses
    proba /= proba.sum(axis=1, keepdims=True)
    found = find_label_issues(y, proba)
    assert isinstance(found, LabelIssues) and len(found) == 0
    for name in ("indices", "suggested", "score", "normalized_margin"):
        assert getattr(found, name).shape == (0,)
    assert found.indices.dtype == np.int64 and found.suggested.dtype == np.int64
    assert np.array_equal(found.confident_joint, np.diag([30, 30, 30]))


def test_ranking_and_scores():
    _, given, proba, _ = _noisy_case(4, n_flips=25)
    found = find_label_issues(given, proba)
    p_given = proba[found.indices, given[found.indices]]
    assert np.all(np.diff(p_given) >= 0)                        # lowest self-confidence first
    assert np.allclose(found.score, 1 - p_given)
    assert np.all((found.score >= 0) & (found.score <= 1))
    others = proba[found.indices].copy()
    others[np.arange(len(others)), given[found.indices]] = -1
    assert np.array_equal(found.suggested, others.argmax(axis=1))
    assert np.all(found.suggested != given[found.indices])
    assert np.allclose(found.normalized_margin, (p_given - others.max(axis=1) + 1) / 2)

    by_margin = find_label_issues(given, proba, rank_by="normalized_margin")
    assert set(by_margin.indices) == set(found.indices)
    assert np.all(np.diff(by_margin.normalized_margin) >= 0)
    assert np.allclose(by_margin.score, 1 - by_margin.normalized_margin)


def test_self_confidence_ranking_is_stable_argsort():
    y = np.array([0, 1, 0, 1, 2])
    proba = np.array([[.5, .3, .2], [.1, .8, .1], [.3, .5, .2], [.6, .3, .1], [.3, .2, .5]])
    assert self_confidence_ranking(y, proba).tolist() == [2, 3, 0, 4, 1]  # .3 .3 .5 .5 .8


def test_confident_joint_shape_sum_and_raw_counts():
    truth, given, proba, _ = _noisy_case(5, n=300, k=5)
    joint = compute_confident_joint(given, proba)
    assert joint.shape == (5, 5) and joint.dtype == np.int64
    assert joint.sum() == 300
    assert np.array_equal(joint.sum(axis=1), np.bincount(given, minlength=5))
    raw = compute_confident_joint(given, proba, calibrate=False)
    # Brute force: thresholds, then each row's most probable class among those above theirs.
    t = np.array([proba[given == j, j].mean() for j in range(5)])
    expected = np.zeros((5, 5), int)
    for row, label in zip(proba, given):
        above = np.flatnonzero(row >= t - 1e-6)
        if len(above):
            expected[label, above[np.argmax(row[above])]] += 1
    np.fill_diagonal(expected, np.maximum(expected.diagonal(), 1))
    assert np.array_equal(raw, expected)


def test_flags_the_union_of_each_cells_largest_margins():
    _, given, proba, _ = _noisy_case(6, n=500, k=3, n_flips=30)
    found = find_label_issues(given, proba)
    joint = found.confident_joint
    expected = set()
    for i in range(3):
        rows = np.flatnonzero(given == i)
        for j in range(3):
            if j != i and joint[i, j]:
                margin = proba[rows, j] - proba[rows, i]
                expected |= set(rows[np.argsort(-margin)[:joint[i, j]]].tolist())
    assert set(found.indices.tolist()) == expected
    # A row can top two cells of its class, so there may be fewer rows than off-diagonal counts.
    assert 0 < len(found) <= joint.sum() - np.trace(joint)


def test_absent_class_is_skipped():
    _, given, proba, _ = _noisy_case(7, n=300, k=4)
    keep = given != 3
    given, proba = given[keep], proba[keep]
    found = find_label_issues(given, proba)                     # class 3 has no rows
    assert found.confident_joint.shape == (4, 4)
    assert not found.confident_joint[3].any() and not found.confident_joint[:, 3].any()
    assert found.confident_joint.sum() == len(given)
    assert len(found) > 0


def test_a_single_row_class_is_never_pruned():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    proba = np.array([[.8, .1, .1], [.7, .2, .1], [.8, .1, .1], [.7, .1, .2],
                      [.1, .8, .1], [.1, .7, .2], [.2, .7, .1], [.8, .1, .1]])
    found = find_label_issues(y, proba)
    assert 7 not in found.indices            # looks like class 0, but it is class 2's only row


# -- out-of-fold probabilities --------------------------------------------------------------------

def test_stratified_folds_cover_every_row_once():
    y = np.array([0] * 23 + [1] * 10 + [2] * 3 + [3] * 1)
    folds = stratified_fold_ids(y, n_folds=5, seed=1)
    assert folds.shape == y.shape and set(folds) <= set(range(5))
    assert sum((folds == f).sum() for f in range(5)) == len(y)   # each row in exactly one fold
    for c in range(4):
        per_fold = np.bincount(folds[y == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1               # stratified
        assert np.all(np.diff(per_fold) <= 0)                     # leftovers fill the first folds
    assert np.array_equal(folds, stratified_fold_ids(y, n_folds=5, seed=1))
    assert not np.array_equal(folds, stratified_fold_ids(y, n_folds=5, seed=2))


def _blobs(seed=0, n=120, d=16, k=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(0, 1.5, (k, d))
    return (centres[y] + rng.normal(0, 1.0, (n, d))).astype(np.float32), y


def test_oof_shapes_sums_and_determinism():
    x, y = _blobs()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    a = out_of_fold_probabilities(x, y, 3, n_folds=4, epochs=15, lr=1e-2, seed=0)
    assert torch.equal(torch.rand(3), before)                    # caller's RNG stream untouched
    assert torch.get_num_threads() == threads
    assert a.shape == (120, 3) and a.dtype == np.float64
    assert np.allclose(a.sum(axis=1), 1.0) and np.all(a >= 0)
    assert (a.argmax(axis=1) == y).mean() > 0.9
    assert np.array_equal(a, out_of_fold_probabilities(x, y, 3, n_folds=4, epochs=15, lr=1e-2))
    assert not np.allclose(a, out_of_fold_probabilities(x, y, 3, n_folds=4, epochs=15, lr=1e-2,
                                                        seed=1))
    weighted = out_of_fold_probabilities(x, y, 3, n_folds=4, epochs=15, lr=1e-2,
                                         class_weight=np.array([1.0, 1.0, 5.0]))
    assert weighted[:, 2].mean() > a[:, 2].mean()                # class weights are applied


def test_oof_uses_the_last_epoch():
    x, y = _blobs(1)
    one = out_of_fold_probabilities(x, y, 3, n_folds=3, epochs=1, lr=1e-2)
    many = out_of_fold_probabilities(x, y, 3, n_folds=3, epochs=20, lr=1e-2)
    p_one, p_many = (p[np.arange(len(y)), y].mean() for p in (one, many))
    assert p_many > p_one + 0.1


def test_oof_rows_come_from_a_model_that_did_not_see_them():
    # One-hot identity features: a row's weight column only learns from that row, so a model
    # that saw a row memorises its (random) label, and one that did not knows nothing about it.
    n, k = 60, 3
    y = np.random.default_rng(0).integers(0, k, n)
    x = np.eye(n, dtype=np.float32)
    torch.manual_seed(0)
    head = make_head(n, k, 0.0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    fit_loop(head, lambda e, first: ((xt[b], yt[b]) for b in torch.from_numpy(shuffled_indices(n, 0)(e)).split(16)[first:]),
             lambda: torch.zeros(0, k), np.zeros(0, np.int64), k, LoopSettings(40, 0.05, 10, "t"))
    with torch.no_grad():
        seen = torch.softmax(head(xt), dim=1).numpy()[np.arange(n), y]
    assert seen.min() > 0.9                                      # memorised
    oof = out_of_fold_probabilities(x, y, k, n_folds=5, epochs=40, lr=0.05, dropout=0.0,
                                    batch_size=16)[np.arange(n), y]
    assert oof.max() < 0.6 and oof.mean() < 0.45                 # about the class prior


def test_oof_small_classes_and_single_row_classes():
    x, y = _blobs(2, n=40)
    y = y.copy()
    y[:2] = 3                                                    # a class of 2 rows, 5 folds
    p = out_of_fold_probabilities(x, y, 4, n_folds=5, epochs=5)
    assert p.shape == (40, 4) and np.allclose(p.sum(axis=1), 1)
    with pytest.raises(DatasetError, match="single row"):
        out_of_fold_probabilities(x[:3], np.array([0, 1, 2]), 3, epochs=1)


# -- duplicates -----------------------------------------------------------------------------------

def test_exact_duplicate_groups():
    hashes = np.array(["c", "a", "b", "a", "", "c", "", "d", "a"])
    groups = exact_duplicate_groups(hashes)
    # In order of first occurrence; "" (no hash) is never a group.
    assert [g.tolist() for g in groups] == [[0, 5], [1, 3, 8]]
    assert all(g.dtype == np.int64 for g in groups)
    assert exact_duplicate_groups(np.array(["x", "y"])) == []
    assert exact_duplicate_groups(np.array([], dtype=str)) == []


def _brute_force(x, threshold):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit.astype(np.float64) @ unit.astype(np.float64).T
    i, j = np.triu_indices(len(x), k=1)
    return {(a, b): s for a, b, s in zip(i, j, sims[i, j]) if s >= threshold}, sims


@pytest.mark.parametrize("block", [1, 7, 16, 50, 64, 2048])
def test_near_duplicate_pairs_equal_brute_force(block):
    rng = np.random.default_rng(8)
    base = rng.normal(size=(20, 6))
    x = np.concatenate([base, base[rng.integers(0, 20, 30)] + rng.normal(0, 0.3, (30, 6))])
    threshold = 0.8
    pairs = near_duplicate_pairs(x, threshold=threshold, block=block)
    expected, sims = _brute_force(x, threshold)
    got = {(int(a), int(b)): s for a, b, s in pairs}
    # Float32 blocks may round a pair within 1e-5 of the threshold either way; nothing else.
    differ = set(got) ^ set(expected)
    assert all(abs(sims[a, b] - threshold) < 1e-5 for a, b in differ)
    assert len(expected) > 20
    for (a, b), s in got.items():
        assert a < b and s == pytest.approx(sims[a, b], abs=1e-5)
    assert np.all(np.diff(pairs[:, 2]) <= 0)                     # most similar first
    assert pairs.shape[1] == 3 and pairs.dtype == np.float64


def test_near_duplicate_threshold_is_inclusive_and_self_pairs_are_skipped():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    x[7] = x[2] * 3.0                                             # same direction
    x[10] = 0.0                                                   # a failed image
    x[11] = 0.0
    pairs = near_duplicate_pairs(x, threshold=0.0, block=5)
    assert len(pairs) > 0 and np.all(pairs[:, 0] < pairs[:, 1])
    assert not np.isin(pairs[:, :2], [10, 11]).any()            # zero rows match nothing
    top = near_duplicate_pairs(x, threshold=0.999)
    assert top[:, :2].tolist() == [[2, 7]]
    s = np.float32(pairs[5, 2])
    at = near_duplicate_pairs(x, threshold=float(s), block=5)
    above = near_duplicate_pairs(x, threshold=float(np.nextafter(s, np.float32(2))), block=5)
    key = tuple(pairs[5, :2])
    assert key in {tuple(p) for p in at[:, :2]}                   # >=, not >
    assert key not in {tuple(p) for p in above[:, :2]}
    assert near_duplicate_pairs(np.zeros((0, 4))).shape == (0, 3)
    assert 0.5 < NEAR_DUPLICATE_THRESHOLD < 1.0


def test_group_pairs_components():
    pairs = np.array([[5, 6, .99], [0, 3, .98], [3, 9, .97], [9, 0, .96], [1, 2, .95]])
    groups = group_pairs(pairs, 10)
    assert [g.tolist() for g in groups] == [[0, 3, 9], [1, 2], [5, 6]]
    assert group_pairs(np.zeros((0, 3)), 4) == []
    assert [g.tolist() for g in group_pairs(np.array([[2, 1]]), 3)] == [[1, 2]]


def test_classify_duplicate_pairs():
    labels = np.array(["cat", "cat", "dog", "dog", "cat"])
    subsets = np.array(["train", "test", "train", "val", "train"])
    pairs = np.array([[0, 1, .99], [0, 2, .98], [2, 3, .97], [0, 4, .96]])
    out = classify_duplicate_pairs(pairs, labels, subsets)
    counts = (out["n_pairs"], out["same_class"], out["label_conflict"], out["leakage"])
    assert counts == (4, 3, 1, 2)
    assert out["same_class_pairs"].tolist() == [[0, 1], [2, 3], [0, 4]]
    assert out["label_conflict_pairs"].tolist() == [[0, 2]]
    assert out["leakage_pairs"].tolist() == [[0, 1], [2, 3]]
    grouped = classify_duplicate_pairs([np.array([0, 1, 4]), np.array([2, 3])], labels, subsets)
    assert (grouped["n_pairs"], grouped["same_class"], grouped["leakage"]) == (4, 4, 3)
    alone = classify_duplicate_pairs(pairs, labels)
    assert alone["leakage"] == 0 and alone["leakage_pairs"].shape == (0, 2)
    empty = classify_duplicate_pairs([], labels, subsets)
    assert empty["n_pairs"] == 0 and empty["same_class_pairs"].shape == (0, 2)


# -- parameter validation -------------------------------------------------------------------------

@pytest.mark.parametrize("call,message", [
    (lambda: stratified_fold_ids(np.zeros(4, int), n_folds=1),
     "The 'n_folds' parameter must be an int >= 2. Got 1 instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.zeros(4, int), 2, epochs=0),
     "The 'epochs' parameter must be an int >= 1. Got 0 instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.zeros(4, int), 2, lr=0.0),
     "The 'lr' parameter must be a float > 0. Got 0.0 instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.zeros(4, int), 2, dropout=1.0),
     "The 'dropout' parameter must be a float in [0, 1). Got 1.0 instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.zeros(4, int), 1),
     "The 'n_classes' parameter must be an int >= 2. Got 1 instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.array([0, 1, 2, 0]), 2),
     "The 'labels' parameter must hold ints in [0, 2). Got int64 values in [0, 2] instead."),
    (lambda: out_of_fold_probabilities(np.zeros(4), np.zeros(4, int), 2),
     "The 'features' parameter must be a 2-D array of shape (n, d). Got shape (4,) instead."),
    (lambda: out_of_fold_probabilities(np.zeros((4, 2)), np.zeros(4, int), 2,
                                       class_weight=np.ones(3)),
     "The 'class_weight' parameter must have shape (2,). Got shape (3,) instead."),
    (lambda: find_label_issues(np.zeros(3, int), np.zeros((4, 2))),
     "The 'labels' parameter must have shape (4,). Got shape (3,) instead."),
    (lambda: find_label_issues(np.zeros(3, int), np.zeros(3)),
     "The 'pred_probs' parameter must be a 2-D array of shape (n, k) with k >= 2. "
     "Got shape (3,) instead."),
    (lambda: find_label_issues(np.zeros(2, int), np.full((2, 2), .5), rank_by="entropy"),
     "The 'rank_by' parameter must be one of ['self_confidence', 'normalized_margin']. "
     "Got 'entropy' instead."),
    (lambda: near_duplicate_pairs(np.zeros((3, 2)), threshold=1.5),
     "The 'threshold' parameter must be a float in [-1, 1]. Got 1.5 instead."),
    (lambda: near_duplicate_pairs(np.zeros((3, 2)), block=0),
     "The 'block' parameter must be an int >= 1. Got 0 instead."),
    (lambda: near_duplicate_pairs(np.full((3, 2), np.nan)),
     "The 'embeddings' parameter must be finite. Got NaN or infinite values instead."),
    (lambda: group_pairs(np.array([[0, 5]]), 3),
     "The 'pairs' parameter must hold row indices in [0, 3). Got values in [0, 5] instead."),
    (lambda: classify_duplicate_pairs(np.array([[0, 1]]), np.zeros(2), np.zeros(3)),
     "The 'subsets' parameter must have shape (2,) like 'labels'. Got shape (3,) instead."),
])
def test_parameter_validation(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message
