"""Regression and multi-label metrics (issue 12) against scikit-learn and SciPy as oracles, and
the training objectives the loop takes for each task."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn import metrics as sk

from imagefit import metrics
from imagefit.errors import ConfigError
from imagefit.train import objectives
from imagefit.train.objectives import Classification, MultiLabel, Regression


def test_docstring_examples():
    for module in (metrics, objectives):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_match_scikit_learn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=60).round(1)  # rounded: ties in the ranks
    pred = (y + rng.normal(scale=0.5, size=60)).round(1)
    m = metrics.regression_metrics(y, pred)
    assert m["mae"] == pytest.approx(sk.mean_absolute_error(y, pred))
    assert m["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(y, pred)))
    assert m["r2"] == pytest.approx(sk.r2_score(y, pred))
    assert m["median_absolute_error"] == pytest.approx(sk.median_absolute_error(y, pred))
    assert m["spearman"] == pytest.approx(spearmanr(y, pred).statistic)


def test_regression_interval_coverage_and_width():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    m = metrics.regression_metrics(y, y, lower=y - [1, 1, 0, 0], upper=y + [1, 0, 0, -1])
    assert m["interval_coverage"] == 0.75 and m["interval_mean_width"] == 0.5
    constant = metrics.regression_metrics(np.ones(3), np.array([1.0, 2.0, 3.0]))
    assert np.isnan(constant["r2"]) and np.isnan(constant["spearman"])
    assert np.isnan(metrics.regression_metrics(np.zeros(0), np.zeros(0))["mae"])


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((80, 5)) < [0.5, 0.3, 0.1, 0.6, 0.2]
    y[0] = True  # every label has a positive
    proba = np.clip(y * 0.35 + rng.random((80, 5)) * 0.65, 0, 1).round(2)  # with ties
    thresholds = np.array([0.5, 0.4, 0.6, 0.5, 0.45])
    m = metrics.multilabel_metrics(y, proba, list("abcde"), thresholds)
    pred = proba >= thresholds
    assert m["micro_f1"] == pytest.approx(sk.f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert m["samples_f1"] == pytest.approx(sk.f1_score(y, pred, average="samples",
                                                        zero_division=1))
    assert m["subset_accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["hamming_loss"] == pytest.approx(sk.hamming_loss(y, pred))
    for j, name in enumerate("abcde"):
        row = m["per_label"][name]
        assert row["ap"] == pytest.approx(sk.average_precision_score(y[:, j], proba[:, j]))
        assert row["precision"] == pytest.approx(sk.precision_score(y[:, j], pred[:, j],
                                                                    zero_division=0))
        assert row["recall"] == pytest.approx(sk.recall_score(y[:, j], pred[:, j]))
        assert row["support"] == int(y[:, j].sum()) and row["threshold"] == thresholds[j]
    assert m["map"] == pytest.approx(sk.average_precision_score(y, proba, average="macro"))


def test_multilabel_labels_without_positives_are_left_out_of_the_means():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    m = metrics.multilabel_metrics(y, np.array([[.9, .1], [.2, .1], [.8, .3]]), ["a", "b"])
    assert m["map"] == 1.0 and np.isnan(m["per_label"]["b"]["ap"])
    assert m["macro_f1"] == 1.0  # b: no positive, none predicted: not averaged
    assert m["samples_f1"] == 1.0  # the image with no label and no prediction agrees


def test_objectives_score_the_epoch_by_their_task():
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    row = Classification(2).val_metrics(outputs, np.array([0, 1, 1]))
    assert row["val_accuracy"] == pytest.approx(2 / 3)
    assert Classification.score(row) == (row["val_balanced_accuracy"], -row["val_loss"])
    regression = Regression("l1", scale=2.0)
    row = regression.val_metrics(torch.tensor([[0.0], [1.0]]), np.array([0.5, 1.0]))
    assert row["val_mae"] == pytest.approx(0.5) and row["val_loss"] == pytest.approx(0.25)
    assert Regression.score(row)[0] == -row["val_mae"]  # a lower error scores higher
    multi = MultiLabel(2, pos_weight=np.array([1.0, 3.0]))
    row = multi.val_metrics(torch.tensor([[3.0, -3.0], [-3.0, 3.0]]), np.array([[1, 0], [0, 1]]))
    assert row["val_map"] == 1.0 and row["val_macro_f1"] == 1.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([[3.0, -3.0]]), torch.tensor([[0.0, 1.0]]),
        pos_weight=torch.tensor([1.0, 3.0]))
    assert multi.loss(torch.tensor([[3.0, -3.0]]), torch.tensor([[0, 1]])) == pytest.approx(
        float(expected))
    with pytest.raises(ValueError, match="mse, huber, l1"):
        Regression("squared")


@pytest.mark.parametrize("name,reference", [("mse", torch.nn.functional.mse_loss),
                                            ("huber", torch.nn.functional.huber_loss),
                                            ("l1", torch.nn.functional.l1_loss)])
def test_regression_losses_are_torchs(name, reference):
    outputs, targets = torch.randn(16, 1) * 3, torch.randn(16)
    assert Regression(name).loss(outputs, targets) == pytest.approx(
        float(reference(outputs[:, 0], targets)))


def _label_shares_error(y: np.ndarray, part: np.ndarray, fractions) -> float:
    """Mean over labels and parts of |share of the label's positives in the part - fraction|."""
    positives = y.sum(axis=0)
    errors = [abs(y[part == j].sum(axis=0) / positives - f) for j, f in enumerate(fractions)]
    return float(np.mean(errors))


@pytest.mark.parametrize("seed", range(3))
def test_iterative_stratification_spreads_every_label_better_than_a_random_split(seed):
    from imagefit.data.sampling import iterative_stratification

    rng = np.random.default_rng(seed)
    rates = np.array([0.4, 0.2, 0.05, 0.02, 0.01])  # a few rare labels
    y = rng.random((600, 5)) < rates
    y[:3, 4] = True  # at least a handful of positives of the rarest
    fractions = [0.8, 0.2]
    part = iterative_stratification(y, fractions, seed=seed)
    assert sorted(set(part.tolist())) == [0, 1]
    assert abs((part == 1).sum() - 120) <= 2                    # the rows' shares hold
    assert (y[part == 1].sum(axis=0) > 0).all()                # every label validated
    random_error = np.mean([_label_shares_error(y, (rng.permutation(600) < 120).astype(int),
                                                fractions) for _ in range(50)])
    assert _label_shares_error(y, part, fractions) < 0.5 * random_error  # measured: 3-6x
    assert np.array_equal(part, iterative_stratification(y, fractions, seed=seed))


def test_iterative_stratification_checks_its_input():
    from imagefit.data.sampling import iterative_stratification

    y = np.array([[1, 0], [0, 1], [0, 0]])
    with pytest.raises(ConfigError, match="fractions"):
        iterative_stratification(y, [0.5, 0.6])
    with pytest.raises(ConfigError, match="indicator matrix"):
        iterative_stratification(np.array([1, 0, 1]), [0.5, 0.5])
    three = iterative_stratification(np.eye(3, dtype=int).repeat(3, axis=0), [1 / 3] * 3)
    assert np.bincount(three).tolist() == [3, 3, 3]
