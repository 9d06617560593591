"""`ImageModel`: what `ImageClassifier` and `ImageRegressor` share once fitted (or loaded): the
network behind a `StoredNet`, the backbone runner that computes its features (a cached graph,
built on first use), features of files and of decoded batches, and saving the model folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from imagefit._fileio import cache_folder
from imagefit._validation import check_is_fitted
from imagefit.base import BaseEstimator
from imagefit.bundle import write_model_folder
from imagefit.data.index import ImageIndex
from imagefit.errors import ModelFormatError
from imagefit.features.extract import (BackboneRunner, FeatureResult, compute_features,
                                       raise_first_failure)
from imagefit.models.net import ImageClassifierNet, StoredNet
from imagefit.progress import progress_bar
from imagefit.train.settings import Settings, workers_for


@contextlib.contextmanager
def rebuilding():
    """Around `from_config`: whatever goes wrong (JSON of the wrong shape, weights that do not
    fit it) is a `ModelFormatError` naming it."""
    try:
        yield
    except Exception as exc:  # any type: metadata and tensors come from a file
        raise ModelFormatError(f"The model could not be rebuilt from its metadata: "
                               f"{type(exc).__name__}: {exc}") from None


class ImageModel(BaseEstimator):
    """Base of the estimators. A subclass sets `_stored` (a `StoredNet`), `_backbone_key`,
    `preprocessing_`, `device_` and `_runner = None` when it is fitted or loaded, implements
    `get_config()`, and names in `_FITTED` an attribute only a fitted model has."""

    _FITTED = "classes_"

    @property
    def net_(self) -> ImageClassifierNet:
        """The network (a loaded model builds it on first use; prediction may not need it)."""
        return self._stored.net

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model folder (model.safetensors + model.json); returns its path."""
        meta = self.get_config()  # raises NotFittedError first
        return write_model_folder(path, self.net_.state_dict(), meta)

    def embed(self, X) -> np.ndarray:
        """Backbone features (the head's inputs): of a uint8 batch (n, s, s, 3) at the model's
        input size, or of image files (paths or an `ImageIndex`; a file that fails raises)."""
        check_is_fitted(self, self._FITTED)
        if isinstance(X, np.ndarray) and X.dtype == np.uint8 and X.ndim == 4:
            return self._get_runner()(X)
        index = X if isinstance(X, ImageIndex) else ImageIndex.from_paths(X)
        result = self.embed_index(index)
        raise_first_failure(result.failures, index.paths)
        return result.features

    def embed_index(self, index: ImageIndex, *, progress: bool = False) -> FeatureResult:
        """Backbone features of an index's files, failures as values; with the files' hashes
        (`index.sha256`), rows are reused from and added to the feature store."""
        check_is_fitted(self, self._FITTED)
        runner = self._get_runner()
        store = None if index.sha256 is None else runner.store(cache_folder(self.cache_dir))
        return compute_features(index.paths, runner, keys=index.sha256, store=store,
                                batch_size=self.batch_size,
                                workers=workers_for(self.workers, len(index)),
                                max_pixels=self.max_pixels, progress=progress)

    def _restore_fitted(self, meta: dict, stored: StoredNet, settings: Settings) -> None:
        """Set the fitted attributes every estimator has, from model.json's metadata (the end
        of `fit` and of loading); the subclass's `_restore` adds its own."""
        self.settings_, self._stored, self._runner = settings, stored, None
        self._backbone_key = meta.get("backbone_key")
        self.training_ = dict(meta.get("training") or {})
        self.history_ = list(self.training_.get("history", []))
        for key in ("best_epoch", "unfreeze", "n_train", "n_val"):
            setattr(self, f"{key}_", self.training_.get(key))
        for key in ("mode", "augment", "device", "preprocessing"):
            setattr(self, f"{key}_", getattr(settings, key))
        self.backbone_name_ = settings.backbone

    def _feature_chunks(self, paths, chunk_size: int, progress: bool, runner=None,
                        batch_size: int | None = None) -> Iterator[tuple[np.ndarray,
                                                                         FeatureResult]]:
        """(paths, their `FeatureResult`) `chunk_size` files at a time, in input order, under
        one progress bar: prediction's memory stays bounded by a chunk."""
        check_is_fitted(self, self._FITTED)
        runner = runner or self._get_runner()
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        bar = progress_bar(total=len(path_array), desc="Predicting", unit="img", enabled=progress)
        try:
            for start in range(0, len(path_array), chunk_size):
                chunk = path_array[start:start + chunk_size]
                yield chunk, compute_features(
                    chunk, runner, batch_size=batch_size or self.batch_size,
                    workers=workers_for(self.workers, len(path_array)),
                    max_pixels=self.max_pixels, bar=bar)
        finally:
            bar.close()

    def _get_runner(self) -> BackboneRunner:
        if self._runner is None:
            self._runner = BackboneRunner.of_model(self._stored, self._backbone_key,
                                                   self.preprocessing_, device=self.device_,
                                                   cache_dir=cache_folder(self.cache_dir))
        return self._runner
