"""Metrics from arrays, temperature scaling and class weights, checked against scikit-learn and
against synthetic data whose right answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from imagefit.data.sampling import (
    AUTO_IMBALANCE_RATIO,
    balanced_class_weights,
    imbalance_ratio,
    resolve_balance,
)
from imagefit.errors import ConfigError
from imagefit.metrics import (
    classification_metrics,
    expected_calibration_error,
    format_per_class_table,
)
from imagefit.train.calibrate import fit_temperature

CONTRACT_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece", "n", "classes",
                 "confusion_matrix", "per_class"}
PER_CLASS_KEYS = {"precision", "recall", "f1", "support"}


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _random_case(seed: int, n: int = 300, k: int = 4, absent: int | None = None):
    """Labels and probabilities; `absent` is a class that never occurs in y_true but is still
    sometimes predicted."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(k) if c != absent]
    y = rng.choice(present, size=n)
    logits = rng.normal(0, 1.5, (n, k))
    logits[np.arange(n), y] += rng.normal(1.0, 1.0, n)  # better than chance, not perfect
    if absent is not None:
        logits[: n // 10, absent] += 6.0  # make sure the absent class gets predicted
    return y, _softmax(logits)


@pytest.mark.parametrize("seed,absent", [(0, None), (1, 3), (2, 0), (3, 2)])
def test_classification_metrics_match_sklearn(seed, absent):
    k = 4
    classes = [f"c{i}" for i in range(k)]
    y, proba = _random_case(seed, k=k, absent=absent)
    y_pred = proba.argmax(axis=1)
    if absent is not None:
        assert absent not in y and (y_pred == absent).any()  # the case we mean to test
    m = classification_metrics(y, proba, classes)

    present = np.unique(y)
    assert m["n"] == len(y)
    assert m["classes"] == classes
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted-only class
        bacc = skm.balanced_accuracy_score(y, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(bacc, abs=1e-12)
    # The documented convention: macro-F1 over the classes present in y_true.
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y, y_pred, labels=present, average="macro", zero_division=0), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=range(k)), rel=1e-9)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, y_pred, labels=range(k)).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, y_pred, labels=range(k), zero_division=0)
    assert set(m["per_class"]) == set(classes)
    for i, name in enumerate(classes):
        row = m["per_class"][name]
        assert set(row) == PER_CLASS_KEYS
        assert row["precision"] == pytest.approx(p[i], abs=1e-12)
        assert row["recall"] == pytest.approx(r[i], abs=1e-12)
        assert row["f1"] == pytest.approx(f[i], abs=1e-12)
        assert row["support"] == int(s[i])


def test_absent_class_not_in_balanced_accuracy_or_macro_f1():
    # Class "c" never occurs; one image is wrongly predicted as "c".
    y = np.array([0, 0, 1, 1])
    proba = np.array([[.9, .05, .05], [.1, .1, .8], [.2, .7, .1], [.1, .8, .1]])
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    f1_a = 2 * 1.0 * 0.5 / 1.5
    f1_b = 1.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(0.75)


def test_contract_keys_and_json_types():
    import json

    y, proba = _random_case(5, n=50, k=3)
    m = classification_metrics(y, proba, ["x", "y", "z"])
    assert set(m) == CONTRACT_KEYS
    assert json.loads(json.dumps(m)) == m  # plain JSON types only
    assert isinstance(m["n"], int) and isinstance(m["accuracy"], float)
    table = format_per_class_table(m)
    for name in ("x", "y", "z"):
        assert any(line.startswith(name) for line in table.splitlines())
    assert f"n={len(y)}" in table


def test_empty_input_gives_nan_not_crash():
    m = classification_metrics(np.zeros(0, int), np.zeros((0, 2)), ["a", "b"])
    assert m["n"] == 0
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "ece"):
        assert np.isnan(m[key])
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]


def _calibrated_binary(n, seed, shift=0.0):
    """Confidence c of the predicted class; correct with probability c - shift."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < np.clip(conf - shift, 0, 1)
    proba = np.stack([conf, 1 - conf], axis=1)  # class 0 predicted
    y = np.where(correct, 0, 1)
    return y, proba


def test_ece_near_zero_when_calibrated_and_large_when_overconfident():
    y, proba = _calibrated_binary(40_000, seed=0)
    ece_good = expected_calibration_error(y, proba)
    assert ece_good < 0.015
    y2, proba2 = _calibrated_binary(40_000, seed=0, shift=0.25)
    ece_bad = expected_calibration_error(y2, proba2)
    assert ece_bad == pytest.approx(0.25, abs=0.03)
    assert classification_metrics(y2, proba2, ["a", "b"])["ece"] == pytest.approx(ece_bad)


def test_ece_matches_hand_computation():
    # Two bins used: confidences 0.95 (bin 14) and 0.55 (bin 8) of 15 equal-width bins.
    proba = np.array([[.95, .05], [.95, .05], [.95, .05], [.95, .05],
                      [.55, .45], [.55, .45]])
    y = np.array([0, 0, 0, 1, 0, 1])
    # bin 14: accuracy 0.75 vs confidence 0.95 (weight 4/6); bin 8: 0.5 vs 0.55 (weight 2/6)
    expected = 4 / 6 * 0.20 + 2 / 6 * 0.05
    assert expected_calibration_error(y, proba) == pytest.approx(expected, abs=1e-12)
    # Confidence exactly 1.0 falls in the last bin, not off the end.
    assert expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [1.0, 0.0]])) \
        == pytest.approx(0.5)


def _temperature_data(t_true, n=5000, k=5, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1.0, (8, k))
    x = rng.normal(0, 1.0, (n, 8))
    true_logits = x @ w
    p = _softmax(true_logits)
    y = np.array([rng.choice(k, p=row) for row in p])
    # The observed model is mis-calibrated by t_true: dividing by t_true recovers the truth.
    return true_logits * t_true, y


@pytest.mark.parametrize("t_true", [2.5, 0.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    logits, y = _temperature_data(t_true)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(t_true, rel=0.10)
    # Calibration must improve the NLL over T = 1.
    nll = lambda T: skm.log_loss(y, _softmax(logits / T), labels=range(logits.shape[1]))
    assert nll(t) < nll(1.0)


def test_temperature_never_changes_argmax():
    logits, y = _temperature_data(2.5, n=2000)
    t = fit_temperature(logits, y)
    assert t != pytest.approx(1.0, abs=0.1)
    before = _softmax(logits)
    after = _softmax(logits / t)
    np.testing.assert_array_equal(before.argmax(axis=1), after.argmax(axis=1))
    assert after.max(axis=1).mean() < before.max(axis=1).mean()  # overconfidence reduced


def test_fit_temperature_edge_cases():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    # Perfectly separable, confident logits: T goes to the lower bound, stays finite and > 0.
    logits = np.array([[10.0, 0.0], [0.0, 10.0]] * 20)
    y = np.array([0, 1] * 20)
    t = fit_temperature(logits, y, bounds=(0.05, 20.0))
    assert 0.05 <= t < 0.1
    # Uninformative logits with random labels: T goes to the upper bound (flat probabilities).
    rng = np.random.default_rng(0)
    t = fit_temperature(rng.normal(0, 5, (2000, 3)), rng.integers(0, 3, 2000), bounds=(0.05, 20))
    assert t > 15


@pytest.mark.parametrize("counts", [[30, 10], [14, 9, 6], [5, 5, 5], [100, 1, 37, 8]])
def test_balanced_class_weights_match_sklearn(counts):
    y = np.repeat(np.arange(len(counts)), counts)
    expected = compute_class_weight("balanced", classes=np.arange(len(counts)), y=y)
    np.testing.assert_allclose(balanced_class_weights(np.array(counts)), expected, rtol=1e-12)


def test_balanced_class_weights_empty_class_gets_zero():
    w = balanced_class_weights(np.array([30, 0, 10]))
    y = np.repeat([0, 2], [30, 10])
    expected = compute_class_weight("balanced", classes=np.array([0, 2]), y=y)
    np.testing.assert_allclose(w[[0, 2]], expected)
    assert w[1] == 0.0


def test_resolve_balance():
    assert AUTO_IMBALANCE_RATIO == 1.5
    assert resolve_balance("auto", np.array([16, 10])) == "weights"   # ratio 1.6
    assert resolve_balance("auto", np.array([15, 10])) == "none"      # ratio exactly 1.5
    assert resolve_balance("auto", np.array([12, 10, 11])) == "none"
    assert resolve_balance("auto", np.array([14, 9, 6])) == "weights"
    assert resolve_balance("auto", np.array([10, 0, 10])) == "none"   # empty class ignored
    assert imbalance_ratio(np.array([14, 9, 6])) == pytest.approx(14 / 6)
    assert resolve_balance("weights", np.array([10, 10])) == "weights"
    assert resolve_balance("none", np.array([100, 1])) == "none"


@pytest.mark.parametrize("bad", ["x", "AUTO", "", None, "balanced"])
def test_resolve_balance_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="'balance' parameter must be one of"):
        resolve_balance(bad, np.array([10, 10]))
