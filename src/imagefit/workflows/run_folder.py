"""The run folder of DESIGN section 4, in one place: where each file lives, and how each is
written and read (`split.csv`, `bad_files.csv`, `scan.json`, `config.yaml`, `history.csv`).
Nothing else names these files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from imagefit._fileio import check_output_folder
from imagefit.data.index import TAG_SEPARATOR, BadFile, ImageIndex
from imagefit.data.labels import UNGROUPED
from imagefit.errors import DatasetError

HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_loss", "val_accuracy",
                   "val_balanced_accuracy", "lr", "seconds"]
# A regression's validation columns instead of the accuracies (`train.objectives`).
REGRESSION_HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_loss", "val_mae", "val_rmse",
                              "val_r2", "lr", "seconds"]
# A multi-label model's: mean average precision and macro F1 at 0.5.
MULTILABEL_HISTORY_COLUMNS = ["epoch", "stage", "train_loss", "val_loss", "val_map",
                              "val_macro_f1", "lr", "seconds"]


def default_run_dir() -> str:
    """runs/<date-time>, the run folder when none is named."""
    return str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


@dataclass(frozen=True)
class RunFolder:
    """The files of one run folder."""

    path: Path

    @classmethod
    def of_model(cls, model_dir: Path) -> "RunFolder":
        """The run folder that holds a model folder (`RUN/model`)."""
        return cls(Path(model_dir).parent)

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.path / "eval"

    @property
    def test_eval(self) -> Path:
        """Metrics on the rows a table's split column marks `test`."""
        return self.path / "test"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def bad_files(self) -> Path:
        return self.path / "bad_files.csv"

    @property
    def split(self) -> Path:
        return self.path / "split.csv"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def scan(self) -> Path:
        return self.path / "scan.json"

    def check_writable(self) -> None:
        """Fail before any work when the folder cannot be written (read-only, no permission).

        Raises:
            OutputError: naming the folder and the reason.
        """
        check_output_folder(self.path, "the run folder", "Choose another --out.")

    def write_split(self, train: ImageIndex, val: ImageIndex,
                    test: ImageIndex | None = None) -> None:
        """`path,label,split,sha256` for every image used (a regression's label is the
        value; a multi-label one's, its labels joined with `|`), and a `group` column when the
        data has groups. Names that are not valid UTF-8 on disk are written byte for byte
        (surrogateescape), so `read_split` reads them back."""
        parts = [("train", train), ("val", val)] + ([("test", test)] if test else [])
        grouped = any(part.groups is not None for _, part in parts)
        with open(self.split, "w", newline="", encoding="utf-8",
                  errors="surrogateescape") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split", "sha256"] + (["group"] if grouped else []))
            for name, part in parts:
                hashes = part.sha256 if part.sha256 is not None else [""] * len(part)
                groups = part.groups if part.groups is not None else [""] * len(part)
                labels = (part.label_names() if part.targets is None
                          else [repr(float(v)) for v in part.targets])
                for p, label, digest, group in zip(part.paths, labels, hashes, groups):
                    group = "" if group.startswith(UNGROUPED) else group
                    writer.writerow([p, label, name, digest] + ([group] if grouped else []))

    def read_split(self, classes: tuple[str, ...] | None, *, multilabel: bool = False
                   ) -> tuple[ImageIndex, ImageIndex]:
        """(train, validation) indexes of `split.csv`, labels against `classes`; with None,
        a regression's, whose label column holds the values; `multilabel`: label sets."""
        if not self.split.is_file():
            raise DatasetError(f"{self.split} is missing: a report needs the run folder written "
                               f"by 'imagefit train' (split.csv lists the training images).")
        with open(self.split, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
        parts = []
        for name in ("train", "val"):
            chosen = [r for r in rows if r["split"] == name]
            paths, labels = [r["path"] for r in chosen], [r["label"] for r in chosen]
            if multilabel:
                index = ImageIndex.from_tags(paths, [[t for t in label.split(TAG_SEPARATOR) if t]
                                                     for label in labels], classes)
            elif classes is None:
                index = _value_index(self.split, paths, labels)
            else:
                index = ImageIndex.from_paths(paths, labels, classes)
            groups = None
            if "group" in (rows[0] if rows else {}):
                groups = np.array([r["group"] or UNGROUPED + r["path"] for r in chosen], dtype=str)
            parts.append(dataclasses.replace(
                index, sha256=np.array([r["sha256"] for r in chosen], dtype="<U64"),
                groups=groups))
        return parts[0], parts[1]

    def validation_paths(self) -> list[str]:
        """The validation images listed in `split.csv` ([] without one)."""
        if not self.split.is_file():
            return []
        with open(self.split, newline="", encoding="utf-8", errors="surrogateescape") as f:
            return [row["path"] for row in csv.DictReader(f) if row.get("split") == "val"]

    def write_bad_files(self, bad_files: list[BadFile]) -> None:
        write_bad_files(bad_files, self.bad_files)

    def write_scan_summary(self, index: ImageIndex, bad_files: list[BadFile]) -> None:
        """What the scan and the pre-flight saw, for machines: images found per class, ignored
        entries per category, bad files per reason, and the warnings printed."""
        summary = {"n_found": len(index),
                   "classes": ({} if index.is_regression else
                               dict(zip(index.classes, map(int, index.counts())))),
                   "ignored": dict(sorted(index.report.ignored.items())),
                   "bad_files": dict(sorted(Counter(b.reason for b in bad_files).items())),
                   "extension_mismatch": index.report.extension_mismatch,
                   "warnings": list(index.report.warnings)}
        self.scan.write_text(json.dumps(summary, indent=2, ensure_ascii=True), encoding="utf-8")

    def write_config(self, resolved: dict) -> None:
        self.config.write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True),
                               encoding="utf-8")

    def write_history(self, history: list[dict]) -> None:
        columns = (REGRESSION_HISTORY_COLUMNS if history and "val_mae" in history[0]
                   else MULTILABEL_HISTORY_COLUMNS if history and "val_map" in history[0]
                   else HISTORY_COLUMNS)
        with open(self.history, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in history:
                writer.writerow({k: row[k] for k in columns})

    def read_history(self) -> list[dict] | None:
        """The numeric columns of `history.csv` (NaN where empty); None without the file."""
        if not self.history.is_file():
            return None
        with open(self.history, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        columns = rows[0].keys() if rows else HISTORY_COLUMNS  # a regression's differ
        numeric = [k for k in columns if k != "stage"]
        return [{k: float(r[k]) if r.get(k) not in (None, "", "nan") else float("nan")
                 for k in numeric} for r in rows]


def write_bad_files(bad_files: list[BadFile], path: str | os.PathLike) -> None:
    """Write `path,reason,message` rows (always, with a header, even when empty)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason", "message"])
        for bad in bad_files:
            writer.writerow([bad.path, bad.reason, bad.message])


def _value_index(split: Path, paths: list[str], labels: list[str]) -> ImageIndex:
    try:
        return ImageIndex.from_values(paths, [float(v) for v in labels])
    except ValueError:
        raise DatasetError(f"{split} does not hold a regression's values in its label column; "
                           f"train the run again.") from None
