"""The CSV writer behind imagefit's prediction files (`predict --out`, `eval/predictions.csv`):
chunks written as they come, a table's own columns first. `evaluation.result` (classes) and
`evaluation.tagging` (label sets) give it their header and rows.
"""

from __future__ import annotations

import csv
import itertools
import os
from typing import Callable, Iterable

import numpy as np

from imagefit.features.extract import Predictions


def write_prediction_rows(preds: Predictions | Iterable[Predictions], path: str | os.PathLike,
                          header: Callable[[list[str]], list[str]],
                          row: Callable[[Predictions, int, int], list[str]],
                          leading: dict[str, list[str]] | None = None) -> int:
    """The CSV writer behind the prediction files: `header(classes)` (its last column is
    `error`), then `row(chunk, i, n)` for row i of each chunk (n counting over all chunks)
    plus the error text, after a table's own `leading` columns (a name shared with the
    header prefixed with `input_`); chunks are written as they come. Returns the row count."""
    chunks = iter([preds] if isinstance(preds, Predictions) else preds)
    first = next(chunks, None)
    if first is None:
        raise ValueError("no predictions to write")
    columns = header(list(first.classes))
    leading = leading or {}
    names = [f"input_{k}" if k in columns else k for k in leading]
    n_rows = 0
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(names + columns)
        for chunk in itertools.chain([first], chunks):
            for i in range(len(chunk.paths)):
                writer.writerow([leading[k][n_rows] for k in leading] + row(chunk, i, n_rows)
                                + [chunk.errors[i]])
                n_rows += 1
    return n_rows


def top_k_text(classes, p: np.ndarray, k: int) -> str:
    """The k most likely classes as `class:probability` joined with `;`."""
    best = np.argsort(-p, kind="stable")[:k]
    return ";".join(f"{classes[j]}:{p[j]:.4f}" for j in best)
