"""Resolving an estimator's parameters, once, into `Settings`: the frozen record of what a
training run does ("auto" replaced by what it chose). The constraint table of the parameters
lives here; checking them is `_validation`'s job, and nothing here trains or reads files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagefit._validation import check_choice, check_params
from imagefit.config import MODES
from imagefit.data.augment import AugmentConfig, resolve_augment
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.sampling import (BALANCE_CHOICES, class_weights, logit_adjustment,
                                    resolve_balance, stacked_correction_warning)
from imagefit.errors import ConfigError
from imagefit.features.extract import model_key
from imagefit._fileio import cache_folder
from imagefit.models.backbones import Preprocessing, get_spec, preprocessing_for, resolve_device

DEVICES = ("auto", "cpu", "cuda")
# Per-mode defaults: (backbone, epochs, patience, lr, dropout). "finetune" first runs the probe
# stage with the probe defaults, then its own stage with these.
MODE_DEFAULTS = {"probe": ("efficientnet_lite0", 100, 15, 1e-3, 0.2),
                 "finetune": ("efficientnet_lite0", 40, 15, 1e-3, 0.2),
                 "scratch": ("simple_cnn", 50, 10, 1e-3, 0.5)}
# "auto" fine-tunes on a CPU up to this many training images; beyond, it probes (fine-tuning
# a larger set takes hours on a laptop; pass mode="finetune" with a time budget to do it anyway).
AUTO_FINETUNE_MAX_CPU = 20_000
# augment="auto" trains from scratch without augmentation from this many training images on:
# measured on Fashion-MNIST's 48,000 (simple_cnn, 15-minute budget), "light" halved the epochs
# that fit (35 s against 18 s) and ended at 0.884 test accuracy, "none" at 0.919.
AUTO_SCRATCH_PLAIN_MIN = 20_000
# time_budget="auto" on a CPU: a minute per this many training images, within these bounds.
AUTO_BUDGET_IMAGES_PER_MINUTE = 200
AUTO_BUDGET_MINUTES = (3.0, 30.0)
# max_val="auto": validation during training uses at most this many images, or this many per
# class if that is more (a stratified subset; the rest are not decoded). 2,000 images put the
# standard error of a validation accuracy near 1 point; beyond, validating costs more than it
# tells.
AUTO_MAX_VAL = 2_000
AUTO_MAX_VAL_PER_CLASS = 50
# The numeric parameters: (name, kind, minimum, maximum); None means "the mode's default".
CONSTRAINTS = (("epochs", int, 1, 100_000), ("batch_size", int, 1, 65_536),
               ("lr", float, 1e-8, 10.0), ("dropout", float, 0.0, 0.95),
               ("seed", int, 0, 2**32 - 1), ("workers", int, 0, 256), ("unfreeze", int, 1, 100),
               ("max_per_class", int, 1, 2**40), ("epoch_size", int, 1, 2**40),
               ("time_budget", float, 0.0, 1e7))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What one training run does, every "auto" resolved (stored as `clf.settings_`)."""

    mode: str
    backbone: str
    preprocessing: Preprocessing
    epochs: int
    patience: int
    lr: float
    dropout: float
    augment: AugmentConfig
    balance: str
    class_weight: tuple[float, ...]
    logit_adjustment: tuple[float, ...] | None
    device: str
    unfreeze: int | None          # None: by training-set size (see finetune.default_unfreeze)
    batch_size: int
    max_per_class: int | None
    epoch_size: int | None        # draws per epoch (None: the sampler's or the training set's)
    max_val: int | None           # validation images used at most (None: all)
    seed: int
    workers: int | None           # None: by job size (see `workers_for`)
    max_pixels: int
    time_budget: float | None     # minutes
    weights: str | None
    cache_dir: str | None         # None: $IMAGEFIT_CACHE or ~/.cache/imagefit

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def cache_folder(self) -> Path:
        return cache_folder(self.cache_dir)

    def workers_for(self, n: int) -> int:
        """Decoding processes for a job of `n` images."""
        return workers_for(self.workers, n)

    def to_dict(self) -> dict:
        """Plain JSON/YAML values (model.json's "settings", config.yaml)."""
        values = dataclasses.asdict(self)
        values["preprocessing"] = self.preprocessing.to_dict()
        values["augment"] = self.augment.to_dict()
        values["class_weight"] = [float(w) for w in self.class_weight]
        if self.logit_adjustment is not None:
            values["logit_adjustment"] = [float(v) for v in self.logit_adjustment]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "Settings":
        values = dict(values)
        values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        values["augment"] = resolve_augment(values["augment"])
        values["class_weight"] = tuple(values["class_weight"])
        if values.get("logit_adjustment") is not None:
            values["logit_adjustment"] = tuple(values["logit_adjustment"])
        return cls(**values)


def workers_for(workers: int | None, n: int) -> int:
    """Decoding processes for a job of `n` images: `workers`, or by job size when None."""
    if workers is not None:
        return workers
    # Worker start-up costs about a second; small jobs decode faster in-process.
    return 0 if n < 512 else min(2, os.cpu_count() or 1)


def check_estimator_params(params: dict[str, Any]) -> None:
    """Check every parameter that can be checked before seeing data (fail before any work)."""
    check_choice("mode", params["mode"], MODES)
    check_choice("device", params["device"], DEVICES)
    check_choice("balance", params["balance"], BALANCE_CHOICES)
    budget = params["time_budget"]
    if isinstance(budget, str):
        check_choice("time_budget", budget, ("auto", "none"))
    check_params({**params, "time_budget": None if isinstance(budget, str) else budget},
                 CONSTRAINTS)
    check_max_val(params["max_val"])
    if params["epoch_size"] is not None and params["max_per_class"] is not None:
        raise ConfigError("Pass at most one of 'epoch_size' and 'max_per_class' (--epoch-size, "
                          "--max-per-class): both set the draws per epoch.")
    augment = params["augment"]
    if not (isinstance(augment, str) and augment == "auto"):
        resolve_augment(augment)  # a bad preset or YAML file fails here
    if params.get("resume") and not params.get("checkpoint_dir"):
        raise ConfigError("resume=True needs checkpoint_dir (the CLI's --resume needs --out "
                          "of the run to continue).")
    backbone = resolve_backbone(params["mode"], params["backbone"])
    if params["mode"] in ("probe", "finetune") and not get_spec(backbone).pretrained:
        raise ConfigError(f"Backbone {backbone!r} has no pretrained weights to {params['mode']}; "
                          f"use mode='scratch' (--mode scratch) or a pretrained backbone.")


def check_max_val(max_val) -> None:
    """max_val: "auto", "all" (or None), or an int >= 1."""
    if isinstance(max_val, str) or max_val is None:
        check_choice("max_val", "all" if max_val is None else max_val, ("auto", "all"))
    else:
        check_params({"max_val": max_val}, [("max_val", int, 1, 2**40)])


def resolve_max_val(max_val, n_classes: int) -> int | None:
    """The validation images a run uses at most (None: all of them).

    Example:
        >>> resolve_max_val("auto", 10), resolve_max_val("auto", 100), resolve_max_val(500, 3)
        (2000, 5000, 500)
    """
    check_max_val(max_val)
    if max_val == "auto":
        return max(AUTO_MAX_VAL, AUTO_MAX_VAL_PER_CLASS * n_classes)
    return None if max_val in (None, "all") else int(max_val)


def resolve_backbone(mode: str, backbone: str | None) -> str:
    """The backbone a run uses; it does not depend on the data."""
    if backbone:
        return backbone
    return MODE_DEFAULTS["scratch" if mode == "scratch" else "probe"][0]


def input_size(params: dict[str, Any]) -> int:
    """The side images are decoded to, known before the data (for the pre-flight)."""
    backbone = resolve_backbone(params["mode"], params["backbone"])
    return preprocessing_for(backbone, params["image_size"]).image_size


def resolve_mode(mode: str, backbone: str, device: str, n_train: int) -> str:
    if mode != "auto":
        return mode
    if not get_spec(backbone).pretrained:
        return "scratch"
    if device == "cuda" or n_train <= AUTO_FINETUNE_MAX_CPU:
        return "finetune"
    return "probe"


def resolve_time_budget(budget: float | str | None, n_train: int, device: str) -> float | None:
    """Minutes of training (None: no limit). "auto" gives a CPU run a minute per
    `AUTO_BUDGET_IMAGES_PER_MINUTE` training images, within `AUTO_BUDGET_MINUTES`, so that a
    default run ends in minutes; on a GPU it sets no limit.

    Example:
        >>> resolve_time_budget("auto", 2_000, "cpu"), resolve_time_budget("auto", 100, "cpu")
        (10.0, 3.0)
    """
    if budget is None or budget == "none":
        return None
    if budget != "auto":
        return float(budget)
    if device == "cuda":
        return None
    low, high = AUTO_BUDGET_MINUTES
    return float(min(max(n_train / AUTO_BUDGET_IMAGES_PER_MINUTE, low), high))


def resolve_settings(params: dict[str, Any], counts: np.ndarray, classes: tuple[str, ...],
                     *, auto_augment: str = "light", n_train: int | None = None) -> Settings:
    """Every setting of a run, from the estimator's parameters and the training classes'
    sizes; `auto_augment` is what augment "auto" means when it augments (a regression's
    is "photometric"); `n_train`: the training images, where they are not the sum of
    `counts` (multi-label: an image counts once per label). Warns (UserWarning) where settings
    contradict each other."""
    check_estimator_params(params)
    backbone = resolve_backbone(params["mode"], params["backbone"])
    device = resolve_device(params["device"])
    n_train = int(counts.sum()) if n_train is None else int(n_train)
    mode = resolve_mode(params["mode"], backbone, device, n_train)
    _, epochs, patience, lr, dropout = MODE_DEFAULTS[mode]
    balance = resolve_balance(params["balance"], counts)
    spec = params["class_weight"]
    if spec is None:
        spec = "balanced" if balance == "weights" else "none"
    warning = stacked_correction_warning(balance, params["class_weight"])
    if warning:
        log.warning(warning)
    budget = resolve_time_budget(params["time_budget"], n_train, device)
    if params["time_budget"] == "auto":
        log.info("Time budget: %s (auto: %s training images on %s; --time-budget MINUTES or "
                 "none to change).", "none" if budget is None else f"{budget:g} min",
                 f"{n_train:,}", "a GPU" if device == "cuda" else "a CPU")
    tau = params["logit_adjustment"]
    adjustment = (None if tau is False or tau is None
                  else logit_adjustment(counts, 1.0 if tau is True else tau))
    return Settings(
        mode=mode, backbone=backbone,
        preprocessing=preprocessing_for(backbone, params["image_size"]),
        epochs=params["epochs"] or epochs, patience=patience, lr=params["lr"] or lr,
        dropout=dropout if params["dropout"] is None else params["dropout"],
        augment=resolve_augment(_augment_spec(params["augment"], mode, n_train, auto_augment)),
        balance=balance,
        class_weight=tuple(float(w) for w in class_weights(spec, counts, classes)),
        logit_adjustment=None if adjustment is None else tuple(map(float, adjustment)),
        device=device, unfreeze=params["unfreeze"], batch_size=params["batch_size"],
        max_per_class=params["max_per_class"], epoch_size=params["epoch_size"],
        max_val=resolve_max_val(params["max_val"], len(classes)),
        seed=params["seed"], workers=params["workers"],
        max_pixels=params["max_pixels"], time_budget=budget,
        weights=params["weights"], cache_dir=params["cache_dir"])


def _augment_spec(augment, mode: str, n_train: int, auto: str = "light"):
    """"auto": none for a probe (it trains on features) and for training from scratch on
    `AUTO_SCRATCH_PLAIN_MIN` images or more, else `auto` ("light")."""
    if isinstance(augment, str) and augment == "auto":
        if mode == "scratch" and n_train >= AUTO_SCRATCH_PLAIN_MIN:
            log.info("augment 'auto': none (training from scratch on %s images, where "
                     "augmentation costs more epochs than it saves; --augment light to use it).",
                     f"{n_train:,}")
            return "none"
        return "none" if mode == "probe" else auto
    if mode == "probe" and not resolve_augment(augment).is_identity:
        log.warning("mode 'probe' trains on features computed once per image, so the "
                    "augmentation is not used; use mode 'finetune' to train with it.")
        return "none"
    return augment


def model_metadata(settings: Settings, classes, net, temperature: float, training: dict) -> dict:
    """model.json's content (besides what the folder format adds). The top-level keys are
    DESIGN's contract; "settings" holds every resolved setting, "training" what fit saw."""
    stored = settings.to_dict()
    for machine_specific in ("device", "cache_dir", "workers"):
        stored.pop(machine_specific)
    meta = {"backbone": settings.backbone, "mode": settings.mode,
            "image_size": settings.image_size, "preprocessing": settings.preprocessing.to_dict(),
            "classes": list(classes),
            "head": {"type": "dropout_linear", "in_features": net.head[1].in_features,
                     "dropout": net.head[0].p},
            "temperature": float(temperature), "balance": settings.balance,
            "class_weight": [float(w) for w in settings.class_weight],
            # Training settings prediction honours: the pixel cap, and the augmentation (whose
            # flips define test-time augmentation). Seed for reproducible re-analysis.
            "augment": settings.augment.to_dict(), "max_pixels": int(settings.max_pixels),
            "seed": int(settings.seed), "settings": stored, "training": training,
            # Names the backbone's verified ONNX graph in the cache: predict runs from it
            # without building the backbone (no timm import).
            "backbone_key": model_key(net.backbone, settings.preprocessing)}
    return json.loads(json.dumps(meta))  # plain JSON values, as a loaded model sees them


def settings_from_metadata(meta: dict) -> Settings:
    """Settings of a model folder; one written before "settings" existed gets defaults."""
    stored = dict(meta.get("settings") or {})
    if not stored:
        stored = {"mode": meta.get("mode", "probe"), "backbone": meta["backbone"],
                  "preprocessing": meta["preprocessing"], "epochs": 0, "patience": 0,
                  "lr": 0.0, "dropout": float(meta["head"]["dropout"]),
                  "augment": meta.get("augment"), "balance": meta.get("balance", "none"),
                  "class_weight": meta.get("class_weight", [1.0] * len(meta["classes"])),
                  "logit_adjustment": None, "unfreeze": None, "batch_size": 64,
                  "max_per_class": None, "seed": int(meta.get("seed", 0)),
                  "max_pixels": int(meta.get("max_pixels", DEFAULT_MAX_PIXELS)),
                  "time_budget": None, "weights": None}
    for added_later in ("epoch_size", "max_val"):  # models saved before these existed
        stored.setdefault(added_later, None)
    return Settings.from_dict({**stored, "device": "cpu", "cache_dir": None, "workers": None})
