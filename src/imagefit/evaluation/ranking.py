"""Per-class rankings from predictions: for every class, the images the model is most confident
about (correct, highest probability of the true class), least confident about (lowest
probability of the true class), and confidently wrong about (another class predicted, highest
probability of that class); plus the most confused class pairs. Arrays in, arrays out.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from imagefit._validation import check_int

GALLERIES = ("confident", "unconfident", "wrong")
GALLERY_TITLES = {"confident": "Most confident (correct)",
                  "unconfident": "Least confident (lowest probability of the true class)",
                  "wrong": "Confidently wrong"}


@dataclass(frozen=True)
class Rankings:
    """One row per ranked image: `row` indexes the predictions it came from."""

    true_class: np.ndarray   # int
    gallery: np.ndarray      # str, one of GALLERIES
    rank: np.ndarray         # int, 1-based within (class, gallery)
    row: np.ndarray          # int
    p_true: np.ndarray       # probability of the true class
    p_pred: np.ndarray       # probability of the predicted class
    predicted: np.ndarray    # int

    def select(self, true_class: int, gallery: str) -> np.ndarray:
        """Positions (into these arrays) of one gallery, in rank order."""
        return np.flatnonzero((self.true_class == true_class) & (self.gallery == gallery))

    def write_csv(self, path: str | os.PathLike, paths: np.ndarray, classes: Sequence[str]) -> None:
        """`class,gallery,rank,path,p_true,p_pred,predicted` (report/rankings.csv)."""
        with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "gallery", "rank", "path", "p_true", "p_pred", "predicted"])
            for i in range(len(self.row)):
                writer.writerow([classes[self.true_class[i]], self.gallery[i], int(self.rank[i]),
                                 paths[self.row[i]], f"{self.p_true[i]:.6f}",
                                 f"{self.p_pred[i]:.6f}", classes[self.predicted[i]]])


def rank_per_class(y_true: np.ndarray, proba: np.ndarray, k: int = 8) -> Rankings:
    """The three galleries of every class, `k` images each at most.

    Rows with a negative label or NaN probabilities are left out. Ties keep input order.

    Example:
        >>> y = np.array([0, 0, 1]); p = np.array([[.9, .1], [.4, .6], [.3, .7]])
        >>> r = rank_per_class(y, p, k=2)
        >>> r.row[r.select(0, "wrong")].tolist(), r.row[r.select(0, "unconfident")].tolist()
        ([1], [1, 0])
    """
    check_int("k", k, 1)
    y_true = np.asarray(y_true, np.int64)
    proba = np.asarray(proba, np.float64)
    valid = (y_true >= 0) & np.isfinite(proba).all(axis=1)
    predicted = np.where(valid, np.nan_to_num(proba).argmax(axis=1), -1)
    columns: dict[str, list] = {name: [] for name in
                                ("true_class", "gallery", "rank", "row", "p_true", "p_pred",
                                 "predicted")}
    for c in np.unique(y_true[valid]):
        members = np.flatnonzero(valid & (y_true == c))
        p_true = proba[members, c]
        pred = predicted[members]
        p_pred = proba[members, pred]
        correct = pred == c
        choices = {
            "confident": members[correct][_order(-p_true[correct])],
            "unconfident": members[_order(p_true)],
            "wrong": members[~correct][_order(-p_pred[~correct])],
        }
        for gallery in GALLERIES:
            chosen = choices[gallery][:k]
            columns["true_class"] += [int(c)] * len(chosen)
            columns["gallery"] += [gallery] * len(chosen)
            columns["rank"] += list(range(1, len(chosen) + 1))
            columns["row"] += chosen.tolist()
            columns["p_true"] += proba[chosen, c].tolist()
            columns["p_pred"] += proba[chosen, predicted[chosen]].tolist()
            columns["predicted"] += predicted[chosen].tolist()
    return Rankings(np.array(columns["true_class"], np.int64),
                    np.array(columns["gallery"], dtype=str).astype("<U11"),
                    np.array(columns["rank"], np.int64), np.array(columns["row"], np.int64),
                    np.array(columns["p_true"], np.float64),
                    np.array(columns["p_pred"], np.float64),
                    np.array(columns["predicted"], np.int64))


def _order(keys: np.ndarray) -> np.ndarray:
    """Ascending order of `keys`, ties in input order."""
    return np.argsort(keys, kind="stable")


def most_confused(confusion: np.ndarray, k: int = 10) -> list[tuple[int, int, int]]:
    """The `k` largest off-diagonal cells as (true, predicted, count), largest first.

    Example:
        >>> most_confused(np.array([[5, 2], [3, 4]]))
        [(1, 0, 3), (0, 1, 2)]
    """
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.nonzero(off))]
    return sorted(cells, key=lambda cell: (-cell[2], cell[0], cell[1]))[:k]
