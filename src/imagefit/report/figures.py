"""Small inline SVG charts for the report (line charts, grouped bars, reliability diagrams,
scatter plots, histograms).
Pure string building from numbers: no plotting library, no scripts, every label escaped.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

import numpy as np

PALETTE = ("#2f6fde", "#e07b39", "#3a9d5d", "#b03a8c", "#7a6bd1", "#c9a227")
_W, _H, _PAD = 420, 220, 38


def _axes(y_lo: float, y_hi: float, x_labels: Sequence[str], title: str) -> list[str]:
    parts = [f'<text x="{_W / 2}" y="14" text-anchor="middle" class="t">{escape(title)}</text>',
             f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - 8}" y2="{_H - _PAD}" class="ax"/>',
             f'<line x1="{_PAD}" y1="22" x2="{_PAD}" y2="{_H - _PAD}" class="ax"/>']
    for frac in (0, 0.5, 1):
        y = _H - _PAD - frac * (_H - _PAD - 22)
        value = y_lo + frac * (y_hi - y_lo)
        parts.append(f'<text x="{_PAD - 4}" y="{y + 4:.1f}" text-anchor="end" class="s">'
                     f'{value:.3g}</text>')
    for i, label in enumerate(x_labels):
        x = _PAD + (i + 0.5) * (_W - 8 - _PAD) / max(len(x_labels), 1)
        parts.append(f'<text x="{x:.1f}" y="{_H - _PAD + 14}" text-anchor="middle" class="s">'
                     f'{escape(str(label))}</text>')
    return parts


def _legend(names: Sequence[str]) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        x = _PAD + 4 + i * 130
        parts.append(f'<rect x="{x}" y="{_H - 14}" width="10" height="10" '
                     f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{_H - 5}" class="s">{escape(name)}</text>')
    return parts


def _svg(parts: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
            f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>")


def line_chart(x: Sequence[float], series: dict[str, Sequence[float]], title: str) -> str:
    """Lines over a shared x axis (e.g. epochs); NaN points are skipped."""
    x = np.asarray(x, float)
    values = np.concatenate([np.asarray(v, float) for v in series.values()]) if series else []
    finite = values[np.isfinite(values)] if len(values) else np.array([0.0, 1.0])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    span_x = (x.max() - x.min()) if len(x) > 1 else 1.0
    ticks = [f"{v:g}" for v in (x.min(), x.max())] if len(x) else []
    parts = _axes(lo, hi, [], title)
    for t, label in zip((0.0, 1.0), ticks):
        px = _PAD + t * (_W - 8 - _PAD)
        parts.append(f'<text x="{px:.1f}" y="{_H - _PAD + 14}" text-anchor="middle" '
                     f'class="s">{escape(label)}</text>')
    for i, (name, ys) in enumerate(series.items()):
        points = [(_PAD + (xi - x.min()) / span_x * (_W - 8 - _PAD),
                   _H - _PAD - (yi - lo) / (hi - lo) * (_H - _PAD - 22))
                  for xi, yi in zip(x, np.asarray(ys, float)) if np.isfinite(yi)]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke-width="2" '
                         f'stroke="{PALETTE[i % len(PALETTE)]}"/>')
    return _svg(parts + _legend(list(series)), title)


def grouped_bars(labels: Sequence[str], groups: dict[str, Sequence[float]], title: str) -> str:
    """Bars per label, one colour per group (e.g. train and validation counts per class)."""
    hi = max([float(np.max(v)) for v in groups.values() if len(v)] + [1.0])
    slot = (_W - 8 - _PAD) / max(len(labels), 1)
    width = slot * 0.8 / max(len(groups), 1)
    parts = _axes(0, hi, [str(label)[:10] for label in labels], title)
    for g, (name, values) in enumerate(groups.items()):
        for i, value in enumerate(values):
            h = float(value) / hi * (_H - _PAD - 22)
            x = _PAD + i * slot + slot * 0.1 + g * width
            parts.append(f'<rect x="{x:.1f}" y="{_H - _PAD - h:.1f}" width="{width:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[g % len(PALETTE)]}">'
                         f'<title>{escape(str(labels[i]))} ({escape(name)}): {value:g}</title>'
                         f'</rect>')
    return _svg(parts + _legend(list(groups)), title)


def reliability_bins(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean confidence, accuracy, count) per equal-width confidence bin."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(bins, confidence, n_bins) / count
        acc = np.bincount(bins, correct.astype(float), n_bins) / count
    return conf, acc, count


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                        title: str) -> str:
    """Accuracy against confidence per bin for each curve, with the diagonal of perfection."""
    parts = _axes(0, 1, [], title)
    x0, x1, y0, y1 = _PAD, _W - 8, _H - _PAD, 22
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" class="diag"/>')
    for i, (name, (conf, acc, count)) in enumerate(curves.items()):
        keep = count > 0
        points = [(x0 + c * (x1 - x0), y0 - a * (y0 - y1)) for c, a in zip(conf[keep], acc[keep])]
        colour = PALETTE[i % len(PALETTE)]
        if points:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                         f'stroke-width="2"/>')
            parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>'
                      for px, py in points]
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x0 + t * (x1 - x0):.1f}" y="{_H - _PAD + 14}" '
                     f'text-anchor="middle" class="s">{t:g}</text>')
    return _svg(parts + _legend(list(curves)), title)


def scatter(x: np.ndarray, y: np.ndarray, title: str, max_points: int = 2000) -> str:
    """y against x on one scale for both (a predicted-vs-true plot), with the diagonal y = x;
    at most `max_points` points (an even subsample beyond)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) > max_points:
        pick = np.linspace(0, len(x) - 1, max_points).astype(int)
        x, y = x[pick], y[pick]
    both = np.concatenate([x, y]) if len(x) else np.array([0.0, 1.0])
    lo, hi = float(both.min()), float(both.max())
    hi = hi if hi > lo else lo + 1
    parts = _axes(lo, hi, [], title)
    x0, x1, y0, y1 = _PAD, _W - 8, _H - _PAD, 22
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" class="diag"/>')
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{x0 + t * (x1 - x0):.1f}" y="{_H - _PAD + 14}" '
                     f'text-anchor="middle" class="s">{lo + t * (hi - lo):.3g}</text>')
    parts += [f'<circle cx="{x0 + (a - lo) / (hi - lo) * (x1 - x0):.1f}" '
              f'cy="{y0 - (b - lo) / (hi - lo) * (y0 - y1):.1f}" r="2" fill="{PALETTE[0]}" '
              f'fill-opacity="0.6"/>' for a, b in zip(x, y)]
    return _svg(parts, title)


def histogram(values: np.ndarray, title: str, bins: int = 30) -> str:
    """Counts of `values` (finite ones) in equal-width bins, the edges' range on the x axis."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=bins) if len(values) else (np.zeros(bins),
                                                                        np.linspace(0, 1, bins + 1))
    hi = max(float(counts.max()), 1.0)
    parts = _axes(0, hi, [], title)
    width = (_W - 8 - _PAD) / bins
    for i, count in enumerate(counts):
        h = float(count) / hi * (_H - _PAD - 22)
        parts.append(f'<rect x="{_PAD + i * width:.1f}" y="{_H - _PAD - h:.1f}" '
                     f'width="{width * 0.9:.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
                     f'<title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(count)}</title></rect>')
    for t, edge in ((0.0, edges[0]), (1.0, edges[-1])):
        parts.append(f'<text x="{_PAD + t * (_W - 8 - _PAD):.1f}" y="{_H - _PAD + 14}" '
                     f'text-anchor="middle" class="s">{edge:.3g}</text>')
    return _svg(parts, title)
