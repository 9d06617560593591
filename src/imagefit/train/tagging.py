"""Multi-label tagging's training, around the shared stages: the options that do not apply,
the sigmoid head's objective (`objectives.MultiLabel`), and what is fitted on the validation
set once training ends: per-label Platt calibration and per-label decision thresholds (max F1,
or one fixed threshold). `ImageClassifier.fit` calls `fit_tags` for label sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imagefit.data.index import ImageIndex
from imagefit.errors import ConfigError, DatasetError
from imagefit.train.calibrate import best_f1_thresholds, fit_platt, platt_proba
from imagefit.train.objectives import MultiLabel
from imagefit.train.settings import Settings, model_metadata
from imagefit.train.stages import RunContext, StageResult, run_stages

# ImageClassifier's class-balancing options: a multi-label head weighs each label's
# positives instead (MultiLabel.pos_weight).
_CLASS_ONLY = {"balance": ("auto", "none"), "class_weight": (None,),
               "logit_adjustment": (False, None, 0), "max_per_class": (None,)}


def check_threshold(threshold) -> None:
    """threshold: "auto" (per label, max F1 on validation) or a probability in (0, 1)."""
    if isinstance(threshold, str) and threshold == "auto":
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 < threshold < 1:
        raise ConfigError(f"The 'threshold' parameter must be 'auto' or a probability in "
                          f"(0, 1), e.g. 0.5. Got {threshold!r} instead.")


def tag_params(params: dict) -> dict:
    """`params` for a multi-label fit: the class-balancing options refused when set (each
    label's positives are weighed by its imbalance instead), balance "none"."""
    given = [name for name, defaults in _CLASS_ONLY.items()
             if not any(params[name] is d or params[name] == d for d in defaults)]
    if given:
        raise ConfigError(f"{', '.join(given)} balance classes of single-label data; a "
                          f"multi-label model weighs each label's positives against its "
                          f"negatives instead. Leave them unset.")
    check_threshold(params["threshold"])
    return {**params, "balance": "none"}


@dataclass
class TagFit:
    """A multi-label fit's outcome: the stages' result and what was fitted on validation."""

    result: StageResult
    objective: MultiLabel
    platt_a: np.ndarray
    platt_b: np.ndarray
    thresholds: np.ndarray
    val_proba: np.ndarray

    def metadata(self, settings: Settings, classes, net, threshold) -> dict:
        """model.json: the classifier's keys, "task": "multilabel", and "multilabel" (the
        calibration, the thresholds and how they were chosen, the positive weights)."""
        meta = model_metadata(settings, classes, net, 1.0, self.result.summary())
        meta["task"] = "multilabel"
        meta["multilabel"] = {"platt_a": self.platt_a.tolist(), "platt_b": self.platt_b.tolist(),
                              "thresholds": self.thresholds.tolist(), "threshold": threshold,
                              "pos_weight": np.asarray(self.objective.pos_weight).tolist()}
        return meta


def fit_tags(net, train: ImageIndex, val: ImageIndex, ctx: RunContext, threshold) -> TagFit:
    """Train `net` (one output per label) on label sets, then calibrate each label on the
    validation set and choose its threshold ("auto": max F1 there; a float: that one)."""
    if not train.counts().any():
        raise DatasetError("No training image has a label: multi-label training needs some "
                           "images with each label it should learn.")
    ctx.objective = MultiLabel.fitted(train.tags, device=ctx.settings.device)
    result = run_stages(net, train, val, ctx)
    val_tags = result.val_index.tags
    a, b = fit_platt(result.val_logits, val_tags, pos_weight=ctx.objective.pos_weight)
    proba = platt_proba(result.val_logits, a, b)
    if isinstance(threshold, str):
        thresholds = best_f1_thresholds(proba, val_tags)
    else:
        thresholds = np.full(len(train.classes), float(threshold))
    return TagFit(result, ctx.objective, a, b, thresholds, proba)
