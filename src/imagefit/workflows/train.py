"""`imagefit train`: scan, pre-flight, split, fit, calibrate, save, evaluate, writing the run
folder (`run_folder.py`). The CLI's `train` and `demo` are thin wrappers around `train_run`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from imagefit._fileio import cache_folder
from imagefit.config import TrainConfig
from imagefit.data.audit import PreflightResult, parse_strategy, preflight, resolve_strategy
from imagefit.data.index import BadFile, ImageIndex, refuse_output_inside
from imagefit.data.known_hashes import KnownHashes
from imagefit.data.sources import open_dataset
from imagefit.data.tables import is_table
from imagefit.errors import ConfigError, StrictModeError
from imagefit.estimator import ImageClassifier
from imagefit.evaluation.regression import (RegressionResult, evaluate_regressor,
                                            validation_result)
from imagefit.evaluation.result import EvaluationResult, evaluate
from imagefit.evaluation.tagging import validation_tags_result
from imagefit.metrics import classification_metrics
from imagefit.progress import printable
from imagefit.regressor import ImageRegressor
from imagefit.train import distributed
from imagefit.train.settings import input_size
from imagefit.workflows.run_folder import RunFolder, default_run_dir

log = logging.getLogger(__name__)

# Below this many usable images a class gets a warning (its validation share is 0 or 1 image).
MIN_IMAGES_PER_CLASS = 5


@dataclass
class TrainResult:
    """What `train_run` produced."""

    run_dir: Path
    model_dir: Path
    classifier: ImageClassifier
    evaluation: EvaluationResult
    bad_files: list[BadFile]
    report: Path | None = None
    test: EvaluationResult | None = None  # the rows a table's split column marks `test`


def train_run(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train a classifier (or, for a table of values, a regressor) from `config.data` and
    write the run folder.

    What it finds and chooses is said on the `imagefit` logger (INFO), what needs attention
    as warnings; the CLI prints both (`logging.basicConfig(level=logging.INFO)` in a script).

    Raises:
        DatasetError, ConfigError: the data or the settings cannot be used.
        StrictModeError: `config.strict` and some files are bad (nothing is trained).

    Example:
        >>> result = train_run(TrainConfig(data="data/", out="runs/x"))   # doctest: +SKIP
        >>> result.evaluation.metrics["balanced_accuracy"]                 # doctest: +SKIP
        0.93
    """
    if not distributed.current().is_main:  # under torchrun, rank 0 speaks for all
        progress = False
    run = RunFolder(Path(config.out or default_run_dir()))
    run_dir = run.path
    refuse_output_inside(run_dir, [d for d in (config.data, config.val, config.root) if d])
    source = config.source()
    # Checked before any work, not even the scan; for a table only once it is read, since the
    # folders of its images, where nothing may be written, are known only then.
    tables = [d for d in (config.data, config.val) if d and is_table(d)]
    if not tables and distributed.current().is_main:
        run.check_writable()
    parse_strategy(config.preflight)  # a bad --preflight fails before the scan
    resume = config.resume
    index = open_dataset(config.data, source, cache_dir=config.cache_dir)
    params = config.regressor_params() if index.is_regression else config.estimator_params()
    params.pop("resume")
    estimator = ImageRegressor if index.is_regression else ImageClassifier
    clf = estimator(**params, checkpoint_dir=str(run.checkpoints), resume=resume,
                    verbose=progress)
    size = input_size(clf.get_params())
    # The validation data is read as the training data turned out: numbers or classes.
    val_source = replace(source.for_data(config.val), task=_task_of(index)) \
        if config.val else None
    val_index = (open_dataset(config.val, val_source, cache_dir=config.cache_dir)
                 if config.val else None)
    refuse_output_inside(run_dir, [index] + ([val_index] if val_index is not None else []))
    if tables and distributed.current().is_main:
        run.check_writable()
    for line in index.report.notes:
        log.info(line)
    log.info(_found(index))
    if index.report.ignored_summary():
        log.info(index.report.ignored_summary())
    for line in index.report.warnings:
        log.warning(line)
    n_scan_warnings = len(index.report.warnings)
    checked = _preflight(index, config, size, progress)
    bad_files = list(checked.bad_files)
    if val_index is not None:
        val_checked = _preflight(val_index, config, size, progress)
        bad_files += val_checked.bad_files
        train = checked.index.without_test()
        val = val_checked.index.without_test()
        if not val.is_regression:  # a regression's classes are its own value bins
            val = val.with_classes(train.classes)  # multi-label: label columns by name
    else:
        train, val = checked.index.split(config.val_fraction, config.seed)
    test = checked.index.test_part()
    log.info(checked.summary() + (f" Details: {run.bad_files}" if bad_files else ""))
    for line in checked.index.report.warnings[n_scan_warnings:]:
        log.warning(line)  # warnings the split added
    counts = [] if index.is_regression else zip(train.classes, train.counts() + val.counts())
    for name, count in counts:
        if count < MIN_IMAGES_PER_CLASS:
            log.warning(f"class '{name}' has only {count} usable images; its "
                 f"metrics will be unreliable (aim for {MIN_IMAGES_PER_CLASS * 4}+).")
    main = distributed.current().is_main  # under torchrun, only rank 0 writes files
    if main:  # the run folder exists: check_writable made it
        run.write_bad_files(bad_files)
        run.write_scan_summary(index, bad_files)
    if config.strict and bad_files:
        listing = "\n".join(f"  {printable(b.path)}: {b.reason} ({printable(b.message)})"
                            for b in bad_files)
        raise StrictModeError(f"--strict: {len(bad_files)} files cannot be used; nothing was "
                              f"trained. Fix or remove them, or run without --strict to skip "
                              f"them:\n{listing}")
    if main:
        run.write_split(train, val, test)
    log.info(f"Training on {len(train):,} images, validating on {len(val):,}"
         + (f"; {len(test):,} test images are held out until the end." if len(test) else "."))
    if resume:
        found = sorted(p.stem for p in run.checkpoints.glob("*.pt"))
        log.info(f"Resuming from the checkpoints of stages {', '.join(found)}." if found else
             f"--resume: no checkpoints in {run.checkpoints}; starting from the beginning.")
    clf.fit(train, val=val)
    # Under torchrun every rank leaves the process group here; what follows is rank 0's alone.
    distributed.finish()
    log.info(_choices(clf))
    if not main:
        return TrainResult(run_dir, run.model, clf, _validation_result(clf), bad_files, None)
    runtime_bad = [b for b in clf.bad_files_ if b not in set(bad_files)]
    bad_files += runtime_bad
    run.write_bad_files(bad_files)
    if runtime_bad:
        log.warning(f"{len(runtime_bad)} more files could not be decoded when training drew "
                    f"them; they were skipped and are listed in {run.bad_files}.")
        run.write_scan_summary(index, bad_files)
    model_dir = clf.save(run.model)
    run.write_config(_resolved_config(config, clf))
    run.write_history(clf.history_)
    evaluation = _validation_result(clf)
    evaluation.save(run.eval)
    test_evaluation = None
    if len(test):
        test_evaluation = (evaluate_regressor(clf, test) if index.is_regression
                           else evaluate(clf, test))  # label sets: evaluation.tagging
        test_evaluation.save(run.test_eval)
        log.info(f"Test ({len(test):,} images held out of training): "
                 f"{_headline(test_evaluation.metrics)}; {run.test_eval / 'metrics.json'}")
    report = None
    if config.report:
        from imagefit.workflows.report import build_run_report

        report = build_run_report(run_dir, progress=progress).index_html
    return TrainResult(run_dir, model_dir, clf, evaluation, bad_files, report, test_evaluation)


def _task_of(index: ImageIndex) -> str:
    """The task a training index turned out to be, as `SourceOptions.task` names it."""
    return ("regress" if index.is_regression else "multilabel" if index.is_multilabel
            else "classify")


def _found(index: ImageIndex) -> str:
    """What the scan found: the classes and their sizes, or the range of the values."""
    if index.is_regression:
        t = index.targets
        return (f"Found {len(index):,} images with values from {t.min():.4g} to {t.max():.4g} "
                f"(median {np.median(t):.4g}).")
    if index.is_multilabel:
        per_image = index.tags.sum(axis=1)
        return (f"Found {len(index):,} images with {len(index.classes)} labels "
                f"({per_image.mean():.2f} per image, {int((per_image == 0).sum())} with none): "
                + ", ".join(f"{c} ({n})" for c, n in zip(index.classes, index.counts())))
    return (f"Found {len(index):,} images in {len(index.classes)} classes: "
            + ", ".join(f"{c} ({n})" for c, n in zip(index.classes, index.counts())))


def _headline(metrics: dict) -> str:
    if metrics.get("task") == "multilabel":
        return f"mAP {metrics['map']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    if metrics.get("task") == "regress":
        return (f"MAE {metrics['mae']:.4g}, R² {metrics['r2']:.3f}, "
                f"{metrics['interval_promised']:.0%} interval coverage "
                f"{metrics['interval_coverage']:.3f}")
    return (f"accuracy {metrics['accuracy']:.3f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.3f}")


def _choices(clf: ImageClassifier | ImageRegressor) -> str:
    """One line naming what "auto" settings became (also stored in config.yaml)."""
    parts = [f"mode {clf.mode_}"]
    if isinstance(clf, ImageRegressor):
        parts.append(f"loss {clf.loss}")
    elif clf.multilabel_:
        parts.append("sigmoid head, thresholds " + (
            "by max F1 per label" if clf.threshold == "auto" else f"{clf.threshold:g}"))
    else:
        parts.append(f"balance {clf.balance_}")
    if clf.mode_ != "probe":
        parts.append("augment " + ("none" if clf.augment_.is_identity else
                                   _augment_name(clf.augment_)))
    if getattr(clf, "unfreeze_", None):
        parts.append(f"top {clf.unfreeze_} stage(s) unfrozen")
    if clf.settings_.time_budget is not None:
        parts.append(f"time budget {clf.settings_.time_budget:g} min")
    return "Trained with " + ", ".join(parts) + "."


def _augment_name(config) -> str:
    from imagefit.data.augment import PRESETS

    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


def _preflight(index: ImageIndex, config: TrainConfig, size: int,
               progress: bool) -> PreflightResult:
    strategy, sample = resolve_strategy(config.preflight, len(index), config.strict)
    if strategy != "full" and config.preflight == "auto":
        log.info(f"Pre-flight: {len(index):,} files, so each is read and hashed now and "
                 f"decoded when first drawn, {sample:,} of them now (--preflight full to "
                 f"decode every one first).")
    known = (KnownHashes.for_folder(cache_folder(config.cache_dir), index.root)
             if index.root else None)  # unchanged files are not read again to be hashed
    return preflight(index, image_size=size, workers=config.workers,
                     max_pixels=config.max_pixels, progress=progress, strategy=strategy,
                     sample=sample, seed=config.seed, known=known)


def _validation_result(clf: ImageClassifier | ImageRegressor
                       ) -> EvaluationResult | RegressionResult:
    """Metrics on the validation set from the predictions `fit` already made."""
    if isinstance(clf, ImageRegressor):
        return validation_result(clf)
    if clf.multilabel_:
        return validation_tags_result(clf)
    preds, y_val = clf.validation_
    metrics = classification_metrics(y_val, preds.proba, clf.classes_)
    return EvaluationResult(metrics, replace(preds, proba=preds.proba.astype(np.float32)),
                            y_val, [])


def _resolved_config(config: TrainConfig, clf: ImageClassifier | ImageRegressor) -> dict:
    """config.yaml: the configuration as given, with what each "auto" became."""
    if isinstance(clf, ImageRegressor):
        return _resolved_regression_config(config, clf)
    s = clf.settings_
    resolved = config.to_dict()
    resolved.update(mode=s.mode, backbone=s.backbone, image_size=s.image_size,
                    balance=s.balance, device=s.device,
                    augment=json.loads(json.dumps(s.augment.to_dict())), unfreeze=clf.unfreeze_,
                    epochs=s.epochs, lr=s.lr, dropout=s.dropout, time_budget=s.time_budget)
    if clf.multilabel_:
        resolved["task"] = "multilabel"
    resolved["resolved"] = {"mode_requested": config.mode, "augment_requested": config.augment,
                            "time_budget_requested": config.time_budget,
                            "balance_requested": config.balance,
                            **({"pos_weight": {c: round(float(w), 6) for c, w in zip(
                                clf.classes_, clf.get_config()["multilabel"]["pos_weight"])}}
                               if clf.multilabel_ else
                               {"class_weight": {c: round(float(w), 6) for c, w in
                                                 zip(clf.classes_, s.class_weight)}}),
                            **({"task_requested": config.task,
                                "thresholds": {c: round(float(t), 6) for c, t in
                                               zip(clf.classes_, clf.thresholds_)}}
                               if clf.multilabel_ else
                               {"temperature": round(float(clf.temperature_), 6)}),
                            "best_epoch": int(clf.best_epoch_),
                            "best_stage": clf.training_.get("best_stage"),
                            "max_val": s.max_val, "n_drawn": clf.training_.get("n_drawn"),
                            "n_train": int(clf.n_train_), "n_val": int(clf.n_val_)}
    return resolved


def _resolved_regression_config(config: TrainConfig, reg: ImageRegressor) -> dict:
    s = reg.settings_
    resolved = config.to_dict()
    resolved.update(task="regress", mode=s.mode, backbone=s.backbone, image_size=s.image_size,
                    device=s.device, augment=json.loads(json.dumps(s.augment.to_dict())),
                    unfreeze=reg.unfreeze_, epochs=s.epochs, lr=s.lr, dropout=s.dropout,
                    time_budget=s.time_budget)
    resolved["resolved"] = {"task_requested": config.task, "mode_requested": config.mode,
                            "augment_requested": config.augment,
                            "target_mean": reg.target_mean_, "target_scale": reg.target_scale_,
                            "interval_halfwidth": reg.halfwidth_,
                            "best_epoch": int(reg.best_epoch_),
                            "best_stage": reg.training_.get("best_stage"),
                            "max_val": s.max_val, "n_drawn": reg.training_.get("n_drawn"),
                            "n_train": int(reg.n_train_), "n_val": int(reg.n_val_)}
    return resolved


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of training settings (`--config FILE.yaml`)."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Could not read the config file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"The config file {path} must hold a mapping of settings.")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
