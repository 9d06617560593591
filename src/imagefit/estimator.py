"""`ImageClassifier`: the scikit-learn-style estimator over image files. `__init__` stores
parameters only; `fit` validates them, runs the pre-flight where needed, trains and calibrates, and
sets attributes ending in "_"; using it before `fit` raises `NotFittedError`.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from imagefit.data.audit import preflight
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.index import BadFile, ImageIndex
from imagefit.data.sampling import balanced_class_weights, resolve_balance
from imagefit.errors import ConfigError, DatasetError, ImageLoadError, NotFittedError
from imagefit.features.extract import BackboneRunner, compute_features, iter_image_batches
from imagefit.features.store import FeatureStore, default_cache_dir
from imagefit.models.backbones import (create_backbone, get_spec, preprocessing_for,
                                       resolve_device, to_input)
from imagefit.models.net import ImageClassifierNet
from imagefit.progress import progress_bar
from imagefit.seeding import seed_everything
from imagefit.train.calibrate import fit_temperature
from imagefit.train.engine import LoopSettings, fit_loop, shuffled_batches

MODES = ("probe", "scratch")
# Per-mode defaults: (backbone, epochs, patience, lr, dropout).
_MODE_DEFAULTS = {"probe": ("efficientnet_lite0", 100, 15, 1e-3, 0.2),
                  "scratch": ("simple_cnn", 50, 10, 1e-3, 0.5)}


@dataclass
class Predictions:
    """Predictions over files: calibrated probabilities, NaN rows where a file failed."""

    paths: np.ndarray
    proba: np.ndarray
    classes: tuple[str, ...]
    errors: list[str]

    @property
    def ok(self) -> np.ndarray:
        return np.array([not e for e in self.errors], dtype=bool)


class ImageClassifier:
    """An image classifier trained from folders of images.

    Args:
        backbone: a registry name ("efficientnet_lite0", "simple_cnn", ...) or any timm model
            name; default "efficientnet_lite0" for mode "probe", "simple_cnn" for "scratch".
        mode: "probe" trains a dropout + linear head on frozen pretrained features;
            "scratch" trains the whole network from random weights.
        image_size: input side in pixels (default: the backbone's own).
        balance: "auto" (class weights when the largest class is over 1.5x the smallest),
            "weights" (scikit-learn "balanced" class weights), or "none".
        epochs, lr, dropout: training settings (defaults depend on the mode).
        batch_size: mini-batch size.
        val_fraction: used when `fit` gets no validation set.
        seed: seeds the split, initialisation and batch order.
        device: "auto", "cpu" or "cuda".
        workers: image-decoding processes (default: chosen by dataset size).
        weights: a `.safetensors` file of backbone weights (for timm models offline).
        cache_dir: feature store location (default `$IMAGEFIT_CACHE` or ~/.cache/imagefit).
        max_pixels: decompression-bomb limit per image.
        verbose: show progress bars.

    Example:
        >>> clf = ImageClassifier(image_size=96).fit(imagefit.scan_folder("data/"))  # doctest: +SKIP
        >>> clf.predict(["new.jpg"])                                                # doctest: +SKIP
        array(['cat'], dtype='<U3')
    """

    def __init__(self, backbone: str | None = None, *, mode: str = "probe",
                 image_size: int | None = None, balance: str = "auto", epochs: int | None = None,
                 batch_size: int = 64, lr: float | None = None, dropout: float | None = None,
                 val_fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 workers: int | None = None, weights: str | None = None,
                 cache_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 verbose: bool = False):
        self.backbone = backbone
        self.mode = mode
        self.image_size = image_size
        self.balance = balance
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.dropout = dropout
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device
        self.workers = workers
        self.weights = weights
        self.cache_dir = cache_dir
        self.max_pixels = max_pixels
        self.verbose = verbose

    # scikit-learn protocol -------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params) -> "ImageClassifier":
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"Invalid parameter {key!r} for ImageClassifier. "
                                  f"Valid parameters are: {sorted(valid)}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = ImageClassifier().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"ImageClassifier({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # fitting ---------------------------------------------------------------------------------
    def fit(self, X, y=None, *, val: ImageIndex | None = None) -> "ImageClassifier":
        """Train on `X` and calibrate on the validation set.

        Args:
            X: an `ImageIndex` (e.g. from `scan_folder`), or a sequence of image paths.
            y: class names for paths; for an `ImageIndex` X, may be the validation
                `ImageIndex` (so `fit(train, val)` works).
            val: validation `ImageIndex`; default: split off `val_fraction` of X.

        Returns:
            self.
        """
        if isinstance(y, ImageIndex):
            val, y = y, None
        if not isinstance(X, ImageIndex) and y is None:
            raise ConfigError("fit() got image paths without labels: pass the class names as y, "
                              "or an ImageIndex from imagefit.scan_folder().")
        train = X if isinstance(X, ImageIndex) else ImageIndex.from_paths(X, y)
        settings = self._resolved_settings()
        seed_everything(self.seed)
        if val is None:
            train = self._checked(train)
            train, val = train.split(self.val_fraction, self.seed)
        else:
            train, val = self._checked(train), self._checked(val)
            val = val.with_classes(train.classes)
        if len(train) == 0:
            raise DatasetError("No usable training images remain after the pre-flight check.")
        counts = train.counts()
        self.classes_ = train.classes
        self.balance_ = resolve_balance(self.balance, counts)
        self.class_weight_ = (balanced_class_weights(counts) if self.balance_ == "weights"
                              else np.ones(len(counts)))
        self.device_ = resolve_device(self.device)
        self.preprocessing_ = preprocessing_for(settings["backbone"], self.image_size)
        self.backbone_name_ = settings["backbone"]
        self.bad_files_ = list(train.report.bad_files)
        if val.report is not train.report:
            self.bad_files_ += val.report.bad_files
        self.n_train_, self.n_val_ = len(train), len(val)
        backbone = create_backbone(settings["backbone"], image_size=self.preprocessing_.image_size,
                                   pretrained=self.mode == "probe", weights=self.weights)
        self.net_ = ImageClassifierNet(backbone, len(self.classes_), settings["dropout"])
        loop = LoopSettings(settings["epochs"], settings["lr"], settings["patience"], self.mode)
        if self.mode == "probe":
            val_logits, y_val = self._fit_probe(train, val, loop)
        else:
            val_logits, y_val = self._fit_scratch(train, val, loop)
        temperature = fit_temperature(val_logits, y_val)
        self.net_.eval()
        self.net_.temperature.fill_(temperature)
        self.temperature_ = temperature
        self._runner = None
        return self

    def _resolved_settings(self) -> dict:
        if self.mode not in MODES:
            raise ConfigError(f"The 'mode' parameter must be one of {list(MODES)}. "
                              f"Got {self.mode!r} instead.")
        backbone, epochs, patience, lr, dropout = _MODE_DEFAULTS[self.mode]
        backbone = self.backbone or backbone
        if self.mode == "probe" and not get_spec(backbone).pretrained:
            raise ConfigError(f"Backbone {backbone!r} has no pretrained weights to probe; use "
                              f"mode='scratch' (--mode scratch) or a pretrained backbone.")
        checks = [("epochs", self.epochs, int, 1, 100_000), ("batch_size", self.batch_size, int, 1,
                  65_536), ("lr", self.lr, float, 1e-8, 10.0), ("dropout", self.dropout, float,
                  0.0, 0.95), ("seed", self.seed, int, 0, 2**32 - 1),
                  ("workers", self.workers, int, 0, 256)]
        for name, value, kind, lo, hi in checks:
            if value is None:
                continue
            ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
                raise ConfigError(f"The {name!r} parameter must be {'an int' if kind is int else 'a float'} "
                                  f"in [{lo}, {hi}]. Got {value!r} instead.")
        return {"backbone": backbone, "epochs": self.epochs or epochs, "patience": patience,
                "lr": self.lr or lr, "dropout": dropout if self.dropout is None else self.dropout}

    def _checked(self, index: ImageIndex) -> ImageIndex:
        """Pre-flight unless the index already went through it (it then has hashes)."""
        if index.sha256 is not None:
            return index
        size = preprocessing_for(self._resolved_settings()["backbone"], self.image_size).image_size
        result = preflight(index, image_size=size, workers=self.workers,
                           max_pixels=self.max_pixels, progress=self.verbose)
        result.index.report.bad_files[:] = result.bad_files
        return result.index

    def _fit_probe(self, train: ImageIndex, val: ImageIndex, loop: LoopSettings):
        runner = self._make_runner()
        store = FeatureStore(self._cache_dir(), runner.key, runner.dim)
        store.clean_stale_temp_files()
        x_train, train = self._features(train, runner, store)
        x_val, val = self._features(val, runner, store)
        self.n_train_, self.n_val_ = len(train), len(val)
        head = self.net_.head
        xt, yt = torch.from_numpy(x_train), torch.from_numpy(train.labels)
        xv = torch.from_numpy(x_val)
        batches = lambda epoch: ((xt[b], yt[b]) for b in shuffled_batches(
            len(yt), self.batch_size, self.seed, epoch))
        self.history_, self.best_epoch_ = fit_loop(
            head, batches, lambda: head(xv), val.labels, len(self.classes_), loop,
            class_weight=self.class_weight_, progress=self.verbose)
        with torch.no_grad():
            val_logits = head(xv).numpy()
        self.val_index_ = val
        self.val_logits_ = val_logits
        return val_logits, val.labels

    def _features(self, index: ImageIndex, runner: BackboneRunner, store: FeatureStore):
        result = compute_features(index.paths, runner, keys=index.sha256, store=store,
                                  batch_size=self.batch_size, workers=self._workers(len(index)),
                                  max_pixels=self.max_pixels, progress=self.verbose)
        self.bad_files_.extend(result.failed)
        return result.features[result.ok], index.take(result.ok)

    def _fit_scratch(self, train: ImageIndex, val: ImageIndex, loop: LoopSettings):
        net, device = self.net_.to(self.device_), self.device_
        with tempfile.TemporaryDirectory(dir=_ensure(self._cache_dir())) as tmp:
            train_images, train = self._decode_all(train, Path(tmp) / "train.npy")
            val_images, val = self._decode_all(val, Path(tmp) / "val.npy")
            self.n_train_, self.n_val_ = len(train), len(val)
            prep, labels = self.preprocessing_, torch.from_numpy(train.labels)

            def batches(epoch):
                for b in shuffled_batches(len(labels), self.batch_size, self.seed, epoch):
                    rows = np.sort(b.numpy())
                    yield torch.from_numpy(to_input(train_images[rows], prep)), labels[rows]

            def val_logits():
                return torch.cat([net(torch.from_numpy(to_input(val_images[s:s + 256], prep))
                                      .to(device)).cpu() for s in range(0, len(val), 256)]
                                 or [torch.zeros(0, len(self.classes_))])

            self.history_, self.best_epoch_ = fit_loop(
                net, batches, val_logits, val.labels, len(self.classes_), loop,
                class_weight=self.class_weight_, device=device, progress=self.verbose)
            with torch.no_grad():
                logits = val_logits().numpy()
        self.net_ = net.cpu().eval()
        self.val_index_ = val
        self.val_logits_ = logits
        return logits, val.labels

    def _decode_all(self, index: ImageIndex, path: Path) -> tuple[np.ndarray, ImageIndex]:
        """Decode every image once into a uint8 memory map at working size."""
        size = self.preprocessing_.image_size
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                           shape=(len(index), size, size, 3))
        ok = np.ones(len(index), bool)
        start = 0
        for batch, errors in iter_image_batches(index.paths, self.preprocessing_,
                                                batch_size=self.batch_size,
                                                workers=self._workers(len(index)),
                                                max_pixels=self.max_pixels):
            images[start:start + len(batch)] = batch
            for offset, error in enumerate(errors):
                if error:
                    ok[start + offset] = False
                    reason, _, message = error.partition(":")
                    self.bad_files_.append(BadFile(str(index.paths[start + offset]), reason,
                                                   message))
            start += len(batch)
        if ok.all():
            return images, index
        return images[ok], index.take(ok)

    # prediction ------------------------------------------------------------------------------
    def iter_predict_files(self, paths: Sequence[str | os.PathLike], *, chunk_size: int = 1024,
                           batch_size: int | None = None, progress: bool = False):
        """`predict_files` in chunks of `chunk_size` files, in input order: memory stays
        bounded by one chunk however many files there are."""
        self._check_fitted()
        runner = self._get_runner()
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        bar = progress_bar(total=len(path_array), desc="Predicting", unit="img", enabled=progress)
        try:
            for start in range(0, len(path_array), chunk_size):
                chunk = path_array[start:start + chunk_size]
                result = compute_features(chunk, runner, batch_size=batch_size or self.batch_size,
                                          workers=self._workers(len(path_array)),
                                          max_pixels=self.max_pixels, bar=bar)
                proba = self.proba_from_features(result.features)
                proba[~result.ok] = np.nan
                yield Predictions(chunk, proba, self.classes_, result.errors)
        finally:
            bar.close()

    def predict_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                      progress: bool = False) -> Predictions:
        """Calibrated probabilities for files; an unreadable file gets a NaN row and an error.

        Example:
            >>> preds = clf.predict_files(["a.jpg", "missing.jpg"])  # doctest: +SKIP
            >>> preds.errors                                        # doctest: +SKIP
            ['', 'io_error: No such file or directory (missing.jpg)']
        """
        chunks = list(self.iter_predict_files(paths, chunk_size=max(len(paths), 1),
                                              batch_size=batch_size, progress=progress))
        if not chunks:
            return Predictions(np.array([], dtype=str), np.zeros((0, len(self.classes_))),
                               self.classes_, [])
        return chunks[0]

    def proba_from_features(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from backbone features (the head plus temperature)."""
        self._check_fitted()
        with torch.no_grad():
            logits = self.net_.head.eval()(torch.from_numpy(np.asarray(features, np.float32)))
            return self.net_.calibrated_proba(logits).numpy()

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated class probabilities, shape (n_images, n_classes), columns in `classes_`.

        Raises:
            ImageLoadError: a file cannot be decoded (use `predict_files` to get error rows).
        """
        paths = X.paths if isinstance(X, ImageIndex) else X
        preds = self.predict_files(paths)
        for path, error in zip(preds.paths, preds.errors):
            if error:
                reason, _, message = error.partition(": ")
                raise ImageLoadError(reason, f"{message} [{path}]")
        return preds.proba

    def predict(self, X) -> np.ndarray:
        """Predicted class names."""
        self._check_fitted()
        return np.asarray(self.classes_)[self.predict_proba(X).argmax(axis=1)]

    def score(self, X, y=None) -> float:
        """Balanced accuracy on an `ImageIndex` (or paths with class names `y`)."""
        self._check_fitted()
        index = X if isinstance(X, ImageIndex) else ImageIndex.from_paths(X, y, self.classes_)
        index = index.with_classes(self.classes_)
        pred = self.predict_proba(index).argmax(axis=1)
        recalls = [(pred[index.labels == c] == c).mean() for c in np.unique(index.labels)]
        return float(np.mean(recalls))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model folder (model.safetensors + model.json); returns its path."""
        from imagefit.bundle import save_model

        self._check_fitted()
        return save_model(self, path)

    # helpers ---------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise NotFittedError("This ImageClassifier is not fitted yet. Call 'fit' with "
                                 "training data, or load one with imagefit.load_model().")

    def _make_runner(self) -> BackboneRunner:
        return BackboneRunner(self.net_.backbone, self.preprocessing_, device=self.device_,
                              cache_dir=_ensure(self._cache_dir()))

    def _get_runner(self) -> BackboneRunner:
        if getattr(self, "_runner", None) is None:
            self._runner = self._make_runner()
        return self._runner

    def _cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def _workers(self, n: int) -> int:
        if self.workers is not None:
            return self.workers
        # Worker start-up costs about a second; small jobs decode faster in-process.
        return 0 if n < 512 else min(2, os.cpu_count() or 1)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
