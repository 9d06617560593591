"""imagefit: a folder of images in; a trained, calibrated classifier out. Offline, on a CPU.

Importing this package has no side effects and touches no network. Its names are imported when
first used (PEP 562), so `import imagefit.keras` or `imagefit --help` does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

from imagefit._version import __version__

# name -> module that defines it
_EXPORTS = {
    "check_is_fitted": "imagefit._validation",
    "TrainConfig": "imagefit.config",
    "preflight": "imagefit.data.audit",
    "AugmentConfig": "imagefit.data.augment",
    "Augmenter": "imagefit.data.augment",
    "load_image": "imagefit.data.images",
    "ImageIndex": "imagefit.data.index",
    "SourceOptions": "imagefit.data.sources",
    "open_dataset": "imagefit.data.sources",
    "scan_folder": "imagefit.data.sources",
    "from_table": "imagefit.data.tables",
    "ConfigError": "imagefit.errors",
    "DatasetError": "imagefit.errors",
    "ImagefitError": "imagefit.errors",
    "ImageLoadError": "imagefit.errors",
    "ModelFormatError": "imagefit.errors",
    "NotFittedError": "imagefit.errors",
    "OutputError": "imagefit.errors",
    "TrainingDivergedError": "imagefit.errors",
    "TrainingInterrupted": "imagefit.errors",
    "ImageClassifier": "imagefit.estimator",
    "load_model": "imagefit.estimator",
    "RegressionResult": "imagefit.evaluation.regression",
    "evaluate_regressor": "imagefit.evaluation.regression",
    "EvaluationResult": "imagefit.evaluation.result",
    "evaluate": "imagefit.evaluation.result",
    "Predictions": "imagefit.features.extract",
    "ImageRegressor": "imagefit.regressor",
    "train_run": "imagefit.workflows.train",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagefit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
