"""Imbalance corrections: class weights against scikit-learn, logit adjustment, the "auto" rule,
and the balanced sampler's shares, cycling, under-sampling, determinism and rank split.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from imagefit.data import sampling
from imagefit.data.sampling import (
    AUTO_IMBALANCE_RATIO,
    AUTO_SAMPLER_RATIO,
    BalancedSampler,
    balanced_class_weights,
    class_weights,
    effective_number_weights,
    logit_adjustment,
    resolve_balance,
    stacked_correction_warning,
)
from imagefit.errors import ConfigError

CLASSES = ["cat", "dog", "owl"]


def labels_for(counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_docstring_examples():
    result = doctest.testmod(sampling, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 8 and result.failed == 0


# -- the "auto" rule ----------------------------------------------------------------------------

def test_resolve_balance_auto_thresholds():
    assert (AUTO_IMBALANCE_RATIO, AUTO_SAMPLER_RATIO) == (1.5, 10.0)
    assert resolve_balance("auto", np.array([15, 10])) == "none"      # exactly 1.5
    assert resolve_balance("auto", np.array([16, 10])) == "weights"   # 1.6
    assert resolve_balance("auto", np.array([100, 10, 50])) == "weights"  # exactly 10
    assert resolve_balance("auto", np.array([101, 10])) == "sampler"  # 10.1
    assert resolve_balance("auto", np.array([1000, 0, 10])) == "sampler"  # empty class ignored
    assert resolve_balance("sampler", np.array([10, 10])) == "sampler"
    assert resolve_balance("none", np.array([1000, 1])) == "none"


@pytest.mark.parametrize("bad", ["x", "AUTO", "", None, "balanced", "samplers"])
def test_resolve_balance_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match=r"'balance' parameter must be one of \['auto', "
                                          r"'weights', 'sampler', 'none'\]"):
        resolve_balance(bad, np.array([10, 10]))


# -- class weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_balanced_weights_match_sklearn_on_random_counts(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 500, size=rng.integers(2, 8))
    y = labels_for(counts)
    expected = compute_class_weight("balanced", classes=np.arange(len(counts)), y=y)
    np.testing.assert_allclose(balanced_class_weights(counts), expected, rtol=1e-12)
    names = [f"c{i}" for i in range(len(counts))]
    np.testing.assert_allclose(class_weights("balanced", counts, names), expected, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 1e-9])
def test_effective_number_small_beta_gives_equal_weights(beta):
    w = effective_number_weights(np.array([500, 20, 3]), beta=beta)
    np.testing.assert_allclose(w, [1.0, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999, 0.9999])
def test_effective_number_normalisation_and_formula(beta):
    counts = np.array([1000, 0, 40, 7])
    w = effective_number_weights(counts, beta=beta)
    assert (w * counts).sum() == pytest.approx(counts.sum(), rel=1e-12)
    assert w[1] == 0.0
    raw = (1 - beta) / (1 - beta ** counts[[0, 2, 3]].astype(float))
    np.testing.assert_allclose(w[[0, 2, 3]] / w[0], raw / raw[0], rtol=1e-9)
    assert w[0] <= w[2] <= w[3]


def test_effective_number_tends_to_balanced_as_beta_goes_to_one():
    counts = np.array([50, 10, 2])
    np.testing.assert_allclose(effective_number_weights(counts, beta=1 - 1e-9),
                               balanced_class_weights(counts), rtol=1e-5)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_effective_number_rejects_bad_beta(beta):
    with pytest.raises(ConfigError, match=r"'beta' parameter must be a float in \[0, 1\)"):
        effective_number_weights(np.array([10, 5]), beta=beta)


def test_class_weights_specs():
    counts = np.array([30, 10, 5])
    np.testing.assert_array_equal(class_weights(None, counts, CLASSES), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(class_weights("none", counts, CLASSES), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(class_weights("effective_number", counts, CLASSES),
                               effective_number_weights(counts))
    np.testing.assert_array_equal(class_weights({"owl": 4, "cat": 0.5}, counts, CLASSES),
                                  [0.5, 1.0, 4.0])
    np.testing.assert_array_equal(class_weights({}, counts, CLASSES), [1.0, 1.0, 1.0])


def test_class_weights_dict_errors_name_the_problem():
    counts = np.array([30, 10, 5])
    with pytest.raises(ConfigError, match=r"unknown classes \['cow', 'eel'\]. Valid classes: "
                                          r"\['cat', 'dog', 'owl'\]"):
        class_weights({"eel": 2.0, "cat": 1.0, "cow": 3.0}, counts, CLASSES)
    for bad in (-1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ConfigError, match="finite weights >= 0.*'dog'"):
            class_weights({"dog": bad}, counts, CLASSES)


@pytest.mark.parametrize("spec", ["Balanced", "weights", "", 3])
def test_class_weights_rejects_bad_spec(spec):
    with pytest.raises(ConfigError, match=r"'class_weight' parameter must be one of \['balanced'"):
        class_weights(spec, np.array([3, 4, 5]), CLASSES)


def test_class_weights_rejects_length_mismatch():
    with pytest.raises(ConfigError, match=r"one entry per class \(3\). Got 2"):
        class_weights("balanced", np.array([3, 4]), CLASSES)


# -- logit adjustment ---------------------------------------------------------------------------

def test_logit_adjustment_values():
    counts = np.array([60, 30, 10])
    np.testing.assert_allclose(logit_adjustment(counts), np.log([0.6, 0.3, 0.1]), rtol=1e-12)
    np.testing.assert_allclose(logit_adjustment(counts, tau=2.5), 2.5 * np.log([0.6, 0.3, 0.1]))
    np.testing.assert_array_equal(logit_adjustment(counts, tau=0), [0.0, 0.0, 0.0])
    # tau=1: softmax of the offsets alone is the training prior.
    offsets = logit_adjustment(counts)
    np.testing.assert_allclose(np.exp(offsets) / np.exp(offsets).sum(), [0.6, 0.3, 0.1])
    with_empty = logit_adjustment(np.array([5, 0, 5]), tau=0.5)
    assert with_empty[1] == pytest.approx(0.5 * np.log(1e-12))
    assert np.isfinite(with_empty).all()


@pytest.mark.parametrize("tau", [-1.0, float("inf"), float("nan"), None])
def test_logit_adjustment_rejects_bad_tau(tau):
    with pytest.raises(ConfigError, match="'tau' parameter must be a finite float >= 0"):
        logit_adjustment(np.array([3, 1]), tau=tau)


# -- stacked corrections ------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["balanced", "effective_number", {"owl": 3.0}])
def test_sampler_with_balancing_weights_warns(spec):
    message = stacked_correction_warning("sampler", spec)
    assert "stack" in message and "over-correct" in message and repr(spec) in message


@pytest.mark.parametrize("balance, spec", [("sampler", None), ("sampler", "none"),
                                           ("sampler", {}), ("sampler", {"owl": 1.0}),
                                           ("weights", "balanced"), ("none", "balanced"),
                                           ("auto", "effective_number")])
def test_no_warning_without_two_corrections(balance, spec):
    assert stacked_correction_warning(balance, spec) is None


def test_stacked_warning_rejects_bad_balance():
    with pytest.raises(ConfigError, match="'balance' parameter must be one of"):
        stacked_correction_warning("oversample", "balanced")


# -- balanced sampler ---------------------------------------------------------------------------

def test_sampler_class_shares_within_two_points_over_20_epochs():
    labels = labels_for([100, 10, 1])
    sampler = BalancedSampler(labels, seed=3)
    assert sampler.num_samples == len(sampler) == 300  # 3 classes x largest class
    drawn = np.concatenate([labels[sampler.indices(e)] for e in range(20)])
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    np.testing.assert_allclose(shares, 1 / 3, atol=0.02)
    assert labels.mean() < 0.2  # the raw shares were far from 1/3 (a real correction)


@pytest.mark.parametrize("epoch", range(5))
def test_sampler_cycles_within_each_class(epoch):
    counts = [100, 7, 3]  # share 100: each of the 7 is drawn 14 or 15 times, never 0 or 20
    labels = labels_for(counts)
    drawn = BalancedSampler(labels, seed=1).indices(epoch)
    per_image = np.bincount(drawn, minlength=len(labels))
    for c, n in enumerate(counts):
        members = per_image[labels == c]
        assert members.sum() == 100
        assert members.max() - members.min() <= 1
        assert members.min() == 100 // n


def test_sampler_under_samples_a_big_class_with_a_new_subset_each_epoch():
    labels = labels_for([1000, 20, 5])
    sampler = BalancedSampler(labels, seed=0, max_per_class=5)
    assert len(sampler) == 15
    subsets = []
    for epoch in range(30):
        idx = sampler.indices(epoch)
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [5, 5, 5])
        big = idx[labels[idx] == 0]
        assert len(set(big.tolist())) == 5  # a subset: no repeats
        subsets.append(frozenset(big.tolist()))
    assert len(set(subsets)) == 30
    assert len(frozenset().union(*subsets)) > 100  # 150 draws spread over the 1000


def test_sampler_is_a_pure_function_of_seed_and_epoch():
    labels = labels_for([40, 9, 2])
    a, b = BalancedSampler(labels, seed=7), BalancedSampler(labels, seed=7)
    np.random.seed(0)
    first = a.indices(4)
    np.random.seed(123)  # the global generator plays no part...
    state = np.random.get_state()
    np.testing.assert_array_equal(b.indices(4), first)
    assert np.array_equal(np.random.get_state()[1], state[1])  # ...and is left untouched
    assert first.dtype == np.int64
    assert not np.array_equal(a.indices(5), first)
    assert not np.array_equal(BalancedSampler(labels, seed=8).indices(4), first)
    a.set_epoch(4)
    assert list(a) == first.tolist()


def test_sampler_remainder_and_explicit_num_samples():
    labels = labels_for([50, 5, 2])
    for epoch in range(5):
        idx = BalancedSampler(labels, num_samples=7, seed=epoch).indices(epoch)
        assert sorted(np.bincount(labels[idx], minlength=3).tolist()) == [2, 2, 3]


def test_sampler_without_replacement_never_repeats():
    labels = labels_for([50, 8, 4])
    sampler = BalancedSampler(labels, replacement=False, seed=2)
    assert sampler.num_samples == 12  # 3 classes x smallest class
    for epoch in range(5):
        idx = sampler.indices(epoch)
        assert len(np.unique(idx)) == len(idx) == 12
        np.testing.assert_array_equal(np.bincount(labels[idx]), [4, 4, 4])
    with pytest.raises(ConfigError, match="'num_samples' parameter must be <= 12"):
        BalancedSampler(labels, replacement=False, num_samples=13)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_cover_the_padded_list(world_size):
    labels = labels_for([30, 4, 3])
    full = BalancedSampler(labels, seed=5, num_samples=91).full_indices(2)
    ranks = [BalancedSampler(labels, seed=5, num_samples=91, rank=r, world_size=world_size)
             for r in range(world_size)]
    per_rank = [s.indices(2) for s in ranks]
    length = -(-91 // world_size)
    assert [len(s) for s in ranks] == [len(p) for p in per_rank] == [length] * world_size
    padded = np.empty(length * world_size, np.int64)
    for r, part in enumerate(per_rank):
        padded[r::world_size] = part  # positions r::world_size are disjoint by construction
    np.testing.assert_array_equal(padded[:91], full)
    np.testing.assert_array_equal(padded[91:], full[:len(padded) - 91])
    np.testing.assert_array_equal(BalancedSampler(labels, seed=5, num_samples=91).indices(2), full)


@pytest.mark.parametrize("kwargs, match", [
    ({"world_size": 0}, "'world_size' parameter must be an int >= 1"),
    ({"rank": 2, "world_size": 2}, r"'rank' parameter must be an int in \[0, 2\)"),
    ({"rank": -1}, r"'rank' parameter must be an int in \[0, 1\)"),
    ({"max_per_class": 0}, "'max_per_class' parameter must be an int >= 1"),
    ({"num_samples": 0}, "'num_samples' parameter must be an int >= 1"),
    ({"seed": -1}, "'seed' parameter must be an int >= 0"),
    ({"num_samples": 10, "max_per_class": 5}, "at most one of 'num_samples' and 'max_per_class'"),
])
def test_sampler_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BalancedSampler(labels_for([5, 3]), **kwargs)


@pytest.mark.parametrize("labels", [np.array([], np.int64), np.array([0.0, 1.0]),
                                    np.zeros((2, 2), np.int64)])
def test_sampler_rejects_bad_labels(labels):
    with pytest.raises(ConfigError, match="'labels' parameter must be a non-empty 1-D array"):
        BalancedSampler(labels)


def test_set_epoch_rejects_negative():
    with pytest.raises(ConfigError, match="'epoch' parameter must be an int >= 0"):
        BalancedSampler(labels_for([5, 3])).set_epoch(-1)
