"""Explaining one prediction: `explain_image` writes the input, each backbone stage's activations
as image grids, Grad-CAM overlays for the predicted (and the true) class, or for a regression's
value, and `explain.json` into one folder. File names made from class names go through
`safe_name` and are checked to stay inside that folder. `gradcam` and `overlay` are
re-exported for use on arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imagefit._fileio import safe_name
from imagefit._validation import check_is_fitted
from imagefit.data.images import load_image
from imagefit.errors import ConfigError
from imagefit.explain.activations import activation_grid, capture_activations, find_stages
from imagefit.explain.cam import gradcam, overlay

__all__ = ["ExplainResult", "explain_image", "gradcam", "overlay", "safe_name"]

@dataclass
class ExplainResult:
    """What `explain_image` found and wrote.

    Attributes:
        image: the explained image file.
        label: the predicted class.
        confidence: its calibrated probability.
        probabilities: calibrated probability of every class, in `clf.classes_` order.
        out_dir: the folder everything was written to.
        value, interval: a regression's predicted value and its (lower, upper) bounds (None
            for a classifier; `label` is then the value as text, `confidence` NaN).
        labels: a multi-label model's predicted labels (`label` joins them with "|",
            `confidence` is NaN: `probabilities` has each label's own).
        files: every file written, `explain.json` last.
        notes: what could not be drawn and why (empty when everything was).
    """

    image: Path
    label: str
    confidence: float
    probabilities: dict[str, float]
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    value: float | None = None
    interval: tuple[float, float] | None = None
    labels: list[str] | None = None


def explain_image(clf, path: str | os.PathLike, out_dir: str | os.PathLike, *,
                  true_label: str | None = None, label: str | None = None) -> ExplainResult:
    """Explain one prediction: activations of every stage and Grad-CAM, written to `out_dir`.

    Writes `input.png` (the image as the model sees it), `activations/stage_<i>_<name>.png`,
    `gradcam_pred_<label>.png`, `gradcam_true_<label>.png` (when `true_label` is given and
    differs from the prediction), `gradcam_label_<label>.png` (for a chosen `label`) and
    `explain.json`. A multi-label model's prediction is every label reaching its threshold,
    each with its own `gradcam_pred_<label>.png` (the most probable label's when none
    does). For an `ImageRegressor`, the Grad-CAM is
    of the predicted value (`gradcam_value.png`: where the image raises it). What cannot be
    drawn for this backbone is skipped with a note rather than failing.

    Args:
        clf: a fitted `ImageClassifier` (or one from `imagefit.load_model`).
        path: the image file.
        out_dir: the output folder (created if needed).
        true_label: the image's known class, for a second Grad-CAM map.
        label: any class (label) of the model, for a Grad-CAM map of it.

    Raises:
        ConfigError: `true_label` is not one of the model's classes.
        ImageLoadError: the image cannot be read (nothing is written).

    Example:
        >>> result = explain_image(imagefit.load_model("runs/cats"), "cat.jpg",
        ...                        "runs/cats/explain/cat")              # doctest: +SKIP
        >>> result.label, [p.name for p in result.files][-1]             # doctest: +SKIP
        ('cat', 'explain.json')
    """
    if hasattr(clf, "halfwidth_"):
        if true_label is not None or label is not None:
            raise ConfigError("true_label names a class; this model is a regression (its "
                              "Grad-CAM is of the predicted value).")
        return _explain_value(clf, path, Path(out_dir))
    check_is_fitted(clf)
    classes = list(clf.classes_)
    for given in (true_label, label):
        if given is not None and given not in classes:
            raise ConfigError(f"Unknown label {given!r}; the model's classes are: "
                              f"{', '.join(classes)}.")
    prep = clf.preprocessing_
    image = load_image(path, prep.image_size, background=prep.background)
    proba = _calibrated_proba(clf, path)
    predicted = int(np.argmax(proba))
    out = Path(out_dir)
    result = ExplainResult(Path(path), classes[predicted], float(proba[predicted]),
                           {c: float(p) for c, p in zip(classes, proba)}, out)
    shown = [predicted]
    if clf.multilabel_:
        shown = [int(j) for j in np.flatnonzero(proba >= clf.thresholds_)] or [predicted]
        result.labels = [classes[j] for j in np.flatnonzero(proba >= clf.thresholds_)]
        result.label, result.confidence = "|".join(result.labels), float("nan")
    out.mkdir(parents=True, exist_ok=True)
    _write_png(result, "input.png", image)
    stages = _write_activations(clf, image, result)
    targets = [("pred", j) for j in shown]
    if true_label is not None and classes.index(true_label) not in shown:
        targets.append(("true", classes.index(true_label)))
    if label is not None:
        targets.append(("label", classes.index(label)))
    _write_gradcams(clf, image, targets, result)
    _write_json(result, true_label, stages)
    return result


def _explain_value(reg, path: str | os.PathLike, out: Path) -> ExplainResult:
    """`explain_image` for a regression: the value, its interval, and Grad-CAM of the value."""
    prep = reg.preprocessing_
    image = load_image(path, prep.image_size, background=prep.background)
    value = float(reg.predict_images(image[None])[0])
    bounds = (value - reg.halfwidth_, value + reg.halfwidth_)
    result = ExplainResult(Path(path), f"{value:.6g}", float("nan"), {}, out, value=value,
                           interval=bounds if np.isfinite(reg.halfwidth_) else None)
    out.mkdir(parents=True, exist_ok=True)
    _write_png(result, "input.png", image)
    stages = _write_activations(reg, image, result)
    try:
        heatmap = gradcam(reg, image, 0)
    except ConfigError as exc:
        result.notes.append(f"Grad-CAM skipped: {exc}")
    else:
        note = _uniform_note(heatmap, "the value")
        if note:
            result.notes.append(note)
        _write_png(result, "gradcam_value.png", overlay(image, heatmap))
    _write_json(result, None, stages)
    return result


def _calibrated_proba(clf, path) -> np.ndarray:
    """Calibrated probabilities through the same path as `predict` (features, head, T)."""
    preds = clf.predict_files([path])
    if preds.failures[0] is not None:
        raise preds.failures[0].error(f"[{path}]")
    return preds.proba[0]


def _write_activations(clf, image: np.ndarray, result: ExplainResult) -> list[dict]:
    """One grid per stage; returns what `explain.json` lists about the stages."""
    stages = find_stages(clf.net_.backbone)
    if not stages:
        result.notes.append(f"activations skipped: no stages found in the "
                            f"{type(clf.net_.backbone).__name__} backbone")
        return []
    described = []
    outputs = capture_activations(clf.net_, stages, image, clf.preprocessing_)
    for i, (stage, act) in enumerate(zip(stages, outputs)):
        entry = {"index": i, "name": stage.name,
                 "shape": list(act.shape) if act is not None else None, "file": None}
        if act is None or act.dim() != 3:
            result.notes.append(f"stage {i} ({stage.name}) skipped: its output is not a "
                                f"(channels, height, width) feature map")
        else:
            name = f"activations/stage_{i}_{safe_name(stage.name)}.png"
            entry["file"] = _write_png(result, name, activation_grid(act)).relative_to(
                result.out_dir).as_posix()
        described.append(entry)
    return described


def _write_gradcams(clf, image: np.ndarray, targets: list[tuple[str, int]],
                    result: ExplainResult) -> None:
    for kind, index in targets:
        try:
            heatmap = gradcam(clf, image, index)
        except ConfigError as exc:  # a backbone without a convolutional stage
            result.notes.append(f"Grad-CAM skipped: {exc}")
            return
        note = _uniform_note(heatmap, clf.classes_[index])
        if note:
            result.notes.append(note)
        _write_png(result, f"gradcam_{kind}_{safe_name(clf.classes_[index])}.png",
                   overlay(image, heatmap))


def _uniform_note(heatmap: np.ndarray, label: str) -> str | None:
    """Why a flat map says nothing about where, so nobody reads it as "everywhere"."""
    if heatmap.max() == 0:
        return f"Grad-CAM for {label!r} is empty: no region of the last stage supports it"
    if heatmap.min() == heatmap.max():
        return (f"Grad-CAM for {label!r} is uniform: at this image size the last stage has a "
                f"single position, so it cannot localise")
    return None


def _write_png(result: ExplainResult, name: str, pixels: np.ndarray) -> Path:
    target = _inside(result.out_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target, format="PNG")
    result.files.append(target)
    return target


def _write_json(result: ExplainResult, true_label: str | None, stages: list[dict]) -> None:
    target = _inside(result.out_dir, "explain.json")
    result.files.append(target)
    doc = {"image": str(result.image), "prediction": result.label,
           "confidence": result.confidence, "true_label": true_label,
           "probabilities": result.probabilities, "stages": stages,
           "files": [p.relative_to(result.out_dir).as_posix() for p in result.files],
           "notes": result.notes}
    if result.labels is not None:  # multi-label: a label set, a probability per label
        doc.update(prediction=result.labels, confidence=None)
    if result.value is not None:  # a regression: the value, no class or confidence
        doc.update(prediction=result.value, confidence=None, interval=result.interval)
        del doc["true_label"], doc["probabilities"]
    target.write_text(json.dumps(doc, indent=2, ensure_ascii=True), encoding="utf-8")


def _inside(folder: Path, name: str) -> Path:
    """`folder / name`, refusing any name that would resolve outside `folder`."""
    target = folder / name
    if not target.resolve().is_relative_to(folder.resolve()):
        raise ConfigError(f"Refusing to write {name!r}: it would land outside {folder}.")
    return target
