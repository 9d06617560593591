"""`ImageClassifier`: the scikit-learn-style estimator over image files. `__init__` stores
parameters only; `fit` validates them, runs the pre-flight where needed, trains and calibrates, and
sets attributes ending in "_"; using it before `fit` raises `NotFittedError`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from imagefit.data.audit import preflight
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.data.index import ImageIndex
from imagefit.data.augment import Augmenter, resolve_augment
from imagefit.data.sampling import (BalancedSampler, class_weights, logit_adjustment,
                                    resolve_balance, stacked_correction_warning)
from imagefit.errors import ConfigError, DatasetError, ImageLoadError, NotFittedError
from imagefit.features.extract import BackboneRunner, DecodeRunner, compute_features
from imagefit.features.store import FeatureStore, default_cache_dir
from imagefit.models.backbones import create_backbone, get_spec, preprocessing_for, resolve_device
from imagefit.models.net import ImageClassifierNet
from imagefit.progress import progress_bar
from imagefit.seeding import seed_everything
from imagefit.train.calibrate import fit_temperature
from imagefit.train import distributed
from imagefit.train.checkpoint import Checkpointer
from imagefit.train.engine import LoopHooks, LoopSettings, StepSettings, fit_loop
from imagefit.train.finetune import (MIN_BATCH_FOR_BN, BackboneSplit, LowerRunner, TopNet,
                                     default_unfreeze, param_groups, split_backbone)
from imagefit.train.loader import CachedImages, TrainLoader, shuffled_indices

MODES = ("auto", "probe", "finetune", "scratch")
# Per-mode defaults: (backbone, epochs, patience, lr, dropout). "finetune" first runs the probe
# stage with the probe defaults, then its own stage with these.
_MODE_DEFAULTS = {"probe": ("efficientnet_lite0", 100, 15, 1e-3, 0.2),
                  "finetune": ("efficientnet_lite0", 40, 15, 1e-3, 0.2),
                  "scratch": ("simple_cnn", 50, 10, 1e-3, 0.5)}
# "auto" fine-tunes on a CPU up to this many training images; beyond, it probes (fine-tuning
# a larger set takes hours on a laptop; pass mode="finetune" with a time budget to do it anyway).
AUTO_FINETUNE_MAX_CPU = 20_000


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
            "finetune" does that, then unfreezes the top stages and trains them with the head
            on augmented images; "scratch" trains the whole network from random weights;
            "auto" (default): "scratch" for a backbone without pretrained weights, "finetune"
            on a GPU or up to 20,000 training images, else "probe".
        image_size: input side in pixels (default: the backbone's own).
        augment: "auto" ("light" when images are trained on, i.e. finetune and scratch),
            "none", "light", "keras", "strong", a YAML file, a mapping of `AugmentConfig`
            fields, or an `AugmentConfig`. Never applied to validation or prediction.
        balance: "auto" (none up to 1.5x imbalance, class weights up to 10x, a balanced
            sampler beyond), "weights", "sampler" (every class drawn equally often, each draw
            augmented afresh) or "none".
        class_weight: the weights "weights" uses: "balanced" (default), "effective_number",
            or a dict {class: weight}.
        max_per_class: with the sampler, draw at most this many images per class and epoch
            (under-sampling of very large classes).
        logit_adjustment: add tau * log(prior) to the logits in the loss (Menon et al. 2021);
            a float tau, or False.
        unfreeze: top stages to fine-tune (default by training-set size, see
            `train.finetune.default_unfreeze`).
        time_budget: minutes; training stops after the epoch that passes it, keeping the best.
        checkpoint_dir: save resumable state there after every epoch.
        resume: continue from the state in `checkpoint_dir`.
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

    def __init__(self, backbone: str | None = None, *, mode: str = "auto",
                 image_size: int | None = None, augment="auto", balance: str = "auto",
                 class_weight=None, max_per_class: int | None = None,
                 logit_adjustment: float | bool = False, unfreeze: int | None = None,
                 epochs: int | None = None,
                 batch_size: int = 64, lr: float | None = None, dropout: float | None = None,
                 val_fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 workers: int | None = None, weights: str | None = None,
                 cache_dir: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 time_budget: float | None = None, checkpoint_dir: str | None = None,
                 resume: bool = False, verbose: bool = False):
        self.backbone = backbone
        self.mode = mode
        self.image_size = image_size
        self.augment = augment
        self.balance = balance
        self.class_weight = class_weight
        self.max_per_class = max_per_class
        self.logit_adjustment = logit_adjustment
        self.unfreeze = unfreeze
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
        self.time_budget = time_budget
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
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
        self.mode_ = self._resolve_mode(settings["backbone"], len(train))
        settings = self._resolved_settings(self.mode_)
        self._resolve_imbalance(counts)
        self.augment_ = resolve_augment(self._augment_spec())
        self.device_ = resolve_device(self.device)
        self.preprocessing_ = preprocessing_for(settings["backbone"], self.image_size)
        self.backbone_name_ = settings["backbone"]
        self.bad_files_ = list(train.report.bad_files)
        if val.report is not train.report:
            self.bad_files_ += val.report.bad_files
        self.n_train_, self.n_val_ = len(train), len(val)
        backbone = create_backbone(settings["backbone"], image_size=self.preprocessing_.image_size,
                                   pretrained=self.mode_ != "scratch", weights=self.weights)
        self.net_ = ImageClassifierNet(backbone, len(self.classes_), settings["dropout"])
        self._started = time.perf_counter()
        self._dist = distributed.current()
        self._checkpointer = self._make_checkpointer(train, val)
        self.history_, self.unfreeze_ = [], None
        if self.mode_ in ("probe", "finetune"):
            _, epochs, patience, lr, _ = _MODE_DEFAULTS["probe"]
            loop = LoopSettings(epochs, lr, patience, "probe", time_budget_s=self._budget_left())
            if self.mode_ == "probe":
                loop.epochs, loop.lr = settings["epochs"], settings["lr"]
            val_logits, y_val = self._fit_probe(train, val, loop)
        if self.mode_ in ("finetune", "scratch"):
            val_logits, y_val = self._fit_images(train, val, settings)
        temperature = fit_temperature(val_logits, y_val)
        # Whatever device training used, the fitted model lives on the CPU (it is moved for
        # prediction as needed): explain, export and save work right after fit.
        self.net_ = self.net_.cpu().eval()
        self.net_.temperature.fill_(temperature)
        self.temperature_ = temperature
        self._runner = None
        return self

    def _resolve_mode(self, backbone: str, n_train: int) -> str:
        if self.mode != "auto":
            return self.mode
        if not get_spec(backbone).pretrained:
            return "scratch"
        if resolve_device(self.device) == "cuda" or n_train <= AUTO_FINETUNE_MAX_CPU:
            return "finetune"
        return "probe"

    def _augment_spec(self):
        if isinstance(self.augment, str) and self.augment == "auto":
            return "none" if self.mode_ == "probe" else "light"
        if self.mode_ == "probe" and not resolve_augment(self.augment).is_identity:
            warnings.warn("mode 'probe' trains on features computed once per image, so the "
                          "augmentation is not used; use mode 'finetune' to train with it.",
                          stacklevel=3)
            return "none"
        return self.augment

    def _resolve_imbalance(self, counts: np.ndarray) -> None:
        self.balance_ = resolve_balance(self.balance, counts)
        spec = self.class_weight
        if spec is None:
            spec = "balanced" if self.balance_ == "weights" else "none"
        warning = stacked_correction_warning(self.balance_, self.class_weight)
        if warning:
            warnings.warn(warning, stacklevel=3)
        self.class_weight_ = class_weights(spec, counts, self.classes_)
        tau = self.logit_adjustment
        self.logit_adjustment_ = (None if tau is False or tau is None
                                  else logit_adjustment(counts, 1.0 if tau is True else tau))

    def _resolved_settings(self, mode: str | None = None) -> dict:
        if self.mode not in MODES:
            raise ConfigError(f"The 'mode' parameter must be one of {list(MODES)}. "
                              f"Got {self.mode!r} instead.")
        if mode is None:
            mode = "probe" if self.mode == "auto" else self.mode
            if self.mode == "auto" and self.backbone and not get_spec(self.backbone).pretrained:
                mode = "scratch"
        backbone, epochs, patience, lr, dropout = _MODE_DEFAULTS[mode]
        backbone = self.backbone or backbone
        if mode in ("probe", "finetune") and not get_spec(backbone).pretrained:
            raise ConfigError(f"Backbone {backbone!r} has no pretrained weights to {mode}; use "
                              f"mode='scratch' (--mode scratch) or a pretrained backbone.")
        checks = [("epochs", self.epochs, int, 1, 100_000), ("batch_size", self.batch_size, int, 1,
                  65_536), ("lr", self.lr, float, 1e-8, 10.0), ("dropout", self.dropout, float,
                  0.0, 0.95), ("seed", self.seed, int, 0, 2**32 - 1),
                  ("workers", self.workers, int, 0, 256), ("unfreeze", self.unfreeze, int, 1, 100),
                  ("max_per_class", self.max_per_class, int, 1, 2**40),
                  ("time_budget", self.time_budget, float, 0.0, 1e7)]
        for name, value, kind, lo, hi in checks:
            if value is None:
                continue
            ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
            if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
                raise ConfigError(f"The {name!r} parameter must be {'an int' if kind is int else 'a float'} "
                                  f"in [{lo}, {hi}]. Got {value!r} instead.")
        if not (isinstance(self.augment, str) and self.augment == "auto"):
            resolve_augment(self.augment)  # a bad preset or YAML file fails before any work
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume=True needs checkpoint_dir (the CLI's --resume needs --out "
                              "of the run to continue).")
        return {"backbone": backbone, "epochs": self.epochs or epochs, "patience": patience,
                "lr": self.lr or lr, "dropout": dropout if self.dropout is None else self.dropout}

    def _budget_left(self) -> float | None:
        if self.time_budget is None:
            return None
        return max(self.time_budget * 60 - (time.perf_counter() - self._started), 0.0)

    def _make_checkpointer(self, train: ImageIndex, val: ImageIndex) -> Checkpointer | None:
        if not self.checkpoint_dir:
            return None
        skip = {"verbose", "workers", "cache_dir", "resume", "time_budget", "checkpoint_dir",
                "device"}
        params = {k: repr(v) for k, v in self.get_params().items() if k not in skip}
        params["augment"] = repr(self.augment_)  # the settings, not a YAML file's name
        params["world_size"] = self._dist.world_size  # a rank's position is per world size
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
        for index in (train, val):
            digest.update("\n".join(map(str, index.sha256 if index.sha256 is not None
                                        else index.paths)).encode())
        checkpointer = Checkpointer(self.checkpoint_dir, digest.hexdigest()[:32],
                                    writer=self._dist.is_main)
        if not self.resume and any(checkpointer.folder.glob("*.pt")):
            raise ConfigError(f"{checkpointer.folder} already holds checkpoints: pass "
                              f"resume=True (--resume) to continue that run, or train into "
                              f"a new folder.")
        if self._dist.is_main:
            checkpointer.clean_temp_files()
        return checkpointer

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
        # Head training on features is cheap: every rank runs all of it, identically.
        draws = self._draws(train.labels, shard=False)
        batches = lambda epoch, first: ((xt[b], yt[b]) for b in torch.from_numpy(
            draws(epoch)).split(self.batch_size)[first:])
        loop.steps_per_epoch = -(-len(draws(1)) // self.batch_size)
        # Dropout draws from torch's global generator; seed it here so that what ran before
        # (decoding or not, depending on the cache) cannot change the run.
        torch.manual_seed(self.seed)
        history, self.best_epoch_ = fit_loop(
            head, batches, lambda: head(xv), val.labels, len(self.classes_), loop,
            step_settings=StepSettings(class_weight=self.class_weight_,
                                       logit_adjustment=self.logit_adjustment_),
            hooks=LoopHooks(checkpointer=self._checkpointer,
                            batch_files=self._batch_files(train, draws), progress=self.verbose))
        self.history_ = history
        with torch.no_grad():
            val_logits = head(xv).numpy()
        self.val_index_ = val
        self.val_logits_ = val_logits
        return val_logits, val.labels

    def _draws(self, labels: np.ndarray, shard: bool = True):
        """epoch -> the training rows drawn that epoch (balanced sampler or a shuffle); under
        torchrun, this rank's share of them."""
        if self.balance_ == "sampler":
            full = BalancedSampler(labels, seed=self.seed, max_per_class=self.max_per_class).indices
        else:
            full = shuffled_indices(len(labels), self.seed)
        if not shard or not self._dist.enabled:
            return full
        return lambda epoch: self._dist.shard_epoch(full(epoch))

    def _batch_files(self, train: ImageIndex, draws) -> Callable[[int, int], np.ndarray]:
        """(epoch, batch) -> the files of that training batch (named when its loss is NaN)."""
        size = self.batch_size
        return lambda epoch, batch: train.paths[draws(epoch)[batch * size:(batch + 1) * size]]

    def _features(self, index: ImageIndex, runner: BackboneRunner, store: FeatureStore):
        self._fill_shard(index, runner, store)
        result = compute_features(index.paths, runner, keys=index.sha256, store=store,
                                  batch_size=self.batch_size, workers=self._workers(len(index)),
                                  max_pixels=self.max_pixels, progress=self.verbose)
        self.bad_files_.extend(result.failed)
        return result.features[result.ok], index.take(result.ok)

    def _fill_cache(self, index: ImageIndex, decode: DecodeRunner,
                    images: FeatureStore) -> ImageIndex:
        """Decode only what the cache lacks, a chunk at a time (memory stays bounded)."""
        self._fill_shard(index, decode, images)
        todo = np.flatnonzero(images.missing(index.sha256))
        ok = np.ones(len(index), bool)
        with progress_bar(total=len(todo), desc="Decoding images", unit="img",
                          enabled=self.verbose) as bar:
            for start in range(0, len(todo), 2048):
                rows = todo[start:start + 2048]
                ok[rows] = self._compute(index.take(rows), decode, images, bar=bar).ok
        return index if ok.all() else index.take(ok)

    def _fill_shard(self, index: ImageIndex, runner, store: FeatureStore) -> None:
        """Under torchrun, each rank first computes its share of the missing rows into the
        shared store; after the barrier every rank finds all of them there."""
        if not self._dist.enabled:
            return
        todo = np.flatnonzero(store.missing(index.sha256))
        self._compute(index.take(todo[self._dist.shard(len(todo))]), runner, store)
        self._dist.barrier()

    def _compute(self, index: ImageIndex, runner, store: FeatureStore, bar=None):
        result = compute_features(index.paths, runner, keys=index.sha256, store=store,
                                  batch_size=self.batch_size, workers=self._workers(len(index)),
                                  max_pixels=self.max_pixels, bar=bar)
        self.bad_files_.extend(result.failed)
        return result

    def _fit_images(self, train: ImageIndex, val: ImageIndex, settings: dict):
        """Train on augmented images: the top of the backbone plus the head (finetune), or
        the whole network (scratch). Images come from the decoded-image cache."""
        decode = DecodeRunner(self.preprocessing_, self.max_pixels)
        images = decode.store(_ensure(self._cache_dir()))
        images.clean_stale_temp_files()
        train = self._fill_cache(train, decode, images)
        val_images, val = self._features(val, decode, images)
        self.n_train_, self.n_val_ = len(train), len(val)
        if len(train) == 0:
            raise DatasetError("No usable training images remain after decoding.")
        if self.mode_ == "finetune":
            self.unfreeze_ = self.unfreeze or default_unfreeze(len(train))
            split = split_backbone(self.net_.backbone, self.unfreeze_)
            groups = param_groups(self.net_.head, split, settings["lr"])
        else:
            self.unfreeze_ = None
            split = BackboneSplit(None, self.net_.backbone, [])
            groups = None
        lower = LowerRunner(split.lower, self.preprocessing_, device=self.device_,
                            cache_dir=_ensure(self._cache_dir()))
        draws = self._draws(train.labels)
        n_draws = len(draws(1))
        # Batch norm learns from batch statistics: always from scratch, when fine-tuning only
        # with batches large enough to estimate them; a smaller last batch is then dropped.
        train_bn = self.mode_ == "scratch" or min(self.batch_size, n_draws) >= MIN_BATCH_FOR_BN
        drop_last = (train_bn and n_draws > self.batch_size
                     and 0 < n_draws % self.batch_size < MIN_BATCH_FOR_BN)
        top = TopNet(split.upper, self.net_.head, train_bn=train_bn).to(self.device_)
        if self.device_ == "cpu":
            top = top.to(memory_format=torch.channels_last)
        dataset = CachedImages(*images.resolve(train.sha256), train.labels,
                               Augmenter(self.augment_), seed=self.seed)
        loader = TrainLoader(dataset, draws, batch_size=self.batch_size,
                             workers=self._workers(len(train)), drop_last=drop_last,
                             rank=self._dist.rank, world_size=self._dist.world_size)
        # Validation images are never augmented; with a frozen lower part their lower
        # outputs are the same every epoch, so they are computed once.
        val_lower = lower.features(val_images) if split.lower is not None else None

        def batches(epoch, first):
            for batch, labels in loader.epoch(epoch, first):
                yield lower(batch), labels

        def val_logits():
            if val_lower is not None:
                chunks = [top(val_lower[s:s + 256].to(self.device_)).cpu()
                          for s in range(0, len(val_lower), 256)]
            else:
                chunks = [top(lower(torch.from_numpy(val_images[s:s + 256]))).cpu()
                          for s in range(0, len(val_images), 256)]
            return torch.cat(chunks) if chunks else torch.zeros(0, len(self.classes_))

        steps = n_draws // self.batch_size if drop_last else -(-n_draws // self.batch_size)
        loop = LoopSettings(settings["epochs"], settings["lr"], settings["patience"], self.mode_,
                            weight_decay=1e-4 if self.mode_ == "finetune" else 0.0,
                            schedule="cosine", warmup_steps=steps, steps_per_epoch=steps,
                            time_budget_s=self._budget_left())
        torch.manual_seed(self.seed + 1)  # as in _fit_probe; a stream of its own
        history, self.best_epoch_ = fit_loop(
            top, batches, val_logits, val.labels, len(self.classes_), loop,
            step_settings=StepSettings(class_weight=self.class_weight_,
                                       logit_adjustment=self.logit_adjustment_,
                                       param_groups=groups, device=self.device_),
            hooks=LoopHooks(checkpointer=self._checkpointer,
                            train_model=distributed.wrap(top, self._dist, self.device_),
                            batch_files=self._batch_files(train, draws), progress=self.verbose))
        self.history_ = self.history_ + history
        self.lower_runtime_ = lower.runtime
        with torch.no_grad():
            logits = val_logits().numpy()
        self.val_index_ = val
        self.val_logits_ = logits
        return logits, val.labels

    # prediction ------------------------------------------------------------------------------
    def iter_predict_files(self, paths: Sequence[str | os.PathLike], *, chunk_size: int = 1024,
                           batch_size: int | None = None, progress: bool = False,
                           tta: bool = False):
        """`predict_files` in chunks of `chunk_size` files, in input order: memory stays
        bounded by one chunk however many files there are."""
        self._check_fitted()
        runner = self._get_runner()
        if tta:
            runner = FlipViews(runner, self._tta_flips())
        path_array = np.array([os.fspath(p) for p in paths], dtype=str)
        bar = progress_bar(total=len(path_array), desc="Predicting", unit="img", enabled=progress)
        try:
            for start in range(0, len(path_array), chunk_size):
                chunk = path_array[start:start + chunk_size]
                result = compute_features(chunk, runner, batch_size=batch_size or self.batch_size,
                                          workers=self._workers(len(path_array)),
                                          max_pixels=self.max_pixels, bar=bar)
                if tta:
                    views = result.features.reshape(len(chunk), runner.n_views, -1)
                    proba = np.mean([self.proba_from_features(views[:, v])
                                     for v in range(runner.n_views)], axis=0)
                else:
                    proba = self.proba_from_features(result.features)
                proba[~result.ok] = np.nan
                yield Predictions(chunk, proba, self.classes_, result.errors)
        finally:
            bar.close()

    def predict_files(self, paths: Sequence[str | os.PathLike], *, batch_size: int | None = None,
                      progress: bool = False, tta: bool = False) -> Predictions:
        """Calibrated probabilities for files; an unreadable file gets a NaN row and an error.

        With `tta`, the probabilities are averaged over the image and its flips, using the
        flips the training augmentation used (test-time augmentation).

        Example:
            >>> preds = clf.predict_files(["a.jpg", "missing.jpg"])  # doctest: +SKIP
            >>> preds.errors                                        # doctest: +SKIP
            ['', 'io_error: No such file or directory (missing.jpg)']
        """
        chunks = list(self.iter_predict_files(paths, chunk_size=max(len(paths), 1),
                                              batch_size=batch_size, progress=progress, tta=tta))
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
        """Predicted class names, exactly as in `classes_` (an object array: NumPy's fixed-width
        strings would drop trailing NUL characters of a name)."""
        self._check_fitted()
        return np.array(self.classes_, dtype=object)[self.predict_proba(X).argmax(axis=1)]

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
    def _tta_flips(self) -> tuple[str, ...]:
        config = getattr(self, "augment_", None)
        flips = tuple(name for name, used in (("horizontal", config and config.horizontal_flip),
                                              ("vertical", config and config.vertical_flip))
                      if used)
        if not flips:
            raise ConfigError("Test-time augmentation averages over the flips the model was "
                              "trained with, and this model was trained without flips; predict "
                              "without --tta.")
        return flips

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


class FlipViews:
    """Wraps a backbone runner: features of each image and of its flips, side by side."""

    def __init__(self, runner: BackboneRunner, flips: tuple[str, ...]):
        self.runner, self.prep, self.runtime = runner, runner.prep, runner.runtime
        self.n_views = 1 + len(flips)
        self.flips = flips
        self.dim = runner.dim * self.n_views

    def __call__(self, images: np.ndarray) -> np.ndarray:
        views = [images] + [np.ascontiguousarray(images[:, :, ::-1] if flip == "horizontal"
                                                 else images[:, ::-1]) for flip in self.flips]
        return np.concatenate([self.runner(v) for v in views], axis=1)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
