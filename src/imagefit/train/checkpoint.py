"""Resumable training state, one file per stage in `RUN/checkpoints/`, written atomically (temp
file, fsync, rename): a run killed at any moment leaves the previous checkpoint or the new one,
never a torn file. Loaded with `torch.load(weights_only=True)`, so a checkpoint can hold tensors
and plain values but never code. The state: model and optimizer, epoch, the best weights so far,
history, the RNG state dropout draws from, and (after a SIGINT/SIGTERM) the position in the
epoch in progress; batch order and augmentation are pure functions of (seed, epoch), so nothing
else is needed to continue exactly where the run stopped.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch

from imagefit.errors import CacheError, OutputError, ResumeMismatchError
from imagefit._fileio import atomic_write_bytes, remove_orphans

FORMAT = 1


class Checkpointer:
    """Saves and loads the state of training stages under `folder`.

    Example:
        >>> ckpt = Checkpointer("runs/x/checkpoints")            # doctest: +SKIP
        >>> ckpt.save("finetune", {"epoch": 3, "model": net.state_dict()})  # doctest: +SKIP
        >>> ckpt.load("finetune")["epoch"]                      # doctest: +SKIP
        3
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str = "", *, writer: bool = True):
        self.folder = Path(folder)
        self.fingerprint = fingerprint  # the settings a checkpoint must match to be resumed
        self.writer = writer  # under torchrun only rank 0 writes; every rank can resume

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.pt"

    def save(self, stage: str, state: dict) -> None:
        """Replace the stage's checkpoint atomically.

        Raises:
            OutputError: it cannot be written (disk full, read-only); the previous one is kept.
        """
        if not self.writer:
            return
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, **state}, buffer)
        path = self.path(stage)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            kept = (f"the previous checkpoint is kept in {path}" if path.exists() else
                    "no earlier checkpoint of this stage exists")
            raise OutputError(f"Could not save the checkpoint {path}: {exc.strerror or exc}; "
                              f"{kept}. Free some space (or fix the folder's permissions) and "
                              f"continue with --resume.") from None

    def load(self, stage: str) -> dict | None:
        """The saved state of `stage`, or None if there is none.

        Raises:
            CacheError: the file is unreadable or was written with other settings.
        """
        path = self.path(stage)
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise CacheError(f"Cannot resume: checkpoint {path} is unreadable: it holds "
                             f"something other than tensors and plain values (damaged or "
                             f"tampered with), and imagefit never runs code from a checkpoint. "
                             f"Delete it to start that stage again.") from None
        except Exception as exc:  # torch reports a torn or foreign file in many ways
            first_line = str(exc).strip().split("\n")[0][:200]
            raise CacheError(f"Cannot resume: checkpoint {path} is unreadable "
                             f"({type(exc).__name__}: {first_line}). Delete it to start that "
                             f"stage again.") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CacheError(f"Cannot resume: {path} is not an imagefit checkpoint.")
        if state.get("fingerprint") != self.fingerprint:
            raise ResumeMismatchError(f"Cannot resume: {path} was written with different "
                                      f"settings or data. Train without --resume into a new "
                                      f"--out folder, or restore the settings of that run.")
        return state

    def clean_temp_files(self) -> None:
        """Remove temp files a killed save left behind (not those of a live writer)."""
        remove_orphans(self.folder.glob(".tmp-*"))
