"""The training stages of one `fit`, with explicit inputs: the probe stage (a head on cached
bottleneck features) and the image stage (fine-tuning the top of the backbone, or training from
scratch, on augmented images from the decoded-image cache). They share a `RunContext` (settings,
torchrun context, checkpoints, the bad files found on the way) and return a `StageResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from imagefit._fileio import cache_folder
from imagefit.data.audit import preflight
from imagefit.data.augment import Augmenter
from imagefit.data.index import BadFile, ImageIndex
from imagefit.data.sampling import BalancedSampler
from imagefit.data.sources import as_index
from imagefit.errors import ConfigError, DatasetError
from imagefit.features.extract import BackboneRunner, DecodeRunner, compute_features
from imagefit.features.store import FeatureStore
from imagefit.models.backbones import create_backbone
from imagefit.models.net import ImageClassifierNet
from imagefit.progress import progress_bar
from imagefit.train import distributed
from imagefit.train.checkpoint import Checkpointer
from imagefit.train.engine import LoopHooks, LoopSettings, StepSettings, fit_loop
from imagefit.train.finetune import (
    MIN_BATCH_FOR_BN,
    BackboneSplit,
    LowerRunner,
    TopNet,
    default_unfreeze,
    param_groups,
    split_backbone,
)
from imagefit.train.loader import CachedImages, TrainLoader, shuffled_indices
from imagefit.train.objectives import Classification, MultiLabel, Regression
from imagefit.train.settings import MODE_DEFAULTS, Settings, input_size, resolve_max_val

log = logging.getLogger(__name__)
# Probe features past this many bytes (50,000 rows of 1,280) are read from the store a window
# at a time (StoredRows), never gathered.
IN_MEMORY_FEATURES = 256_000_000
WINDOW_ROWS = 16384  # rows gathered at a time: batches of one window, validation in windows
# A regression's probe starts from the ridge solution up to this many training rows (an SVD of
# N x 1,280: seconds); beyond, there are steps enough to get there.
RIDGE_START_MAX = 20_000

# Parameters that do not change what a run computes: left out of the checkpoint fingerprint.
_NOT_FINGERPRINTED = {"verbose", "workers", "cache_dir", "resume", "time_budget",
                      "checkpoint_dir", "device"}


@dataclass
class StageResult:
    """What the last stage of a fit produced."""

    history: list[dict]
    best_epoch: int
    val_index: ImageIndex       # the validation rows that could be used
    val_logits: np.ndarray      # uncalibrated logits of the best epoch, rows of `val_index`
    n_train: int
    unfreeze: int | None = None
    stage: str = "probe"        # the stage whose best epoch is the model kept
    n_drawn: int | None = None  # distinct training images drawn, when epochs drew a subset

    def summary(self) -> dict:
        """What model.json keeps of the run ("training")."""
        return {"history": self.history, "best_epoch": int(self.best_epoch),
                "best_stage": self.stage, "unfreeze": self.unfreeze,
                "n_train": int(self.n_train), "n_val": len(self.val_index),
                "n_drawn": self.n_drawn}

    def best_score(self, score: Callable[[dict], tuple] = Classification.score
                   ) -> tuple[float, float] | None:
        """The kept epoch's `score` (the objective's: e.g. validation balanced accuracy,
        -loss), as the loop ranks epochs; None without a usable validation set."""
        rows = [r for r in self.history if r.get("stage") == self.stage]
        scores = [score(r) for r in rows]
        finite = [sc for sc in scores if all(np.isfinite(sc))]
        return max(finite) if finite and len(self.val_index) else None


@dataclass
class RunContext:
    """What every stage of one fit shares."""

    settings: Settings
    dist: distributed.Distributed
    checkpointer: Checkpointer | None = None
    progress: bool = False
    bad_files: list[BadFile] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    objective: Regression | MultiLabel | None = None  # None: classes, by the settings' weights

    @classmethod
    def for_data(cls, settings: Settings, dist: distributed.Distributed, train: ImageIndex,
                 val: ImageIndex, progress: bool = False) -> "RunContext":
        """A context whose bad files start with what the scan and pre-flight found."""
        bad = list(train.report.bad_files)
        if val.report is not train.report:
            bad += val.report.bad_files
        return cls(settings, dist, progress=progress, bad_files=bad)

    def budget_left(self) -> float | None:
        if self.settings.time_budget is None:
            return None
        return max(self.settings.time_budget * 60 - (time.perf_counter() - self.started), 0.0)

    def compute(self, index: ImageIndex, runner, store: FeatureStore, bar=None,
                progress: bool = False):
        """Rows of `runner` for `index` into `store`; failed files join `bad_files`."""
        result = compute_features(index.paths, runner, keys=index.sha256, store=store,
                                  batch_size=self.settings.batch_size,
                                  workers=self.settings.workers_for(len(index)),
                                  max_pixels=self.settings.max_pixels, bar=bar,
                                  progress=progress)
        if result.failed:  # each file once, though each stage may meet it
            known = {b.path for b in self.bad_files}
            self.bad_files.extend(b for b in result.failed if b.path not in known)
        return result

    def features(self, index: ImageIndex, runner, store: FeatureStore):
        """(rows, the index of the rows that could be computed)."""
        self.fill_shard(index, runner, store)
        result = self.compute(index, runner, store, progress=self.progress)
        if result.ok.all():
            return result.features, index
        return result.features[result.ok], index.take(result.ok)

    def feature_rows(self, index: ImageIndex, runner, store: FeatureStore):
        """`features`, except that rows past IN_MEMORY_FEATURES bytes stay in the store:
        `StoredRows`, read a window at a time, never gathered whole."""
        if len(index) * runner.dim * 4 <= IN_MEMORY_FEATURES:
            return self.features(index, runner, store)
        index = self.fill_store(index, runner, store, "Extracting features")
        return store.rows(index.sha256), index

    def fill_store(self, index: ImageIndex, runner, store: FeatureStore,
                   desc: str = "Decoding images") -> ImageIndex:
        """Compute only what the store lacks, a chunk at a time (memory stays bounded); the
        index of the rows that could be computed."""
        self.fill_shard(index, runner, store)
        failed = self.fill_rows(index, runner, store, np.arange(len(index)), desc)
        if not len(failed):
            return index
        keep = np.ones(len(index), bool)
        keep[failed] = False
        return index.take(keep)

    def fill_rows(self, index: ImageIndex, runner, store: FeatureStore, rows: np.ndarray,
                  desc: str | None = None) -> np.ndarray:
        """Compute the `rows` of `index` that `store` lacks, 2,048 at a time (memory stays
        bounded; a progress bar named `desc`, if given); returns the rows that failed."""
        todo = rows[store.missing(index.sha256[rows])]
        failed = [np.zeros(0, np.int64)]
        with progress_bar(total=len(todo), desc=desc, unit="img",
                          enabled=self.progress and desc is not None and len(todo) > 0) as bar:
            for start in range(0, len(todo), 2048):
                part = todo[start:start + 2048]
                failed.append(part[~self.compute(index.take(part), runner, store, bar=bar).ok])
        return np.concatenate(failed)

    def fill_shard(self, index: ImageIndex, runner, store: FeatureStore) -> None:
        """Under torchrun, each rank first computes its share of the missing rows into the
        shared store; after the barrier every rank finds all of them there."""
        if not self.dist.enabled:
            return
        # Shares of the whole index, not of what is missing: a rank that lists the missing
        # rows after another has begun to write them would share out another list.
        mine = self.dist.shard(len(index))
        self.compute(index.take(mine[store.missing(index.sha256[mine])]), runner, store)
        self.dist.barrier()
        store.refresh()  # now holding what the other ranks wrote

    def draws(self, labels: np.ndarray, shard: bool = True) -> Callable[[int], np.ndarray]:
        """epoch -> the training rows drawn that epoch (balanced sampler or a shuffle); under
        torchrun, this rank's share of them."""
        s = self.settings
        if s.balance == "sampler":
            full = BalancedSampler(labels, seed=s.seed, num_samples=s.epoch_size,
                                   max_per_class=s.max_per_class).indices
        else:
            full = shuffled_indices(len(labels), s.seed, s.epoch_size)
        if not shard or not self.dist.enabled:
            return full
        return lambda epoch: self.dist.shard_epoch(full(epoch))

    def draws_a_subset(self, labels: np.ndarray) -> bool:
        """Does an epoch draw fewer images than the training set holds (`max_per_class`,
        `epoch_size`)? Then each image is decoded, and its features computed, when it is
        first drawn (`DrawnFirst`), not all of them before the first step."""
        return len(self.draws(labels, shard=False)(1)) < len(labels)

    def batch_files(self, train: ImageIndex, draws) -> Callable[[int, int], np.ndarray]:
        """(epoch, batch) -> the files of that training batch (named when its loss is NaN)."""
        size = self.settings.batch_size
        return lambda epoch, batch: train.paths[draws(epoch)[batch * size:(batch + 1) * size]]

    def step_settings(self, **more) -> StepSettings:
        """The loss's class weights and logit adjustment (or the regression objective), plus
        `more` (groups, device)."""
        s = self.settings
        return StepSettings(class_weight=np.asarray(s.class_weight),
                            logit_adjustment=(None if s.logit_adjustment is None
                                              else np.asarray(s.logit_adjustment)),
                            objective=self.objective, **more)

    def targets(self, index: ImageIndex) -> np.ndarray:
        """What the loss compares the outputs with: class indices, standardised values, or
        0/1 rows of labels."""
        return index.labels if self.objective is None else self.objective.targets_of(index)

    def score(self, row: dict) -> tuple:
        """How the loop ranks a history row (higher is better)."""
        return (Classification if self.objective is None else self.objective).score(row)


class DrawnFirst:
    """epoch -> the training rows `draws` gives, after computing into `store` the rows it
    lacks among them: a run that draws a subset of a large set each epoch decodes and stores
    only what it draws, as it draws it. A row whose file fails is left out of the draws from
    then on (it joins the context's bad files). Under torchrun each rank fills the rows of its
    own draws; where every rank draws the same rows (`shared`: the probe), each computes its
    share of them, and after the barrier tries again what is still missing (so that every
    rank knows the files that failed).

    Example:
        >>> draws = DrawnFirst(ctx, train, runner, store, ctx.draws(labels))  # doctest: +SKIP
        >>> rows = draws(1)  # epoch 1's rows, each of them now in `store`     # doctest: +SKIP
    """

    def __init__(self, ctx: RunContext, index: ImageIndex, runner, store: FeatureStore,
                 draws: Callable[[int], np.ndarray], what: str = "decoded and cached",
                 shared: bool = False):
        self.ctx, self.index, self.runner, self.store, self.draws = ctx, index, runner, store, draws
        self.shared = shared and ctx.dist.enabled
        log.info(f"Each epoch draws {len(draws(1)):,} of the {len(index):,} training images: "
                 f"each is {what} when first drawn.")
        self.failed = np.zeros(len(index), bool)
        self.drawn = np.zeros(len(index), bool)
        self._epoch, self._rows = None, np.zeros(0, np.int64)

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rows = self.draws(epoch)
            todo = np.unique(rows)
            todo = todo[~self.failed[todo]]
            if self.shared:
                mine = todo[self.ctx.dist.shard(len(todo))]
                self.ctx.fill_rows(self.index, self.runner, self.store, mine)
                self.ctx.dist.barrier()
                self.store.refresh()
            self.failed[self.ctx.fill_rows(self.index, self.runner, self.store, todo)] = True
            self.drawn[todo] = True
            self._epoch, self._rows = epoch, rows[~self.failed[rows]]
        return self._rows

    @property
    def n_drawn(self) -> int:
        """Distinct rows drawn so far that could be used."""
        return int((self.drawn & ~self.failed).sum())


def training_data(X, y, val: ImageIndex | None,
                  params: dict) -> tuple[ImageIndex, ImageIndex]:
    """`fit`'s arguments as (train, validation) indexes, each through the pre-flight unless it
    went through it already; without `val`, the seeded stratified split of X."""
    if isinstance(y, ImageIndex):
        val, y = y, None
    if y is None and isinstance(X, (list, tuple, np.ndarray)):  # paths or pixels need labels
        raise ConfigError("fit() got images without labels: pass the class names as y, "
                          "or an ImageIndex from imagefit.open_dataset().")
    # Pixels are stored once as PNG files in the cache: from there on they are files. Rows a
    # split column marks test are never trained or validated on.
    index = as_index(X, y, folder=cache_folder(params["cache_dir"]))
    train = _checked(index.without_test() if val is not None else index, params)
    if val is None:
        train, val = train.split(params["val_fraction"], params["seed"])
    else:  # a regression's classes are its own value bins: nothing to match
        val = _checked(val, params)
        if (val.is_regression, val.is_multilabel) != (train.is_regression,
                                                        train.is_multilabel):
            raise ConfigError("The validation set and the training set must both have values "
                              "(a regression), both label sets (multi-label), or both have "
                              "class labels.")
        val = val if val.is_regression else val.with_classes(train.classes)
    if len(train) == 0:
        raise DatasetError("No usable training images remain after the pre-flight check.")
    limit = resolve_max_val(params["max_val"], len(train.classes))
    if limit is not None and len(val) > limit:
        used = val.subset(limit, params["seed"])
        log.info(f"Validating on a stratified {len(used):,} of the {len(val):,} validation "
                 f"images (--max-val / max_val; 'all' uses every one).")
        val = used
    return train, val


def _checked(index: ImageIndex, params: dict) -> ImageIndex:
    if index.checked:
        return index
    result = preflight(index, image_size=input_size(params), workers=params["workers"],
                       max_pixels=params["max_pixels"], progress=params["verbose"])
    result.index.report.bad_files[:] = result.bad_files
    return result.index


def new_net(settings: Settings, n_classes: int) -> ImageClassifierNet:
    """The network a fit starts from: the backbone (pretrained unless from scratch) and a new
    head."""
    backbone = create_backbone(settings.backbone, image_size=settings.image_size,
                               pretrained=settings.mode != "scratch", weights=settings.weights)
    return ImageClassifierNet(backbone, n_classes, settings.dropout)


def make_checkpointer(folder: str | None, resume: bool, params: dict, settings: Settings,
                      train: ImageIndex, val: ImageIndex,
                      dist: distributed.Distributed) -> Checkpointer | None:
    """Checkpoints in `folder`, fingerprinted by the settings and the data (a resume with
    other ones is refused)."""
    if not folder:
        return None
    fingerprint = {k: repr(v) for k, v in params.items() if k not in _NOT_FINGERPRINTED}
    fingerprint["augment"] = repr(settings.augment)  # the settings, not a YAML file's name
    fingerprint["world_size"] = dist.world_size  # a rank's position is per world size
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode())
    for index in (train, val):
        digest.update("\n".join(map(str, index.sha256 if index.sha256 is not None
                                    else index.paths)).encode())
    checkpointer = Checkpointer(folder, digest.hexdigest()[:32], writer=dist.is_main)
    if not resume and any(checkpointer.folder.glob("*.pt")):
        raise ConfigError(f"{checkpointer.folder} already holds checkpoints: pass "
                          f"resume=True (--resume) to continue that run, or train into "
                          f"a new folder.")
    if dist.is_main:
        checkpointer.clean_temp_files()
    return checkpointer


def run_stages(net: ImageClassifierNet, train: ImageIndex, val: ImageIndex,
               ctx: RunContext) -> StageResult:
    """The stages of `ctx.settings.mode`: probe; probe then fine-tune; or scratch."""
    mode = ctx.settings.mode
    result = None
    if mode in ("probe", "finetune"):
        _, epochs, patience, lr, _ = MODE_DEFAULTS["probe"]
        if mode == "probe":
            epochs, lr = ctx.settings.epochs, ctx.settings.lr
        result = probe_stage(net, train, val, ctx,
                             LoopSettings(epochs, lr, patience, "probe",
                                          time_budget_s=ctx.budget_left()))
    if mode in ("finetune", "scratch"):
        probe = result
        probe_state = copy.deepcopy(net.state_dict()) if probe else None
        result = image_stage(net, train, val, ctx)
        probe_score, score = ((probe.best_score(ctx.score), result.best_score(ctx.score))
                              if probe else (None, None))
        result.history = (probe.history if probe else []) + result.history
        if probe_score is None or score is None:
            return result
        if ctx.objective is not None and probe_score > score:
            key = ctx.objective.progress_key
            log.warning("Fine-tuning ended worse than the probe on validation (%s %.4g vs "
                        "%.4g): keeping the probe's model.", key.removeprefix("val_"),
                        abs(score[0]), abs(probe_score[0]))
            net.load_state_dict(probe_state)
            result = dataclasses.replace(probe, history=result.history)
        elif ctx.objective is None and _clearly_better(probe_score[0], score[0],
                                                       len(result.val_index)):
            log.warning("Fine-tuning ended clearly worse than the probe on validation (balanced "
                        "accuracy %.3f vs %.3f, %d images): keeping the probe's model.",
                        score[0], probe_score[0], len(result.val_index))
            net.load_state_dict(probe_state)
            result = dataclasses.replace(probe, history=result.history)
    return result


def _clearly_better(a: float, b: float, n: int) -> bool:
    """Is accuracy `a` better than `b` by more than two standard errors of an accuracy
    estimated on `n` images? Fine-tuning can wreck a small set's features (and then the
    frozen probe it started from is shipped), but a difference within the noise of a small
    validation set is no reason to drop it: each stage's best epoch is already the best of
    many noisy evaluations."""
    return a - b > 2.0 * math.sqrt(max(b * (1.0 - b), 1e-3) / max(n, 1))


def probe_stage(net: ImageClassifierNet, train: ImageIndex, val: ImageIndex, ctx: RunContext,
                loop: LoopSettings) -> StageResult:
    """Train `net.head` on the frozen backbone's features (computed once, cached)."""
    s = ctx.settings
    runner = BackboneRunner(net.backbone, s.preprocessing, device=s.device,
                            cache_dir=s.cache_folder())
    store = runner.store(s.cache_folder())
    store.clean_stale_temp_files()
    drawn = None
    if ctx.draws_a_subset(train.labels):  # features computed as rows are first drawn
        drawn = DrawnFirst(ctx, train, runner, store, ctx.draws(train.labels, shard=False),
                           "run through the backbone", shared=True)
        keys = train.sha256
        rows_of = lambda rows: store.get(keys[rows])  # noqa: E731
    else:
        x_train, train = ctx.feature_rows(train, runner, store)
        rows_of = x_train.__getitem__
    x_val, val = ctx.feature_rows(val, runner, store)
    head = net.head
    yt = torch.from_numpy(ctx.targets(train))
    in_memory = drawn is None and isinstance(x_train, np.ndarray)  # not drawn, not streamed
    if isinstance(ctx.objective, Regression) and in_memory and len(train) <= RIDGE_START_MAX:
        ctx.objective.start_head(head[-1], x_train, yt.numpy())
    # Head training on features is cheap: every rank runs all of it, identically.
    draws = drawn or ctx.draws(train.labels, shard=False)
    window = max(1, WINDOW_ROWS // s.batch_size) * s.batch_size

    def batches(epoch, first):  # rows gathered a window of batches at a time
        order = torch.from_numpy(draws(epoch)[first * s.batch_size:])
        for part in order.split(window):
            x = _aligned(rows_of(part.numpy()))
            yield from zip(x.split(s.batch_size), yt[part].split(s.batch_size))

    def val_logits():
        return torch.cat([head(_aligned(x_val[i:i + WINDOW_ROWS]))
                          for i in range(0, len(x_val), WINDOW_ROWS)] or
                         [torch.zeros(0, net.n_outputs)])

    loop.steps_per_epoch = -(-len(draws(1)) // s.batch_size)
    # Dropout draws from torch's global generator; seed it here so that what ran before
    # (decoding or not, depending on the cache) cannot change the run.
    torch.manual_seed(s.seed)
    history, best_epoch = fit_loop(
        head, batches, val_logits, ctx.targets(val), len(train.classes), loop,
        step_settings=ctx.step_settings(),
        hooks=LoopHooks(checkpointer=ctx.checkpointer, batch_files=ctx.batch_files(train, draws),
                        progress=ctx.progress))
    with torch.no_grad():
        logits = val_logits().numpy()
    return StageResult(history, best_epoch, val, logits, len(train),
                       n_drawn=drawn.n_drawn if drawn else None)


def _aligned(rows: np.ndarray) -> torch.Tensor:
    """`rows` in memory PyTorch allocated (64-byte aligned). A NumPy array's address depends on
    what the process allocated before; the matrix products of the head may round differently
    at another alignment, and a resumed run must repeat the uninterrupted one bit for bit."""
    return torch.from_numpy(np.ascontiguousarray(rows)).clone()


def image_stage(net: ImageClassifierNet, train: ImageIndex, val: ImageIndex,
                ctx: RunContext) -> StageResult:
    """Train on augmented images: the top of the backbone plus the head (finetune), or the
    whole network (scratch). Images come from the decoded-image cache."""
    s = ctx.settings
    decode = DecodeRunner(s.preprocessing, s.max_pixels)
    images = decode.store(s.cache_folder())
    images.clean_stale_temp_files()
    lazy = ctx.draws_a_subset(train.labels)  # then images are decoded as first drawn
    if not lazy:
        train = ctx.fill_store(train, decode, images)
    val_images, val = ctx.features(val, decode, images)
    if len(train) == 0:
        raise DatasetError("No usable training images remain after decoding.")
    draws, drawn = ctx.draws(train.labels), None
    if lazy:  # the ranks fill the whole epoch's new draws together, then each takes its share
        drawn = DrawnFirst(ctx, train, decode, images, ctx.draws(train.labels, shard=False),
                           shared=True)
        draws = (lambda epoch: ctx.dist.shard_epoch(drawn(epoch))) if ctx.dist.enabled \
            else drawn
    n_draws = len(draws(1))
    unfreeze = None
    if s.mode == "finetune":  # by the images the run can see
        unfreeze = s.unfreeze or default_unfreeze(min(len(train), n_draws * s.epochs))
        split = split_backbone(net.backbone, unfreeze)
        groups = param_groups(net.head, split, s.lr)
    else:
        split, groups = BackboneSplit(None, net.backbone, []), None
    lower = LowerRunner(split.lower, s.preprocessing, device=s.device,
                        cache_dir=s.cache_folder())
    # Batch norm learns from batch statistics: always from scratch, when fine-tuning only
    # with batches large enough to estimate them; a smaller last batch is then dropped.
    train_bn = s.mode == "scratch" or min(s.batch_size, n_draws) >= MIN_BATCH_FOR_BN
    drop_last = (train_bn and n_draws > s.batch_size
                 and 0 < n_draws % s.batch_size < MIN_BATCH_FOR_BN)
    top = TopNet(split.upper, net.head, train_bn=train_bn).to(s.device)
    if s.device == "cpu":
        top = top.to(memory_format=torch.channels_last)
    dataset = CachedImages([], [], [], ctx.targets(train), Augmenter(s.augment), seed=s.seed)
    located = np.unique(draws(1)) if lazy else np.arange(len(train))
    dataset.locate(located, *images.resolve(train.sha256[located]))
    loader = TrainLoader(dataset, draws, batch_size=s.batch_size,
                         workers=s.workers_for(len(train)), drop_last=drop_last,
                         rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                         persistent=not lazy)  # an epoch's images are located before it
    # Validation images are never augmented; with a frozen lower part their lower
    # outputs are the same every epoch, so they are computed once.
    val_lower = lower.features(val_images) if split.lower is not None else None

    def batches(epoch, first):
        if lazy:
            rows = np.unique(draws(epoch))
            dataset.locate(rows, *images.resolve(train.sha256[rows]))
        for batch, labels in loader.epoch(epoch, first):
            yield lower(batch), labels

    def val_logits():
        if val_lower is not None:
            chunks = [top(val_lower[i:i + 256].to(s.device)).cpu()
                      for i in range(0, len(val_lower), 256)]
        else:
            chunks = [top(lower(torch.from_numpy(val_images[i:i + 256]))).cpu()
                      for i in range(0, len(val_images), 256)]
        return torch.cat(chunks) if chunks else torch.zeros(0, net.n_outputs)

    steps = n_draws // s.batch_size if drop_last else -(-n_draws // s.batch_size)
    loop = LoopSettings(s.epochs, s.lr, s.patience, s.mode,
                        weight_decay=1e-4 if s.mode == "finetune" else 0.0,
                        schedule="cosine", warmup_steps=steps, steps_per_epoch=steps,
                        time_budget_s=ctx.budget_left())
    torch.manual_seed(s.seed + 1)  # as in probe_stage; a stream of its own
    history, best_epoch = fit_loop(
        top, batches, val_logits, ctx.targets(val), len(train.classes), loop,
        step_settings=ctx.step_settings(param_groups=groups, device=s.device),
        hooks=LoopHooks(checkpointer=ctx.checkpointer,
                        train_model=distributed.wrap(top, ctx.dist, s.device),
                        batch_files=ctx.batch_files(train, draws), progress=ctx.progress))
    with torch.no_grad():
        logits = val_logits().numpy()
    return StageResult(history, best_epoch, val, logits, len(train), unfreeze, s.mode,
                       n_drawn=drawn.n_drawn if drawn else None)
