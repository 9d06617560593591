"""Rendering the report: one static `index.html` (no scripts, no network) plus `assets/` with
thumbnails. This module turns `ReportData` into plain strings and numbers; the Jinja2 templates in
`templates/` do the markup with autoescaping, so every class or file name is escaped. No user path
is ever put in an `href` or `src`: thumbnails are stored under hashed names, re-encoded from
decoded pixels, so no EXIF or other metadata is copied.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup
from PIL import Image

from imagefit.data.images import load_image
from imagefit.errors import ImageLoadError
from imagefit.evaluation.ranking import GALLERIES, GALLERY_TITLES, Rankings, most_confused
from imagefit.metrics import ECE_BINS
from imagefit.report import figures

THUMB_SIDE = 112


@dataclass
class ReportData:
    """Everything the page shows; built by `report.build`, or from an `EvaluationResult`."""

    title: str
    metrics: dict
    classes: tuple[str, ...]
    paths: np.ndarray
    y_true: np.ndarray
    proba: np.ndarray
    rankings: Rankings
    subtitle: str = ""
    temperature: float | None = None
    history: list[dict] | None = None
    class_counts: dict[str, np.ndarray] | None = None
    label_issues: list[tuple[str, str, str, float]] | None = None   # path, given, suggested, score
    label_issue_note: str = ""
    duplicates: dict | None = None  # {"summary": {...}, "groups": [[(path, label, subset), ...]]}
    gradcams: dict[int, np.ndarray] = field(default_factory=dict)   # prediction row -> overlay
    notes: list[str] = field(default_factory=list)


class _Assets:
    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cache: dict[str, str | None] = {}

    def thumbnail(self, path: str) -> str | None:
        """Relative URL of a thumbnail of `path`, or None if the file cannot be decoded."""
        if path not in self.cache:
            name = hashlib.sha256(os.fsencode(path)).hexdigest()[:24] + ".jpg"
            try:
                image = Image.fromarray(load_image(path))
                image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
                image.save(self.folder / name, "JPEG", quality=85)
                self.cache[path] = f"assets/{name}"
            except (ImageLoadError, OSError):
                self.cache[path] = None
        return self.cache[path]

    def array(self, key: str, pixels: np.ndarray) -> str:
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".png"
        Image.fromarray(pixels).save(self.folder / name, "PNG")
        return f"assets/{name}"



# autoescape=True rather than select_autoescape: it is on for every template whatever its name.
# StrictUndefined: a misspelt field fails the render instead of leaving a silent gap.
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("imagefit.report", "templates"),
                                autoescape=True, undefined=jinja2.StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True)


def render_report(data: ReportData, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/index.html` and its assets; returns the page's path."""
    out = Path(out_dir)
    assets = _Assets(out / "assets")
    m, classes = data.metrics, list(data.classes)
    page = _TEMPLATES.get_template("report.html.j2").render(
        title=data.title, subtitle=data.subtitle, classes=classes,
        cards=_cards(m), per_class=_per_class(m), confusion=_confusion(m, classes),
        gradcam_note=bool(data.gradcams), galleries=_galleries(data, assets),
        charts=_charts(data), ece_bins=ECE_BINS,
        label_issues=None if data.label_issues is None else _label_issues(data, assets),
        duplicates=None if data.duplicates is None else _duplicates(data.duplicates, assets),
        notes=[str(n) for n in data.notes])
    return _write_page(out, page)


def _write_page(out: Path, page: str) -> Path:
    """`out/index.html`; names that were not valid UTF-8 on disk show backslash escapes."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8", errors="backslashreplace")
    return index


def _cards(m: dict) -> list[dict]:
    cards = [("Accuracy", m["accuracy"]), ("Balanced accuracy", m["balanced_accuracy"]),
             ("Macro-F1", m["macro_f1"]), ("Log loss", m["log_loss"]), ("ECE", m["ece"]),
             ("Images", m["n"])]
    cards += [(f"Accuracy at {name.replace('_', ' ')}", value)  # class paths: upper levels
              for name, value in m.get("hierarchy_accuracy", {}).items()]
    return [{"label": k, "value": _fmt(v)} for k, v in cards]


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def _per_class(m: dict) -> list[dict]:
    return [{"name": str(name), "precision": f"{r['precision']:.3f}",
             "recall": f"{r['recall']:.3f}", "f1": f"{r['f1']:.3f}", "support": str(r["support"])}
            for name, r in m["per_class"].items()]


def _confusion(m: dict, classes: list[str]) -> dict:
    matrix = np.asarray(m["confusion_matrix"], float)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    rows = [{"name": name,
             "cells": [{"count": int(matrix[i, j]), "alpha": f"{normalised[i, j]:.2f}",
                        "share": f"{normalised[i, j]:.0%}"} for j in range(len(classes))]}
            for i, name in enumerate(classes)]
    pairs = [{"true": classes[t], "predicted": classes[p], "count": int(n)}
             for t, p, n in most_confused(matrix.astype(int), k=10)]
    return {"rows": rows, "pairs": pairs}


def _tile(assets: _Assets, path: str, lines: list[str], cam: str | None = None) -> dict:
    """One figure of a gallery: hashed asset URLs, the file's name and its caption lines."""
    return {"src": assets.thumbnail(path), "cam": cam, "name": Path(path).name, "lines": lines}


def _galleries(data: ReportData, assets: _Assets) -> list[dict]:
    r, out = data.rankings, []
    for c, name in enumerate(data.classes):
        blocks = []
        for gallery in GALLERIES:
            tiles = []
            for pos in r.select(c, gallery):
                row = int(r.row[pos])
                lines = [f"p(true) {r.p_true[pos]:.3f}",
                         f"pred {data.classes[r.predicted[pos]]} {r.p_pred[pos]:.3f}"]
                cam = None
                if gallery == "wrong" and row in data.gradcams:
                    cam = assets.array(f"gradcam-{row}-{data.paths[row]}", data.gradcams[row])
                tiles.append(_tile(assets, str(data.paths[row]), lines, cam))
            blocks.append({"title": GALLERY_TITLES[gallery], "tiles": tiles})
        out.append({"index": c, "name": name, "blocks": blocks})
    return out


def _charts(data: ReportData) -> list[Markup]:
    charts = _history_charts(data.history, {"val balanced acc": "val_balanced_accuracy",
                                            "val accuracy": "val_accuracy"},
                             "Validation accuracy", "Loss")
    if data.class_counts:
        charts.append(figures.grouped_bars(list(data.classes), data.class_counts,
                                           "Images per class"))
    ok = np.isfinite(data.proba).all(axis=1) & (data.y_true >= 0)
    if ok.any():
        after = data.proba[ok]
        curves = {}
        if data.temperature:
            # softmax(z) from calibrated p = softmax(z / T): z = T log p + const.
            logits = data.temperature * np.log(np.clip(after, 1e-12, 1))
            before = np.exp(logits - logits.max(axis=1, keepdims=True))
            before /= before.sum(axis=1, keepdims=True)
            curves["before calibration"] = figures.reliability_bins(data.y_true[ok], before)
        curves["calibrated"] = figures.reliability_bins(data.y_true[ok], after)
        charts.append(figures.reliability_diagram(curves, "Reliability (accuracy vs confidence)"))
    # The only markup that is not escaped by the templates: figures.py builds these SVGs from
    # numbers and escapes every text it places in them (titles, class names, legend names).
    return [Markup(chart) for chart in charts]


def _history_charts(history: list[dict] | None, validation: dict[str, str], title: str,
                    loss_title: str) -> list[str]:
    """Per epoch: the `validation` columns ({legend: history column}) in one chart, training
    and validation loss in another; none without a history."""
    if not history:
        return []
    def series(columns: dict[str, str]) -> dict[str, list[float]]:
        return {name: [row[column] for row in history] for name, column in columns.items()}

    epochs = [row["epoch"] for row in history]
    loss = {"train loss": "train_loss", "val loss": "val_loss"}
    return [figures.line_chart(epochs, series(validation), title),
            figures.line_chart(epochs, series(loss), loss_title)]


def _label_issues(data: ReportData, assets: _Assets) -> dict:
    issues = data.label_issues or []
    tiles = [_tile(assets, path, [f"labelled {given}", f"looks like {suggested}",
                                  f"score {score:.3f}"])
             for path, given, suggested, score in issues[:60]]
    return {"note": data.label_issue_note, "tiles": tiles, "more": len(issues) - 60}


def _duplicates(dups: dict, assets: _Assets) -> dict:
    summary = [{"key": str(k), "value": str(v)} for k, v in dups.get("summary", {}).items()]
    groups = [[_tile(assets, path, [f"{label} · {subset}"]) for path, label, subset in group[:6]]
              for group in dups.get("groups", [])[:30]]
    return {"summary": summary, "groups": groups}


@dataclass
class RegressionReportData:
    """What a regression's page shows: the evaluated images' true and predicted values with
    their intervals, the metrics, and what the run folder adds (history, label issues,
    duplicates)."""

    title: str
    metrics: dict
    paths: np.ndarray
    y_true: np.ndarray
    value: np.ndarray
    halfwidth: float
    subtitle: str = ""
    history: list[dict] | None = None
    label_issues: list[tuple[str, float, float, float]] | None = None  # path, given, oof, score
    label_issue_note: str = ""
    duplicates: dict | None = None
    notes: list[str] = field(default_factory=list)


REGRESSION_GALLERIES = (("over", "Largest over-estimates"), ("under", "Largest under-estimates"),
                        ("accurate", "Most accurate"))


def render_regression_report(data: RegressionReportData, out_dir: str | os.PathLike) -> Path:
    """Write a regression's `out_dir/index.html` and its assets; returns the page's path."""
    out = Path(out_dir)
    assets = _Assets(out / "assets")
    m = data.metrics
    cards = [{"label": label, "value": _fmt_value(m.get(key))} for key, label in (
        ("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("spearman", "Spearman ρ"),
        ("interval_coverage", f"coverage of the {m.get('interval_promised', 0):.0%} interval"),
        ("n", "images"))]
    page = _TEMPLATES.get_template("regression.html.j2").render(
        title=data.title, subtitle=data.subtitle, cards=cards,
        galleries=_value_galleries(data, assets), charts=_value_charts(data),
        label_issues=None if data.label_issues is None else {
            "note": data.label_issue_note, "more": len(data.label_issues) - 60,
            "tiles": [_tile(assets, path, [f"given {given:.4g}", f"out-of-fold {oof:.4g}",
                                           f"score {score:.1f}"])
                      for path, given, oof, score in data.label_issues[:60]]},
        duplicates=None if data.duplicates is None else _duplicates(data.duplicates, assets),
        notes=[str(n) for n in data.notes])
    return _write_page(out, page)


def _fmt_value(value) -> str:
    """A regression's card: 4 significant digits (an MAE of 0.0004 or of 12,000)."""
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _value_galleries(data: RegressionReportData, assets: _Assets, k: int = 8) -> list[dict]:
    error = data.value - data.y_true
    rows = np.flatnonzero(np.isfinite(error))
    order = {"over": rows[np.argsort(-error[rows], kind="stable")],
             "under": rows[np.argsort(error[rows], kind="stable")],
             "accurate": rows[np.argsort(np.abs(error[rows]), kind="stable")]}
    blocks = []
    for key, title in REGRESSION_GALLERIES:
        chosen = [r for r in order[key][:k] if key == "accurate" or
                  (error[r] > 0 if key == "over" else error[r] < 0)]
        blocks.append({"title": title, "tiles": [_tile(assets, str(data.paths[r]), [
            f"true {data.y_true[r]:.4g}", f"predicted {data.value[r]:.4g}",
            f"error {error[r]:+.3g}"]) for r in chosen]})
    return blocks


def _value_charts(data: RegressionReportData) -> list[Markup]:
    charts = _history_charts(data.history, {"val MAE": "val_mae"}, "Validation MAE",
                             "Loss (standardised)")
    charts.append(figures.scatter(data.y_true, data.value, "Predicted (y) against true (x)"))
    charts.append(figures.histogram(data.value - data.y_true, "Residuals (predicted - true)"))
    return [Markup(chart) for chart in charts]  # built from numbers, every text escaped


@dataclass
class TagReportData:
    """What a multi-label model's page shows: the metrics, the evaluated images' per-label
    rankings (`evaluation.tagging.TagResult.rankings`), label counts and co-occurrence, and
    what the run folder adds (history, label issues, duplicates)."""

    title: str
    metrics: dict
    labels: tuple[str, ...]
    paths: np.ndarray
    rankings: dict[str, dict[str, list[tuple[int, float]]]]
    co_occurrence: np.ndarray           # (n_labels, n_labels) images with both labels
    co_occurrence_note: str = ("Images carrying both labels (row and column); the diagonal is "
                               "each label's count.")
    subtitle: str = ""
    history: list[dict] | None = None
    label_counts: dict[str, np.ndarray] | None = None
    label_issues: list[tuple[str, str, bool, float]] | None = None  # path, label, missing, score
    label_issue_note: str = ""
    duplicates: dict | None = None
    notes: list[str] = field(default_factory=list)


TAG_GALLERIES = (("confident", "Most confident positives"),
                 ("missed", "Positives it missed (lowest probability first)"),
                 ("false_positive", "Confident false positives"))


def render_tags_report(data: TagReportData, out_dir: str | os.PathLike) -> Path:
    """Write a multi-label model's `out_dir/index.html` and its assets; returns its path."""
    out = Path(out_dir)
    assets = _Assets(out / "assets")
    m = data.metrics
    cards = [{"label": label, "value": _fmt(m[key])} for key, label in (
        ("map", "mAP"), ("macro_f1", "Macro-F1"), ("micro_f1", "Micro-F1"),
        ("samples_f1", "Samples-F1"), ("subset_accuracy", "Subset accuracy"),
        ("hamming_loss", "Hamming loss"), ("ece", "Mean ECE"), ("n", "Images"))]
    per_label = [{"name": str(name), **{k: f"{r[k]:.3f}" for k in (
        "precision", "recall", "f1", "ap", "ece", "threshold")}, "support": str(r["support"])}
        for name, r in m["per_label"].items()]
    galleries = []
    for name in data.labels:
        blocks = [{"title": title, "tiles": [
            _tile(assets, str(data.paths[row]), [f"p({name}) {p:.3f}"])
            for row, p in data.rankings[name][key]]} for key, title in TAG_GALLERIES]
        galleries.append({"name": name, "blocks": blocks})
    issues = data.label_issues
    charts = _history_charts(data.history, {"val mAP": "val_map", "val macro-F1": "val_macro_f1"},
                             "Validation mAP and macro-F1", "Loss")
    if data.label_counts:
        charts.append(figures.grouped_bars(list(data.labels), data.label_counts,
                                           "Images per label"))
    page = _TEMPLATES.get_template("multilabel.html.j2").render(
        title=data.title, subtitle=data.subtitle, cards=cards, per_label=per_label,
        labels=[str(n) for n in data.labels], galleries=galleries,
        co_occurrence=[{"name": str(name), "cells": [int(v) for v in row]}
                       for name, row in zip(data.labels, data.co_occurrence)],
        co_occurrence_note=data.co_occurrence_note,
        charts=[Markup(chart) for chart in charts],  # built from numbers, every text escaped
        label_issues=None if issues is None else {
            "note": data.label_issue_note, "more": len(issues) - 60,
            "tiles": [_tile(assets, path, [f"{'missing' if missing else 'wrong'}: {label}",
                                           f"score {score:.3f}"])
                      for path, label, missing, score in issues[:60]]},
        duplicates=None if data.duplicates is None else _duplicates(data.duplicates, assets),
        notes=[str(n) for n in data.notes])
    return _write_page(out, page)
