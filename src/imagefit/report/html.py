"""Rendering the report: one static `index.html` (no scripts, no network) plus `assets/` with
thumbnails. Every string that comes from the user's data (class names, file names) is escaped,
and no user path is ever put in an `href` or `src`: thumbnails are stored under hashed names,
re-encoded from decoded pixels, so no EXIF or other metadata is copied.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from imagefit.data.images import load_image
from imagefit.errors import ImageLoadError
from imagefit.evaluate.metrics import ECE_BINS
from imagefit.evaluate.ranking import GALLERIES, GALLERY_TITLES, Rankings, most_confused
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


def e(value) -> str:
    """Escape for HTML text and attribute values."""
    return escape(str(value), quote=True)


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


def render_report(data: ReportData, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/index.html` and its assets; returns the page's path."""
    out = Path(out_dir)
    assets = _Assets(out / "assets")
    body = [f"<header><h1>{e(data.title)}</h1><p class='muted'>{e(data.subtitle)}</p></header>",
            _headline(data.metrics), _nav(data.classes)]
    body.append(_section("Per-class metrics", _per_class_table(data.metrics)))
    body.append(_section("Confusion matrix", _confusion(data.metrics, data.classes)))
    body.append(_section("Galleries per class", _galleries(data, assets), "galleries",
                         "For each class: the images the model is most sure of, the ones it is "
                         "least sure of (lowest probability of the true class), and the ones it "
                         "got wrong with the most confidence. p(true) is the calibrated "
                         "probability of the labelled class, p(pred) of the predicted one."))
    body.append(_section("Training and data", _charts(data)))
    if data.label_issues is not None:
        body.append(_section("Likely label issues", _label_issues(data, assets), "label-issues",
                             data.label_issue_note))
    if data.duplicates is not None:
        body.append(_section("Duplicates and leakage", _duplicates(data.duplicates, assets),
                             "duplicates"))
    if data.notes:
        body.append(_section("Notes", "<ul>" + "".join(f"<li>{e(n)}</li>" for n in data.notes)
                             + "</ul>"))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            f"img-src 'self' data:; style-src 'unsafe-inline'\">"
            f"<title>{e(data.title)}</title><style>{_CSS}</style></head><body><main>"
            + "".join(body) + "</main></body></html>")
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    # Names that were not valid UTF-8 on disk are shown with backslash escapes.
    index.write_text(page, encoding="utf-8", errors="backslashreplace")
    return index


def _section(title: str, content: str, anchor: str | None = None, intro: str = "") -> str:
    ident = f" id='{e(anchor)}'" if anchor else ""
    lead = f"<p class='muted'>{e(intro)}</p>" if intro else ""
    return f"<section{ident}><h2>{e(title)}</h2>{lead}{content}</section>"


def _headline(m: dict) -> str:
    cards = [("Accuracy", m["accuracy"]), ("Balanced accuracy", m["balanced_accuracy"]),
             ("Macro-F1", m["macro_f1"]), ("Log loss", m["log_loss"]), ("ECE", m["ece"]),
             ("Images", m["n"])]
    return "<div class='cards'>" + "".join(
        f"<div class='card'><div class='v'>{_fmt(v)}</div><div class='k'>{e(k)}</div></div>"
        for k, v in cards) + "</div>"


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def _nav(classes) -> str:
    links = " · ".join(f"<a href='#class-{i}'>{e(c)}</a>" for i, c in enumerate(classes))
    return (f"<nav><a href='#galleries'>Galleries</a>: {links} | <a href='#label-issues'>"
            f"Label issues</a> | <a href='#duplicates'>Duplicates</a></nav>")


def _per_class_table(m: dict) -> str:
    rows = "".join(f"<tr><td>{e(name)}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}"
                   f"</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
                   for name, r in m["per_class"].items())
    return ("<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr></thead><tbody>{rows}</tbody></table>")


def _confusion(m: dict, classes) -> str:
    matrix = np.asarray(m["confusion_matrix"], float)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    head = "".join(f"<th title='{e(c)}'>{e(c[:12])}</th>" for c in classes)
    rows = []
    for i, name in enumerate(classes):
        cells = "".join(f"<td style='background: rgba(47,111,222,{normalised[i, j]:.2f})'>"
                        f"{int(matrix[i, j])}<br><small>{normalised[i, j]:.0%}</small></td>"
                        for j in range(len(classes)))
        rows.append(f"<tr><th>{e(name)}</th>{cells}</tr>")
    pairs = most_confused(matrix.astype(int), k=10)
    confused = "".join(f"<li>{e(classes[t])} → {e(classes[p])}: {n}</li>" for t, p, n in pairs)
    return (f"<p class='muted'>Rows: true class; columns: predicted. Each cell: count and share "
            f"of its row.</p><div class='scroll'><table class='cm'><thead><tr><th></th>{head}"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"<h3>Most confused pairs</h3><ol>{confused or '<li>none</li>'}</ol>")


def _tile(assets: _Assets, path: str, caption: str, extra: str = "") -> str:
    url = assets.thumbnail(path)
    image = (f"<img src='{e(url)}' alt='' loading='lazy'>" if url
             else "<div class='missing'>unreadable</div>")
    return (f"<figure>{image}{extra}<figcaption><span class='fn'>{e(Path(path).name)}</span>"
            f"{caption}</figcaption></figure>")


def _galleries(data: ReportData, assets: _Assets) -> str:
    r, out = data.rankings, []
    for c, name in enumerate(data.classes):
        blocks = []
        for gallery in GALLERIES:
            tiles = []
            for pos in r.select(c, gallery):
                row = int(r.row[pos])
                caption = (f"<br>p(true) {r.p_true[pos]:.3f}<br>pred {e(data.classes[r.predicted[pos]])}"
                           f" {r.p_pred[pos]:.3f}")
                extra = ""
                if gallery == "wrong" and row in data.gradcams:
                    url = assets.array(f"gradcam-{row}-{data.paths[row]}", data.gradcams[row])
                    extra = f"<img src='{e(url)}' alt='Grad-CAM' class='cam' loading='lazy'>"
                tiles.append(_tile(assets, str(data.paths[row]), caption, extra))
            content = "".join(tiles) or "<p class='muted'>none</p>"
            blocks.append(f"<h4>{e(GALLERY_TITLES[gallery])}</h4><div class='tiles'>{content}</div>")
        out.append(f"<div class='cls' id='class-{c}'><h3>{e(name)}</h3>{''.join(blocks)}</div>")
    if data.gradcams:
        out.insert(0, "<p class='muted'>Confidently wrong images also show a Grad-CAM map of "
                      "the predicted class (warm = regions that pushed towards it).</p>")
    return "".join(out)


def _charts(data: ReportData) -> str:
    charts = []
    if data.history:
        epochs = [row["epoch"] for row in data.history]
        charts.append(figures.line_chart(epochs, {
            "val balanced acc": [row["val_balanced_accuracy"] for row in data.history],
            "val accuracy": [row["val_accuracy"] for row in data.history]}, "Validation accuracy"))
        charts.append(figures.line_chart(epochs, {
            "train loss": [row["train_loss"] for row in data.history],
            "val loss": [row["val_loss"] for row in data.history]}, "Loss"))
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
    text = (f"<p class='muted'>Reliability: points on the diagonal mean the confidence can be "
            f"taken at face value; the headline ECE uses {ECE_BINS} bins.</p>")
    return "<div class='charts'>" + "".join(charts) + "</div>" + text


def _label_issues(data: ReportData, assets: _Assets) -> str:
    if not data.label_issues:
        return "<p>No likely label issues found.</p>"
    tiles = [_tile(assets, path, f"<br>labelled {e(given)}<br>looks like {e(suggested)}"
                   f"<br>score {score:.3f}")
             for path, given, suggested, score in data.label_issues[:60]]
    more = len(data.label_issues) - 60
    tail = f"<p class='muted'>…and {more} more in label_issues.csv.</p>" if more > 0 else ""
    return f"<div class='tiles'>{''.join(tiles)}</div>{tail}"


def _duplicates(dups: dict, assets: _Assets) -> str:
    summary = "".join(f"<li>{e(k)}: {v}</li>" for k, v in dups.get("summary", {}).items())
    groups = []
    for group in dups.get("groups", [])[:30]:
        tiles = "".join(_tile(assets, path, f"<br>{e(label)} · {e(subset)}")
                        for path, label, subset in group[:6])
        groups.append(f"<div class='tiles dup'>{tiles}</div>")
    return (f"<ul>{summary}</ul>" + ("".join(groups) or "<p>No duplicates found.</p>"))


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2433}
main{max-width:72rem;margin:0 auto;padding:1rem 1.5rem 4rem}
h1{margin:.6rem 0 0}h2{margin-top:2.2rem;border-bottom:1px solid #d5dae3}h4{margin:.8rem 0 .3rem}
.muted{color:#5b6478}nav{margin:.8rem 0;font-size:.92rem}a{color:#2f6fde}
.cards{display:flex;flex-wrap:wrap;gap:.7rem;margin:1rem 0}
.card{background:#fff;border-radius:10px;padding:.6rem 1rem;min-width:7.5rem;box-shadow:0 1px 2px #0001}
.card .v{font-size:1.5rem;font-weight:600}.card .k{color:#5b6478;font-size:.85rem}
table{border-collapse:collapse;background:#fff}td,th{padding:.25rem .55rem;border:1px solid #e1e5ec;text-align:right}
td:first-child,th:first-child{text-align:left}.cm td{text-align:center;min-width:3rem}
.scroll{overflow-x:auto}.tiles{display:flex;flex-wrap:wrap;gap:.6rem}
figure{margin:0;width:8.2rem;background:#fff;border-radius:8px;padding:.35rem;box-shadow:0 1px 2px #0001}
figure img{width:100%;height:auto;display:block;border-radius:4px;image-rendering:auto}
figure img.cam{margin-top:.25rem}.missing{height:6rem;display:grid;place-items:center;color:#b3261e}
figcaption{font-size:.75rem;line-height:1.3;margin-top:.25rem;overflow-wrap:anywhere}.fn{font-weight:600}
.cls{margin-bottom:1.5rem}.charts{display:flex;flex-wrap:wrap;gap:1rem}
svg{background:#fff;border-radius:8px}svg .t{font-size:12px;font-weight:600}svg .s{font-size:10px;fill:#5b6478}
svg .ax{stroke:#8a94a8}svg .diag{stroke:#c5cad6;stroke-dasharray:4 3}.dup{margin-bottom:.8rem}
"""
