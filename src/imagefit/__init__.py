"""imagefit: a folder of images in; a trained, calibrated classifier out. Offline, on a CPU.

Importing this package has no side effects and touches no network.
"""

from imagefit._validation import check_is_fitted
from imagefit._version import __version__
from imagefit.config import TrainConfig
from imagefit.data.audit import preflight
from imagefit.data.augment import AugmentConfig, Augmenter
from imagefit.data.images import load_image
from imagefit.data.index import ImageIndex
from imagefit.data.sources import SourceOptions, open_dataset, scan_folder
from imagefit.data.tables import from_table
from imagefit.errors import (ConfigError, DatasetError, ImagefitError, ImageLoadError,
                             ModelFormatError, NotFittedError, OutputError, TrainingDivergedError,
                             TrainingInterrupted)
from imagefit.estimator import ImageClassifier, load_model
from imagefit.evaluation.result import EvaluationResult, evaluate
from imagefit.features.extract import Predictions
from imagefit.workflows.train import train_run

__all__ = ["ImageClassifier", "ImageIndex", "AugmentConfig", "Augmenter", "EvaluationResult",
           "Predictions", "TrainConfig", "SourceOptions", "scan_folder", "open_dataset",
           "from_table", "preflight", "load_image", "load_model",
           "evaluate", "train_run", "check_is_fitted", "ImagefitError", "ConfigError",
           "DatasetError", "ImageLoadError", "ModelFormatError", "NotFittedError", "OutputError",
           "TrainingDivergedError", "TrainingInterrupted", "__version__"]
