"""Rendering one `EvaluationResult` as a report folder (index.html, rankings.csv,
label_issues.csv): what `EvaluationResult.save_report` does (and `TagResult.save_report`,
for a multi-label model's). The run's fuller report (training
label issues, duplicates, curves) is `workflows/report.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from imagefit.evaluation.result import EvaluationResult, write_label_issues
from imagefit.evaluation.tagging import TagResult
from imagefit.report.html import ReportData, TagReportData, render_report, render_tags_report


def save_evaluation_report(result: EvaluationResult, folder: str | os.PathLike) -> Path:
    """Write the report of `result` into `folder`; returns the page."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    preds = result.predictions
    rankings = result.rankings()
    rankings.write_csv(folder / "rankings.csv", preds.paths, preds.classes)
    issues = result.label_issues()
    write_label_issues(issues, folder / "label_issues.csv")
    data = ReportData(title="imagefit evaluation", metrics=result.metrics,
                      classes=preds.classes, paths=preds.paths, y_true=result.y_true,
                      proba=preds.proba, rankings=rankings, label_issues=issues,
                      label_issue_note="Images of this set whose label disagrees with the "
                      "model's confident predictions; most likely first.")
    return render_report(data, folder)


def save_tags_report(result: TagResult, folder: str | os.PathLike) -> Path:
    """Write the report of a multi-label evaluation into `folder`: per-label metrics and
    galleries, the label co-occurrence of this set; returns the page."""
    seen = result.tags.astype(np.int64)
    preds = result.predictions
    return render_tags_report(TagReportData(
        title="imagefit evaluation", metrics=result.metrics, labels=preds.classes,
        paths=preds.paths, rankings=result.rankings(), co_occurrence=seen.T @ seen,
        co_occurrence_note=("Images of this set carrying both labels (row and column); the "
                            "diagonal is each label's count."),
        subtitle=f"multi-label · {len(seen):,} images"), folder)
