"""`ImageClassifier`: the scikit-learn-style estimator over image files. `__init__` stores
parameters only; `fit` checks them, runs the pre-flight where needed, resolves the settings
once, runs the training stages (`train.stages`) and ends by restoring itself from the same
metadata a saved model folder holds, so a fitted model and a loaded one are the same object.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from imagefit._validation import check_is_fitted
from imagefit.fitted import ImageModel, rebuilding
from imagefit.bundle import read_model_folder
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.index import ImageIndex
from imagefit.data.sources import SourceOptions, as_index, open_dataset
from imagefit.data.tables import is_table
from imagefit.features.extract import FlipViews, Predictions, raise_first_failure
from imagefit._fileio import cache_folder
from imagefit.models.net import StoredNet
from imagefit.regressor import ImageRegressor
from imagefit.seeding import seed_everything
from imagefit.train import distributed
from imagefit.errors import ConfigError
from imagefit.metrics import multilabel_metrics
from imagefit.train.calibrate import fit_temperature, platt_proba, softmax
from imagefit.train.settings import (Settings, check_estimator_params, model_metadata,
                                     resolve_settings, settings_from_metadata)
from imagefit.train.stages import (RunContext, make_checkpointer, new_net, run_stages,
                                   training_data)
from imagefit.train.tagging import fit_tags, tag_params


class ImageClassifier(ImageModel):
    """An image classifier trained from folders of images.

    Args:
        backbone: a registry name ("efficientnet_lite0", "simple_cnn", ...) or any timm model
            name; default "efficientnet_lite0", or "simple_cnn" for mode "scratch".
        mode: "probe" trains a dropout + linear head on frozen pretrained features;
            "finetune" does that, then unfreezes the top stages and trains them with the head
            on augmented images; "scratch" trains the whole network from random weights;
            "auto" (default): "scratch" for a backbone without pretrained weights, "finetune"
            on a GPU or up to 20,000 training images, else "probe".
        image_size: input side in pixels (default: the backbone's own).
        augment: "auto" ("light" on images, none from scratch on 20,000+), "none", "light",
            "keras", "strong", a YAML file, a mapping, an `AugmentConfig`; never on validation.
        balance: "auto" (none up to 1.5x imbalance, class weights up to 10x, a balanced
            sampler beyond), "weights", "sampler" (every class drawn equally often, each draw
            augmented afresh) or "none".
        class_weight: the weights "weights" uses: "balanced" (default), "effective_number",
            or a dict {class: weight}.
        max_per_class, epoch_size: draws per class and epoch (sampler), or per epoch; max_val:
            validation images used ("auto": 2,000 or 50 a class; "all"; N). Only what is drawn
            is decoded (README, "Millions of files").
        logit_adjustment: add tau * log(prior) to the logits in the loss (Menon et al. 2021).
        unfreeze: top stages to fine-tune (default by training-set size).
        time_budget: minutes, "auto" (by training-set size on a CPU) or "none"; see README.
        checkpoint_dir, resume: save resumable state there after every epoch; continue from it.
        epochs, lr, dropout, batch_size: training settings (defaults depend on the mode).
        val_fraction, seed: used when `fit` gets no validation set; seeds everything.
        device, workers: "auto", "cpu" or "cuda"; decoding processes (default by job size).
        weights, cache_dir: `.safetensors` backbone weights (timm models offline); feature
            and image cache (default `$IMAGEFIT_CACHE` or ~/.cache/imagefit).
        max_pixels, verbose: decompression-bomb limit per image; show progress bars.

    Fitted attributes: `classes_`, `settings_` (every resolved setting; `mode_`, `balance_`,
    `augment_`, `device_`, `preprocessing_`, `backbone_name_`, `class_weight_` and
    `logit_adjustment_` are its fields), `net_`, `temperature_`, `history_`, `best_epoch_`,
    `unfreeze_`, `n_train_`, `n_val_`; `bad_files_` and `validation_` (the validation
    `Predictions` and labels) exist after `fit` and are None on a loaded model.

    Example:
        >>> clf = ImageClassifier(image_size=96)
        >>> clf.fit(imagefit.scan_folder("data/")).predict(["new.jpg"])  # doctest: +SKIP
        array(['cat'], dtype=object)
    """

    def __init__(self, backbone: str | None = None, *, mode: str = "auto",
                 image_size: int | None = None, augment="auto", balance: str = "auto",
                 class_weight=None, max_per_class: int | None = None,
                 epoch_size: int | None = None, max_val: int | str | None = "auto",
                 logit_adjustment: float | bool = False, unfreeze: int | None = None,
                 epochs: int | None = None, batch_size: int = 64, lr: float | None = None,
                 dropout: float | None = None, val_fraction: float = 0.2, seed: int = 0,
                 device: str = "auto", workers: int | None = None, weights: str | None = None,
                 cache_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 time_budget: float | str | None = "auto", checkpoint_dir: str | None = None,
                 resume: bool = False, threshold: float | str = "auto", verbose: bool = False):
        self.backbone, self.mode, self.image_size = backbone, mode, image_size
        self.augment, self.balance, self.class_weight = augment, balance, class_weight
        self.max_per_class, self.epoch_size, self.max_val = max_per_class, epoch_size, max_val
        self.logit_adjustment, self.unfreeze, self.epochs = logit_adjustment, unfreeze, epochs
        self.batch_size, self.lr, self.dropout = batch_size, lr, dropout
        self.val_fraction, self.seed = val_fraction, seed
        self.device, self.workers, self.weights = device, workers, weights
        self.cache_dir, self.max_pixels, self.time_budget = cache_dir, max_pixels, time_budget
        self.checkpoint_dir, self.resume, self.verbose = checkpoint_dir, resume, verbose
        self.threshold = threshold

    def fit(self, X, y=None, *, val: ImageIndex | None = None) -> "ImageClassifier":
        """Train on `X` and calibrate on the validation set; returns self.

        Args:
            X: an `ImageIndex` (e.g. from `open_dataset`), image paths, or a uint8 array
                (N, H, W[, C]) (its images are stored once as PNG files in the cache).
            y: class names for paths; for an `ImageIndex` X, may be the validation
                `ImageIndex` (so `fit(train, val)` works).
            val: validation `ImageIndex`; default: split off `val_fraction` of X.
        """
        params = self.get_params()
        check_estimator_params(params)
        seed_everything(self.seed)
        train, val = training_data(X, y, val, params)
        if train.is_multilabel:
            return self._fit_tags(train, val, tag_params(params))
        if self.threshold != "auto":
            raise ConfigError("The 'threshold' parameter applies to multi-label data (label "
                              "sets); a single-label classifier predicts its most likely class.")
        settings = resolve_settings(params, train.counts(), train.classes)
        net, ctx = self._start(settings, train, val, params)
        result = run_stages(net, train, val, ctx)
        temperature = fit_temperature(result.val_logits, result.val_index.labels)
        net = net.cpu().eval()  # on the CPU, whatever trained it: explain/export/save work
        net.temperature.fill_(temperature)
        self._restore(model_metadata(settings, train.classes, net, temperature,
                                     result.summary()), StoredNet.of(net), settings)
        self.bad_files_ = ctx.bad_files
        proba = softmax(result.val_logits, temperature)
        self.validation_ = (Predictions(result.val_index.paths, proba, self.classes_,
                                        [None] * len(proba)), result.val_index.labels)
        return self

    def _fit_tags(self, train: ImageIndex, val: ImageIndex, params: dict) -> "ImageClassifier":
        """`fit` for label sets: a sigmoid head (`train.tagging`), calibrated per label."""
        settings = resolve_settings(params, train.counts(), train.classes, n_train=len(train))
        net, ctx = self._start(settings, train, val, {**params, "task": "multilabel"})
        fitted = fit_tags(net, train, val, ctx, self.threshold)
        net = net.cpu().eval()
        self._restore(fitted.metadata(settings, train.classes, net, self.threshold),
                      StoredNet.of(net), settings)
        self.bad_files_ = ctx.bad_files
        index = fitted.result.val_index
        self.validation_ = (Predictions(index.paths, fitted.val_proba, self.classes_,
                                        [None] * len(index)), index.tags)
        return self

    def _start(self, settings: Settings, train: ImageIndex, val: ImageIndex,
               fingerprint: dict) -> tuple:
        """(a new network, the run's context with its checkpointer, fingerprinted by
        `fingerprint` and the data) for a fit."""
        net = new_net(settings, len(train.classes))  # first: its head draws from the seed
        ctx = RunContext.for_data(settings, distributed.current(), train, val,
                                  progress=self.verbose)
        ctx.checkpointer = make_checkpointer(self.checkpoint_dir, self.resume, fingerprint,
                                             settings, train, val, ctx.dist)
        return net, ctx

    def get_config(self) -> dict:
        """The metadata this fitted model rebuilds itself from (model.json's content)."""
        check_is_fitted(self)
        if self.multilabel_:
            return dict(self._meta)
        return model_metadata(self.settings_, self.classes_, self.net_, self.temperature_,
                         self.training_)

    @classmethod
    def from_config(cls, meta: dict, state: dict[str, torch.Tensor]) -> "ImageClassifier":
        """Rebuild a fitted classifier from `get_config()` metadata and its weights."""
        with rebuilding():
            settings = settings_from_metadata(meta)
            tags = meta.get("multilabel")
            clf = cls(settings.backbone, mode=settings.mode, image_size=settings.image_size,
                      balance=settings.balance, dropout=settings.dropout,
                      max_pixels=settings.max_pixels, seed=settings.seed,
                      threshold=tags["threshold"] if tags else "auto")
            stored = StoredNet(settings.backbone, settings.image_size, len(meta["classes"]),
                               settings.dropout, state)  # the backbone is built when needed
            clf._restore(meta, stored, settings)
        clf.bad_files_ = clf.validation_ = None
        return clf

    def _restore(self, meta: dict, stored: StoredNet, settings: Settings) -> None:
        """Set every fitted attribute from metadata (the end of `fit` and of loading)."""
        self._restore_fitted(meta, stored, settings)
        self._meta = meta
        self.classes_ = tuple(meta["classes"])
        self.temperature_ = float(meta["temperature"])
        self.multilabel_ = meta.get("task") == "multilabel"
        if self.multilabel_:
            tags = meta["multilabel"]
            self.platt_ = (np.asarray(tags["platt_a"], np.float64),
                           np.asarray(tags["platt_b"], np.float64))
            self.thresholds_ = np.asarray(tags["thresholds"], np.float64)
        self.balance_ = settings.balance
        self.class_weight_ = np.asarray(settings.class_weight)
        self.logit_adjustment_ = (None if settings.logit_adjustment is None
                                  else np.asarray(settings.logit_adjustment))

    def iter_predict_files(self, paths: Sequence[str | os.PathLike], *, chunk_size: int = 1024,
                           batch_size: int | None = None, progress: bool = False,
                           tta: bool = False):
        """`predict_files` in chunks of `chunk_size` files, in input order: memory stays
        bounded by one chunk however many files there are."""
        check_is_fitted(self)
        runner = FlipViews.trained(self._get_runner(), self.augment_) if tta else self._get_runner()
        for chunk, result in self._feature_chunks(paths, chunk_size, progress, runner, batch_size):
            views = result.features.reshape(len(chunk), getattr(runner, "n_views", 1), -1)
            proba = np.mean([self.proba_from_features(views[:, v])
                             for v in range(views.shape[1])], axis=0)
            proba[~result.ok] = np.nan
            yield Predictions(chunk, proba, self.classes_, result.failures)

    def predict_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                      progress: bool = False, tta: bool = False) -> Predictions:
        """Calibrated probabilities for files; an unreadable file gets a NaN row and its reason
        (`preds.errors`: e.g. ['', 'io_error: No such file or directory (missing.jpg)']). `tta`
        averages them over the image and the flips its training augmentation used."""
        chunks = list(self.iter_predict_files(paths, chunk_size=max(len(paths), 1),
                                              batch_size=batch_size, progress=progress, tta=tta))
        if not chunks:
            return Predictions(np.array([], dtype=str), np.zeros((0, len(self.classes_))),
                               self.classes_, [])
        return chunks[0]

    def predict_proba_images(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of a uint8 batch (n, s, s, 3) at the model's input size."""
        return self.proba_from_features(self.embed(np.asarray(images, np.uint8)))

    def proba_from_features(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from backbone features (the head plus temperature; per
        label, the head plus Platt scaling for a multi-label model)."""
        check_is_fitted(self)
        if self.multilabel_:
            return platt_proba(self._stored.outputs(features), *self.platt_)
        return self._stored.proba(features)  # a loaded model may have built its head only

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities, shape (n_images, n_classes), columns in `classes_`;
        `X` is what `fit` takes, without labels. A multi-label model's rows are each label's
        own probability (they need not sum to 1).

        Raises:
            ImageLoadError: a file cannot be decoded (use `predict_files` to get error rows).
        """
        preds = self.predict_files(as_index(X, folder=cache_folder(self.cache_dir)).paths)
        raise_first_failure(preds.failures, preds.paths)
        return preds.proba

    def predict(self, X) -> np.ndarray:
        """Predicted class names, exactly as in `classes_` (an object array: NumPy's fixed-width
        strings would drop trailing NUL characters of a name). A multi-label model returns
        scikit-learn's indicator matrix (n_images, n_labels) of 0/1, a label set where its
        probability reaches its threshold (`thresholds_`)."""
        check_is_fitted(self)
        proba = self.predict_proba(X)
        if self.multilabel_:
            return (proba >= self.thresholds_).astype(np.int64)
        return np.array(self.classes_, dtype=object)[proba.argmax(axis=1)]

    def score(self, X, y=None) -> float:
        """Balanced accuracy on an `ImageIndex` (or paths or an image array, with labels `y`);
        a multi-label model's macro F1 over its labels (y: label sets or a 0/1 matrix)."""
        check_is_fitted(self)
        if self.multilabel_ and (isinstance(X, (str, os.PathLike)) or is_table(X)):
            X = open_dataset(X, SourceOptions(task="multilabel"), min_classes=1)
        index = as_index(X, y, folder=cache_folder(self.cache_dir), classes=self.classes_)
        index = index.with_classes(self.classes_)
        if self.multilabel_:
            if not index.is_multilabel:
                raise ConfigError("This model predicts label sets: score it on label sets "
                                  "(lists or a 0/1 matrix as y, or a table of them).")
            return float(multilabel_metrics(index.tags, self.predict_proba(index), self.classes_,
                                            self.thresholds_)["macro_f1"])
        pred = self.predict_proba(index).argmax(axis=1)
        recalls = [(pred[index.labels == c] == c).mean() for c in np.unique(index.labels)]
        return float(np.mean(recalls))

def load_model(path: str | os.PathLike):
    """Load a model folder (or a run folder) into a fitted `ImageClassifier`, or an
    `ImageRegressor` for a regression's folder. Only the folder is needed: no training data,
    no pretrained-weights package, no network.

    Raises:
        ModelFormatError: missing files, a pickle file, a weights checksum mismatch, or a
            `model.json` this version cannot read.
    """
    meta, state, _ = read_model_folder(path)
    if meta.get("task") == "regress":
        return ImageRegressor.from_config(meta, state)
    return ImageClassifier.from_config(meta, state)
