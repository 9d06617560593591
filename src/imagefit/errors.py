"""Typed errors of imagefit. Every error a user can cause is an `ImagefitError`; the CLI turns
them into one-line messages and exit codes, so nothing here may carry a traceback-only meaning.
"""

from __future__ import annotations


class ImagefitError(Exception):
    """Base class of every error imagefit raises on purpose."""

    exit_code = 1


class ConfigError(ImagefitError, ValueError):
    """A parameter or configuration value is invalid."""

    exit_code = 2


class DatasetError(ImagefitError):
    """The dataset's structure cannot be used (no classes, one class, empty class, collisions)."""


class StrictModeError(DatasetError):
    """`strict=True` and the pre-flight found files that cannot be used."""

    exit_code = 3


class ImageLoadError(ImagefitError):
    """One image file could not be decoded.

    Attributes:
        reason: a short machine-readable class, one of `REASONS`.
        message: a human-readable explanation.
    """

    REASONS = ("empty", "truncated", "unidentified", "format_not_allowed", "too_large",
               "corrupt", "io_error")

    def __init__(self, reason: str, message: str):
        if reason not in self.REASONS:
            raise ValueError(f"unknown ImageLoadError reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class CacheError(ImagefitError):
    """A cache file is unreadable or inconsistent (it is recomputed where possible)."""


class ResumeMismatchError(CacheError):
    """`--resume` found checkpoints written with other settings or other data."""

    exit_code = 4


class TrainingDivergedError(ImagefitError):
    """The loss or the weights stopped being finite (see `imagefit.train.engine.fit_loop`)."""

    exit_code = 5


class TrainingInterrupted(ImagefitError):
    """Training stopped on a signal after saving its state; `--resume` continues it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 SIGINT, 143 SIGTERM


class OutputError(ImagefitError):
    """An output cannot be written: the disk is full, the folder read-only or not ours."""


class WorkerError(ImagefitError):
    """A data-loading worker process died (out of memory, shared memory full, killed)."""


class NotFittedError(ImagefitError, ValueError, AttributeError):
    """The estimator is used before `fit` (same bases as scikit-learn's NotFittedError)."""


class ModelFormatError(ImagefitError):
    """A model folder is missing, incomplete, tampered with, or in a refused format (pickle)."""

    exit_code = 6


class ModelNotFoundError(ModelFormatError):
    """No model folder where one was named (a user error, exit 1: nothing was refused)."""

    exit_code = 1


class ExportError(ImagefitError):
    """An exported model does not reproduce the PyTorch model's outputs."""


class BackboneUnavailableError(ImagefitError):
    """A backbone's pretrained weights cannot be reached (offline, or the package is missing)."""
