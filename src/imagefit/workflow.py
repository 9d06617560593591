"""The `train` workflow: scan, pre-flight, split, fit, calibrate, save, evaluate, writing the run
folder of DESIGN.md section 4. The CLI's `train` and `demo` are thin wrappers around `train_run`.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from imagefit.bundle import save_model
from imagefit.config import TrainConfig
from imagefit.data.audit import PreflightResult, preflight, write_bad_files
from imagefit.data.index import BadFile, ImageIndex, refuse_output_inside, scan_folder
from imagefit.errors import ConfigError, OutputError, StrictModeError
from imagefit.estimator import ImageClassifier, Predictions
from imagefit.evaluate.evaluation import EvaluationResult
from imagefit.evaluate.metrics import classification_metrics
from imagefit.features.store import owner_tag
from imagefit.models.backbones import preprocessing_for
from imagefit.progress import printable
from imagefit.train import distributed

# Below this many usable images a class gets a warning (its validation share is 0 or 1 image).
MIN_IMAGES_PER_CLASS = 5
HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_loss", "val_accuracy",
                   "val_balanced_accuracy", "lr", "seconds"]


@dataclass
class TrainResult:
    """What `train_run` produced."""

    run_dir: Path
    model_dir: Path
    classifier: ImageClassifier
    evaluation: EvaluationResult
    bad_files: list[BadFile]
    report: Path | None = None


def train_run(config: TrainConfig, *, progress: bool = True,
              echo: Callable[[str], None] = print) -> TrainResult:
    """Train a classifier from `config.data` and write the run folder.

    Raises:
        DatasetError, ConfigError: the data or the settings cannot be used.
        StrictModeError: `config.strict` and some files are bad (nothing is trained).

    Example:
        >>> result = train_run(TrainConfig(data="data/", out="runs/x"))   # doctest: +SKIP
        >>> result.evaluation.metrics["balanced_accuracy"]                 # doctest: +SKIP
        0.93
    """
    if not distributed.current().is_main:  # under torchrun, rank 0 speaks for all
        echo, progress = (lambda line: None), False
    run_dir = Path(config.out or default_run_dir())
    refuse_output_inside(run_dir, [config.data] + ([config.val] if config.val else []))
    if distributed.current().is_main:
        check_writable(run_dir)
    params = config.estimator_params()
    resume = params.pop("resume")
    clf = ImageClassifier(**params, checkpoint_dir=str(run_dir / "checkpoints"), resume=resume,
                          verbose=progress)
    size = preprocessing_for(clf._resolved_settings()["backbone"], config.image_size).image_size

    index = scan_folder(config.data)
    echo(f"Found {len(index):,} images in {len(index.classes)} classes: "
         + ", ".join(f"{printable(c)} ({n})" for c, n in zip(index.classes, index.counts())))
    for line in [index.report.ignored_summary()] + index.report.warnings:
        if line:
            echo(printable(line))
    n_scan_warnings = len(index.report.warnings)
    checked = _preflight(index, config, size, progress)
    bad_files = list(checked.bad_files)
    if config.val:
        val_index = scan_folder(config.val)
        val_checked = _preflight(val_index, config, size, progress)
        bad_files += val_checked.bad_files
        train, val = checked.index, val_checked.index.with_classes(checked.index.classes)
    else:
        train, val = checked.index.split(config.val_fraction, config.seed)
    echo(checked.summary() + (f" Details: {run_dir / 'bad_files.csv'}" if bad_files else ""))
    for line in checked.index.report.warnings[n_scan_warnings:]:
        echo(printable(line))  # warnings the split added
    for name, count in zip(train.classes, train.counts() + val.counts()):
        if count < MIN_IMAGES_PER_CLASS:
            echo(f"warning: class '{printable(name)}' has only {count} usable images; its "
                 f"metrics will be unreliable (aim for {MIN_IMAGES_PER_CLASS * 4}+).")
    main = distributed.current().is_main  # under torchrun, only rank 0 writes files
    if main:  # the run folder exists: check_writable made it
        write_bad_files(bad_files, run_dir / "bad_files.csv")
        write_scan_summary(index, bad_files, run_dir / "scan.json")
    if config.strict and bad_files:
        listing = "\n".join(f"  {printable(b.path)}: {b.reason} ({printable(b.message)})"
                            for b in bad_files)
        raise StrictModeError(f"--strict: {len(bad_files)} files cannot be used; nothing was "
                              f"trained. Fix or remove them, or run without --strict to skip "
                              f"them:\n{listing}")
    if main:
        write_split(train, val, run_dir / "split.csv")
    echo(f"Training on {len(train):,} images, validating on {len(val):,}.")
    if resume:
        found = sorted(p.stem for p in (run_dir / "checkpoints").glob("*.pt"))
        echo(f"Resuming from the checkpoints of stages {', '.join(found)}." if found else
             f"--resume: no checkpoints in {run_dir / 'checkpoints'}; starting from the beginning.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        clf.fit(train, val=val)
    for warning in caught:
        echo(f"warning: {warning.message}")
    echo(_choices(clf))
    if not main:
        return TrainResult(run_dir, run_dir / "model", clf, _validation_result(clf), bad_files,
                           None)
    runtime_bad = [b for b in clf.bad_files_ if b not in set(bad_files)]
    bad_files += runtime_bad
    write_bad_files(bad_files, run_dir / "bad_files.csv")
    model_dir = save_model(clf, run_dir / "model")
    _write_config(config, clf, run_dir / "config.yaml")
    _write_history(clf.history_, run_dir / "history.csv")
    evaluation = _validation_result(clf)
    evaluation.save(run_dir / "eval")
    report = None
    if config.report:
        from imagefit.report.build import build_run_report

        report = build_run_report(run_dir, progress=progress).index_html
    return TrainResult(run_dir, model_dir, clf, evaluation, bad_files, report)


def check_writable(folder: Path) -> None:
    """Fail before any work when the run folder cannot be written (read-only, no permission).

    Raises:
        OutputError: naming the folder and the reason.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tmp-{owner_tag()}-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"Cannot write to the run folder {folder}: {exc.strerror or exc}. "
                          f"Choose another --out.") from None


def default_run_dir() -> str:
    """runs/<date-time>, the run folder when none is named."""
    return str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def _choices(clf: ImageClassifier) -> str:
    """One line naming what "auto" settings became (also stored in config.yaml)."""
    parts = [f"mode {clf.mode_}", f"balance {clf.balance_}"]
    if clf.mode_ != "probe":
        parts.append("augment " + ("none" if clf.augment_.is_identity else
                                   _augment_name(clf.augment_)))
    if getattr(clf, "unfreeze_", None):
        parts.append(f"top {clf.unfreeze_} stage(s) unfrozen")
    return "Trained with " + ", ".join(parts) + "."


def _augment_name(config) -> str:
    from imagefit.data.augment import PRESETS

    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


def _preflight(index: ImageIndex, config: TrainConfig, size: int, progress: bool) -> PreflightResult:
    return preflight(index, image_size=size, workers=config.workers,
                     max_pixels=config.max_pixels, progress=progress)


def _validation_result(clf: ImageClassifier) -> EvaluationResult:
    """Metrics on the validation set from the features already computed in `fit`."""
    val = clf.val_index_
    logits = np.asarray(clf.val_logits_, np.float64) / clf.temperature_
    logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0
    proba = np.exp(logits)
    proba /= proba.sum(axis=1, keepdims=True) if len(proba) else 1
    preds = Predictions(val.paths, proba.astype(np.float32), clf.classes_, [""] * len(val))
    metrics = classification_metrics(val.labels, proba, clf.classes_)
    return EvaluationResult(metrics, preds, val.labels, [])


def write_scan_summary(index: ImageIndex, bad_files: list[BadFile], path: Path) -> None:
    """What the scan and the pre-flight saw, for machines: images found per class, ignored
    entries per category, bad files per reason, and the warnings printed."""
    summary = {"n_found": len(index),
               "classes": dict(zip(index.classes, map(int, index.counts()))),
               "ignored": dict(sorted(index.report.ignored.items())),
               "bad_files": dict(sorted(Counter(b.reason for b in bad_files).items())),
               "extension_mismatch": index.report.extension_mismatch,
               "warnings": list(index.report.warnings)}
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=True), encoding="utf-8")


def write_split(train: ImageIndex, val: ImageIndex, path: Path) -> None:
    """`path,label,split,sha256` for every image used. Names that are not valid UTF-8 on
    disk are written byte for byte (surrogateescape), so `imagefit report` reads them back."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "sha256"])
        for name, part in (("train", train), ("val", val)):
            hashes = part.sha256 if part.sha256 is not None else [""] * len(part)
            for p, label, digest in zip(part.paths, part.label_names(), hashes):
                writer.writerow([p, label, name, digest])


def _write_config(config: TrainConfig, clf: ImageClassifier, path: Path) -> None:
    resolved = config.to_dict()
    resolved.update(mode=clf.mode_, backbone=clf.backbone_name_,
                    image_size=clf.preprocessing_.image_size, balance=clf.balance_,
                    device=clf.device_, augment=json.loads(json.dumps(clf.augment_.to_dict())),
                    unfreeze=clf.unfreeze_)
    settings = clf._resolved_settings(clf.mode_)
    resolved.update(epochs=settings["epochs"], lr=settings["lr"], dropout=settings["dropout"])
    resolved["resolved"] = {"mode_requested": config.mode, "augment_requested": config.augment,
                            "balance_requested": config.balance,
                            "class_weight": {c: round(float(w), 6) for c, w in
                                             zip(clf.classes_, clf.class_weight_)},
                            "temperature": round(float(clf.temperature_), 6),
                            "best_epoch": int(clf.best_epoch_),
                            "n_train": int(clf.n_train_), "n_val": int(clf.n_val_)}
    path.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")


def _write_history(history: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row[k] for k in HISTORY_COLUMNS})


def load_config_file(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of training settings (`--config FILE.yaml`)."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Could not read the config file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"The config file {path} must hold a mapping of settings.")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
