"""`ImageRegressor`: a number per image (an age, a count, a score, an angle), the scikit-learn
way (`score` is R²). It trains exactly as `ImageClassifier` does (the same probe and fine-tuning
stages, caches, checkpoints and torchrun support) with a one-output head on standardised targets
and a regression loss (`train.objectives.Regression`), and ends with a split-conformal
prediction interval fitted on the validation set (`train.calibrate.conformal_halfwidth`).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import torch

from imagefit._fileio import cache_folder
from imagefit._validation import check_is_fitted
from imagefit.fitted import ImageModel, rebuilding
from imagefit.data.augment import resolve_augment
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.index import ImageIndex
from imagefit.data.sources import SourceOptions, as_index, open_dataset
from imagefit.data.tables import is_table
from imagefit.errors import ConfigError
from imagefit.features.extract import raise_first_failure
from imagefit.models.net import StoredNet
from imagefit.seeding import seed_everything
from imagefit.train import distributed
from imagefit.train.calibrate import conformal_halfwidth
from imagefit.train.objectives import REGRESSION_LOSSES, Regression
from imagefit.train.settings import (Settings, model_metadata, resolve_settings,
                                     settings_from_metadata)
from imagefit.train.stages import (RunContext, make_checkpointer, new_net, run_stages,
                                   training_data)

log = logging.getLogger(__name__)

# What ImageClassifier's training takes and a regression fixes: no classes to balance.
_CLASSIFICATION_ONLY = {"balance": "none", "class_weight": None, "logit_adjustment": False,
                        "max_per_class": None}


class ImageRegressor(ImageModel):
    """A number per image, trained from image files and their values.

    Args:
        loss: "mse" (default), "huber" (robust to a few wrong values: squared within one
            standard deviation of the targets, linear beyond) or "l1".
        interval: the coverage of the prediction intervals, in (0, 1) (default 0.9): split
            conformal on the validation set, so that on new images like the validation ones
            at least this share of true values falls inside.
        augment: "auto" is "photometric" (colour and blur only: flips and rotations change
            targets such as angles or positions); any `ImageClassifier` preset, file or
            mapping otherwise, with a warning when it moves the image.
        The others as `ImageClassifier`'s (mode, backbone, image_size, epoch_size, max_val,
        unfreeze, epochs, batch_size, lr, dropout, val_fraction, seed, device, workers,
        weights, cache_dir, max_pixels, time_budget, checkpoint_dir, resume, verbose).
        Model selection and early stopping use the validation MAE.

    Fitted attributes: `settings_`, `net_`, `target_mean_`, `target_scale_`, `halfwidth_` (the
    interval's half-width, in the target's unit), `history_`, `best_epoch_`, `n_train_`,
    `n_val_`; `validation_` (paths, true values, predictions) and `bad_files_` after `fit`.

    Example:
        >>> reg = ImageRegressor(image_size=96).fit(paths, ages)       # doctest: +SKIP
        >>> value, lower, upper = reg.predict_interval(["new.jpg"])   # doctest: +SKIP
    """

    _FITTED = "halfwidth_"

    def __init__(self, backbone: str | None = None, *, mode: str = "auto",
                 image_size: int | None = None, augment="auto", loss: str = "mse",
                 interval: float = 0.9, epoch_size: int | None = None,
                 max_val: int | str | None = "auto", unfreeze: int | None = None,
                 epochs: int | None = None, batch_size: int = 64, lr: float | None = None,
                 dropout: float | None = None, val_fraction: float = 0.2, seed: int = 0,
                 device: str = "auto", workers: int | None = None, weights: str | None = None,
                 cache_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 time_budget: float | str | None = "auto", checkpoint_dir: str | None = None,
                 resume: bool = False, verbose: bool = False):
        self.backbone, self.mode, self.image_size = backbone, mode, image_size
        self.augment, self.loss, self.interval = augment, loss, interval
        self.epoch_size, self.max_val = epoch_size, max_val
        self.unfreeze, self.epochs, self.batch_size, self.lr = unfreeze, epochs, batch_size, lr
        self.dropout, self.val_fraction, self.seed = dropout, val_fraction, seed
        self.device, self.workers, self.weights = device, workers, weights
        self.cache_dir, self.max_pixels, self.time_budget = cache_dir, max_pixels, time_budget
        self.checkpoint_dir, self.resume, self.verbose = checkpoint_dir, resume, verbose

    def fit(self, X, y=None, *, val: ImageIndex | None = None) -> "ImageRegressor":
        """Train on `X` and fit the prediction interval on the validation set; returns self.

        Args:
            X: an `ImageIndex` with values (`ImageIndex.from_values`, or a table read with
                task "regress"), a table (CSV, TSV, Parquet, DataFrame) of paths and values,
                or image paths with their values `y`.
            y: the values for paths; for an `ImageIndex` X, may be the validation index.
            val: validation `ImageIndex` with values; default: split off `val_fraction` of X
                (stratified by value: each tenth of the range sends its share).
        """
        params = self._training_params()
        if isinstance(y, ImageIndex):  # fit(train, val), as ImageClassifier takes it
            val, y = y, None
        train, val = training_data(_with_values(X, y), None, _with_values(val, None), params)
        settings = resolve_settings(params, train.counts(), train.classes,
                                    auto_augment="photometric")
        net = new_net(settings, 1)
        ctx = RunContext.for_data(settings, distributed.current(), train, val,
                                  progress=self.verbose)
        ctx.objective = Regression.fitted(self.loss, train.targets)
        ctx.checkpointer = make_checkpointer(self.checkpoint_dir, self.resume,
                                             {**params, "task": "regress", "loss": self.loss},
                                             settings, train, val, ctx.dist)
        result = run_stages(net, train, val, ctx)
        predicted = ctx.objective.decode(result.val_logits)
        truth = result.val_index.targets
        halfwidth = conformal_halfwidth(truth - predicted, self.interval)
        if not np.isfinite(halfwidth):
            log.warning(f"{len(truth)} validation images are too few for a {self.interval:.0%} "
                        f"prediction interval (it needs {self.interval / (1 - self.interval):.0f}"
                        f"); the intervals are unbounded.")
        net = net.cpu().eval()
        meta = _metadata(settings, net, result.summary(), ctx.objective, self.interval, halfwidth)
        self._restore(meta, StoredNet.of(net), settings)
        self.bad_files_ = ctx.bad_files
        self.validation_ = (result.val_index.paths, truth, predicted)
        return self

    def _training_params(self) -> dict:
        """The parameters as the shared training code takes them (checked first)."""
        if self.loss not in REGRESSION_LOSSES:
            raise ConfigError(f"The 'loss' parameter must be one of "
                              f"{', '.join(REGRESSION_LOSSES)}. Got {self.loss!r} instead.")
        if not isinstance(self.interval, (int, float)) or not 0 < self.interval < 1:
            raise ConfigError(f"The 'interval' parameter must be a coverage in (0, 1), e.g. "
                              f"0.9. Got {self.interval!r} instead.")
        params = {k: v for k, v in self.get_params().items() if k not in ("loss", "interval")}
        seed_everything(self.seed)
        augment = params["augment"]
        if not (isinstance(augment, str) and augment == "auto") and _moves_the_image(augment):
            log.warning("The augmentation flips, rotates, shifts or zooms the images: right for "
                        "values that do not depend on orientation or position, wrong for "
                        "angles, positions or counts of what is in the frame (augment "
                        "'photometric' keeps to colour and blur).")
        return {**params, **_CLASSIFICATION_ONLY}

    def get_config(self) -> dict:
        """The metadata this fitted model rebuilds itself from (model.json's content)."""
        check_is_fitted(self, self._FITTED)
        return dict(self._meta)

    @classmethod
    def from_config(cls, meta: dict, state: dict[str, torch.Tensor]) -> "ImageRegressor":
        """Rebuild a fitted regressor from `get_config()` metadata and its weights."""
        with rebuilding():
            settings = settings_from_metadata(meta)
            target = meta["target"]
            reg = cls(settings.backbone, mode=settings.mode, image_size=settings.image_size,
                      loss=target["loss"], interval=float(target["interval"]),
                      dropout=settings.dropout, max_pixels=settings.max_pixels,
                      seed=settings.seed)
            stored = StoredNet(settings.backbone, settings.image_size, 1, settings.dropout, state)
            reg._restore(meta, stored, settings)
        reg.bad_files_ = reg.validation_ = None
        return reg

    def _restore(self, meta: dict, stored: StoredNet, settings: Settings) -> None:
        self._restore_fitted(meta, stored, settings)
        self._meta, target = meta, meta["target"]
        self.objective_ = Regression(target["loss"], float(target["scale"]),
                                     float(target["mean"]))
        self.target_mean_, self.target_scale_ = self.objective_.mean, self.objective_.scale
        halfwidth = target["halfwidth"]  # None: too few validation images to bound it
        self.halfwidth_ = float("inf") if halfwidth is None else float(halfwidth)

    def iter_predict_files(self, paths: Sequence[str | os.PathLike], *, chunk_size: int = 1024,
                           progress: bool = False):
        """(paths, values, failures) a chunk of files at a time, in input order; a file that
        cannot be decoded gets NaN and its reason."""
        for chunk, result in self._feature_chunks(paths, chunk_size, progress):
            values = self.predict_features(result.features)
            values[~result.ok] = np.nan
            yield chunk, values, result.failures

    def predict(self, X) -> np.ndarray:
        """Predicted values (float64); `X` is what `fit` takes, without values.

        Raises:
            ImageLoadError: a file cannot be decoded (`iter_predict_files` gives NaN instead).
        """
        check_is_fitted(self, self._FITTED)
        paths = as_index(X, folder=cache_folder(self.cache_dir)).paths
        parts = list(self.iter_predict_files(paths, chunk_size=max(len(paths), 1)))
        if not parts:
            return np.zeros(0)
        _, values, failures = parts[0]
        raise_first_failure(failures, paths)
        return values

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Predicted values from backbone features (the head, de-standardised)."""
        check_is_fitted(self, self._FITTED)
        return self.objective_.decode(self._stored.outputs(features))

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Predicted values of a uint8 batch (n, s, s, 3) at the model's input size."""
        return self.predict_features(self.embed(images))

    def predict_interval(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, lower, upper): the prediction and its `interval` coverage bounds."""
        values = self.predict(X)
        return (values, *self.bounds(values))

    def bounds(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the prediction intervals around predicted `values` (infinite
        where too few validation images bounded them)."""
        check_is_fitted(self, self._FITTED)
        return values - self.halfwidth_, values + self.halfwidth_

    def score(self, X, y=None) -> float:
        """R² of the predictions (scikit-learn's `RegressorMixin.score`)."""
        index = _with_values(X, y)
        predicted = self.predict(index.paths)
        sse = float(((index.targets - predicted) ** 2).sum())
        sst = float(((index.targets - index.targets.mean()) ** 2).sum())
        return 1.0 - sse / sst if sst > 0 else float("nan")

def _with_values(X, y) -> ImageIndex | None:
    """`X` (and `y`) as an index with values, or None for None."""
    if X is None:
        return None
    if isinstance(X, (str, os.PathLike)) or is_table(X):  # a table of paths and values
        return open_dataset(X, SourceOptions(task="regress"), min_classes=1)
    if isinstance(X, ImageIndex):
        if X.targets is None:
            raise ConfigError("This ImageIndex has class labels, not values: build one with "
                              "ImageIndex.from_values(paths, values), or read a table with "
                              "SourceOptions(task='regress').")
        return X
    if y is None:
        raise ConfigError("ImageRegressor needs the images' values: fit(paths, values).")
    return ImageIndex.from_values(X, y)


def _moves_the_image(augment) -> bool:
    config = resolve_augment(augment)
    return bool(config.rotation_range or config.width_shift_range or config.height_shift_range
                or config.shear_range or config.zoom_range or config.horizontal_flip
                or config.vertical_flip or config.crop_scale or config.policy)


def _metadata(settings: Settings, net, training: dict, objective: Regression, interval: float,
              halfwidth: float) -> dict:
    """model.json of a regression: the classifier's keys, no classes, and "task" and
    "target" (standardisation, loss, interval)."""
    meta = model_metadata(settings, [], net, 1.0, training)
    meta["task"] = "regress"
    meta["target"] = {"mean": objective.mean, "scale": objective.scale, "loss": objective.loss_name,
                      "interval": float(interval),
                      "halfwidth": halfwidth if np.isfinite(halfwidth) else None}
    return meta
