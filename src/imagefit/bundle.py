"""The model folder: `model.safetensors` (weights only) and `model.json` (everything needed to
rebuild and run the model). Loading verifies the weights' SHA-256 and never unpickles anything;
pickle-based files are refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from imagefit import __version__
from imagefit.data.augment import resolve_augment
from imagefit.data.images import DEFAULT_MAX_PIXELS
from imagefit.errors import ConfigError, ModelFormatError, ModelNotFoundError
from imagefit.estimator import ImageClassifier
from imagefit.features.store import atomic_write_bytes, remove_orphans
from imagefit.models.backbones import Preprocessing, build_for_loading
from imagefit.models.net import ImageClassifierNet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar")


def save_model(clf: ImageClassifier, path: str | os.PathLike) -> Path:
    """Write a fitted `ImageClassifier` as a model folder; returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphans(folder.glob(".tmp-*"))  # what a killed save left
    state = {k: v.detach().cpu().contiguous() for k, v in clf.net_.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save_safetensors(state))
    head = clf.net_.head
    meta = {
        "format_version": FORMAT_VERSION,
        "backbone": clf.backbone_name_,
        "mode": getattr(clf, "mode_", clf.mode),
        "image_size": clf.preprocessing_.image_size,
        "preprocessing": clf.preprocessing_.to_dict(),
        "classes": list(clf.classes_),
        "head": {"type": "dropout_linear", "in_features": head[1].in_features,
                 "dropout": head[0].p},
        "temperature": float(clf.temperature_),
        "balance": clf.balance_,
        "class_weight": [float(w) for w in clf.class_weight_],
        # Training settings prediction honours: the pixel cap, and the augmentation (whose
        # flips define test-time augmentation). Seed for reproducible re-analysis.
        "augment": json.loads(json.dumps(clf.augment_.to_dict())),
        "max_pixels": int(clf.max_pixels),
        "seed": int(clf.seed),
        "versions": {"imagefit": __version__, "torch": torch.__version__,
                     "timm": timm.__version__},
        "weights_sha256": _sha256(folder / WEIGHTS_FILE),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(folder / META_FILE, json.dumps(meta, indent=2, ensure_ascii=True).encode())
    return folder


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Accept a model folder or a run folder holding `model/`; refuse pickle files."""
    p = Path(path)
    if p.is_file() or p.suffix.lower() in PICKLE_SUFFIXES:
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelFormatError(
                f"Refusing to load {p.name!r}: it is not an imagefit model folder. Pickle-based "
                f"files ({', '.join(PICKLE_SUFFIXES)}) can run arbitrary code when loaded, so "
                f"imagefit never opens them. Use a folder with {WEIGHTS_FILE} and {META_FILE} "
                f"(written by 'imagefit train' or ImageClassifier.save).")
        raise ModelNotFoundError(f"{p} is a file; expected a model folder with {WEIGHTS_FILE} and "
                               f"{META_FILE}, or a run folder that holds model/.")
    for candidate in (p, p / "model"):
        if (candidate / META_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise ModelNotFoundError(f"No model found in {p}: expected {META_FILE} and {WEIGHTS_FILE} "
                           f"there or in {p / 'model'}.")


def load_model(path: str | os.PathLike) -> ImageClassifier:
    """Load a model folder (or a run folder) into a fitted `ImageClassifier`.

    Only the folder is needed: no training data, no pretrained-weights package, no network.

    Raises:
        ModelFormatError: missing files, a pickle file, a weights checksum mismatch, or a
            `model.json` this version cannot read.

    Example:
        >>> clf = imagefit.load_model("runs/demo")          # doctest: +SKIP
        >>> clf.classes_                                    # doctest: +SKIP
        ('cat', 'dog')
    """
    folder = resolve_model_dir(path)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFormatError(f"{folder / META_FILE} is not valid JSON: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(f"{folder} has model format {meta.get('format_version')!r}; this "
                               f"imagefit reads format {FORMAT_VERSION}.")
    if _sha256(folder / WEIGHTS_FILE) != meta.get("weights_sha256"):
        raise ModelFormatError(f"{folder / WEIGHTS_FILE} does not match the checksum in "
                               f"{META_FILE}: the file was changed or damaged.")
    try:
        prep = Preprocessing.from_dict(meta["preprocessing"])
        classes = tuple(meta["classes"])
        backbone = build_for_loading(meta["backbone"], prep.image_size)
        net = ImageClassifierNet(backbone, len(classes), float(meta["head"]["dropout"]))
        net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except Exception as exc:  # safetensors, timm and torch each raise their own types
        raise ModelFormatError(f"{folder} could not be rebuilt: {type(exc).__name__}: {exc}") from None
    try:
        augment = resolve_augment(meta.get("augment"))
    except ConfigError as exc:
        raise ModelFormatError(f"{folder / META_FILE} has an invalid 'augment': {exc}") from None
    clf = ImageClassifier(meta["backbone"], mode=meta.get("mode", "probe"),
                          image_size=prep.image_size, balance=meta.get("balance", "auto"),
                          dropout=float(meta["head"]["dropout"]),
                          max_pixels=int(meta.get("max_pixels", DEFAULT_MAX_PIXELS)),
                          seed=int(meta.get("seed", 0)))
    clf.mode_ = clf.mode
    clf.augment_ = augment
    clf.net_ = net.eval()
    clf.classes_ = classes
    clf.preprocessing_ = prep
    clf.backbone_name_ = meta["backbone"]
    clf.temperature_ = float(meta["temperature"])
    clf.balance_ = meta.get("balance", "none")
    clf.class_weight_ = np.asarray(meta.get("class_weight", [1.0] * len(classes)))
    clf.device_ = "cpu"
    clf._runner = None
    return clf


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
