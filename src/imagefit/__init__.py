"""imagefit: a folder of images in; a trained, calibrated classifier out. Offline, on a CPU.

Importing this package has no side effects and touches no network.
"""

__version__ = "0.1.0"

from imagefit.bundle import load_model  # noqa: E402
from imagefit.config import TrainConfig  # noqa: E402
from imagefit.data.audit import preflight  # noqa: E402
from imagefit.data.augment import AugmentConfig, Augmenter  # noqa: E402
from imagefit.data.images import load_image  # noqa: E402
from imagefit.data.index import ImageIndex, scan_folder  # noqa: E402
from imagefit.errors import (  # noqa: E402
    ConfigError, DatasetError, ImagefitError, ImageLoadError, ModelFormatError, NotFittedError,
    OutputError, TrainingDivergedError, TrainingInterrupted)
from imagefit.estimator import ImageClassifier  # noqa: E402
from imagefit.evaluate.evaluation import EvaluationResult, evaluate  # noqa: E402
from imagefit.workflow import train_run  # noqa: E402

__all__ = ["ImageClassifier", "ImageIndex", "AugmentConfig", "Augmenter", "EvaluationResult",
           "TrainConfig", "scan_folder", "preflight", "load_image", "load_model", "evaluate",
           "train_run", "ImagefitError", "ConfigError", "DatasetError", "ImageLoadError",
           "ModelFormatError", "NotFittedError", "OutputError", "TrainingDivergedError",
           "TrainingInterrupted", "__version__"]
