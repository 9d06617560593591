"""Evaluating a fitted `ImageRegressor` on images with known values: the metrics
(`metrics.regression_metrics`, with the interval's promised and measured coverage) and the CSV
of predictions (`path,true_value,value,lower,upper,error`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imagefit.data.index import BadFile, ImageIndex
from imagefit.errors import ConfigError
from imagefit.features.extract import error_texts
from imagefit.metrics import regression_metrics
from imagefit.regressor import ImageRegressor


@dataclass
class RegressionResult:
    """Metrics (the `evaluate --json` keys of a regression) and the per-image predictions
    behind them; a file that could not be decoded has NaN values and its reason in `errors`."""

    metrics: dict
    paths: np.ndarray
    y_true: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    errors: list[str]
    bad_files: list[BadFile]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `metrics.json` and `predictions.csv` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json_text(self.metrics), encoding="utf-8")
        write_value_predictions_csv(folder / "predictions.csv", self.paths, self.value,
                                    self.lower, self.upper, self.errors, y_true=self.y_true)
        return folder


def regression_result(model: ImageRegressor, paths: np.ndarray, y_true: np.ndarray,
                      value: np.ndarray, errors: list[str],
                      bad_files: list[BadFile] | None = None) -> RegressionResult:
    """Metrics of predictions already made (NaN rows, the files that failed, left out)."""
    lower, upper = model.bounds(value)
    ok = np.isfinite(value)
    metrics = {"task": "regress",
               **regression_metrics(y_true[ok], value[ok], lower[ok], upper[ok]),
               "interval_promised": float(model.interval), "n_failed": int((~ok).sum())}
    return RegressionResult(metrics, np.asarray(paths), np.asarray(y_true, np.float64), value,
                            lower, upper, errors, list(bad_files or []))


def evaluate_regressor(model: ImageRegressor, data: ImageIndex, *,
                       progress: bool = False) -> RegressionResult:
    """Predict every image of `data` (an `ImageIndex` with values) and compute the metrics.

    Example:
        >>> result = evaluate_regressor(reg, open_dataset("test.csv",
        ...                             SourceOptions(task="regress")))   # doctest: +SKIP
        >>> result.metrics["mae"], result.metrics["interval_coverage"]    # doctest: +SKIP
        (3.1, 0.91)
    """
    if data.targets is None:
        raise ConfigError("This model predicts numbers: evaluate it on a table of images and "
                          "values (--task regress, or a value column with decimals).")
    paths, values, errors, failures = [], [], [], []
    for chunk, value, failed in model.iter_predict_files(data.paths, progress=progress):
        paths.append(chunk)
        values.append(value)
        errors += error_texts(failed)
        failures += [f for f in failed if f is not None]
    value = np.concatenate(values) if values else np.zeros(0)
    return regression_result(model, data.paths, data.targets, value, errors,
                             list(data.report.bad_files) + failures)


def validation_result(model: ImageRegressor) -> RegressionResult:
    """Metrics on the validation set from the predictions `fit` already made."""
    paths, truth, predicted = model.validation_
    return regression_result(model, paths, truth, predicted, [""] * len(paths))


def write_value_predictions_csv(path: str | os.PathLike, paths, value: np.ndarray,
                                lower: np.ndarray, upper: np.ndarray, errors: list[str], *,
                                y_true: np.ndarray | None = None,
                                leading: dict[str, list[str]] | None = None) -> int:
    """`path[,true_value],value,lower,upper,error` rows in input order (a contract), after a
    table's own `leading` columns (a shared name is prefixed with `input_`); returns the number
    of rows."""
    header = ["path"] + (["true_value"] if y_true is not None else []) + [
        "value", "lower", "upper", "error"]
    leading = leading or {}
    names = [f"input_{k}" if k in header else k for k in leading]
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(names + header)
        for i, file_path in enumerate(paths):
            row = [leading[k][i] for k in leading] + [str(file_path)]
            if y_true is not None:
                row.append(f"{y_true[i]:.6g}")
            if errors[i] or not np.isfinite(value[i]):
                row += ["", "", ""]
            else:
                row += [f"{value[i]:.6g}", f"{lower[i]:.6g}", f"{upper[i]:.6g}"]
            writer.writerow(row + [errors[i]])
    return len(paths)


def write_value_issues(issues: list[tuple[str, float, float, float]], path: Path) -> None:
    """A regression's `label_issues.csv`: `path,given_value,out_of_fold,score`, most likely
    issues first."""
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "given_value", "out_of_fold", "score"])
        writer.writerows((p, f"{given:.6g}", f"{oof:.6g}", f"{score:.3f}")
                         for p, given, oof, score in issues)


def json_text(metrics: dict) -> str:
    """`metrics` as strict JSON: a non-finite number (an unbounded interval's width, R² of
    constant values, the AP of a label without positives), at any depth, is null, not the
    `NaN`/`Infinity` JSON parsers reject."""
    return json.dumps(_finite_or_null(metrics), indent=2, ensure_ascii=True)


def _finite_or_null(value):
    """`value` with every non-finite float, at any depth of dicts and lists, as None."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
