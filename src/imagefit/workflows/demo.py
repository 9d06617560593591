"""`imagefit demo`: the whole workflow on the bundled Fashion-MNIST demo subset: train on its
`train/` folder, then report on and evaluate its held-out `test/` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imagefit.config import TrainConfig
from imagefit.errors import DatasetError
from imagefit.workflows.report import ReportResult, build_run_report
from imagefit.workflows.train import TrainResult, train_run

# src/imagefit/workflows/demo.py -> repository root / examples / fashion-mnist-demo
BUNDLED = Path(__file__).resolve().parents[3] / "examples" / "fashion-mnist-demo"


@dataclass
class DemoResult:
    data: Path
    train: TrainResult
    test: ReportResult      # the report on the test folder, with its evaluation
    test_metrics: Path      # RUN/test-eval/metrics.json


def demo_data(data: str | os.PathLike | None = None) -> Path:
    """The demo dataset: `data`, else $IMAGEFIT_DEMO_DATA, else the bundled one.

    Raises:
        DatasetError: it has no train/ and test/ folders.
    """
    folder = Path(data or os.environ.get("IMAGEFIT_DEMO_DATA") or BUNDLED)
    if not (folder / "train").is_dir() or not (folder / "test").is_dir():
        raise DatasetError(f"Demo dataset not found at {folder} (expected train/ and test/). "
                           f"Run from a clone of the repository, or regenerate it with "
                           f"'python examples/make_demo_dataset.py'.")
    return folder


def run_demo(data: Path, out: str | os.PathLike, *, progress: bool = True) -> DemoResult:
    """Train on `data/train` into `out`, then report on and evaluate `data/test`."""
    result = train_run(TrainConfig(data=str(data / "train"), out=str(out), report=False),
                       progress=progress)
    # The report evaluates the test folder; its predictions are the test metrics too.
    page = build_run_report(result.run_dir, data=data / "test", progress=progress)
    test_dir = page.evaluation.save(result.run_dir / "test-eval")
    return DemoResult(data, result, page, test_dir / "metrics.json")
