"""Resumable training state, one file per stage in `RUN/checkpoints/`, written atomically (temp
file, fsync, rename): a run killed at any moment leaves the previous checkpoint or the new one,
never a torn file. Loaded with `torch.load(weights_only=True)`, so a checkpoint can hold tensors
and plain values but never code. The state: model and optimizer, epoch, the best weights so far,
history, and the RNG state dropout draws from; batch order and augmentation are pure functions
of (seed, epoch), so nothing else is needed to continue exactly where the run stopped.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from imagefit.errors import CacheError
from imagefit.features.store import atomic_write_bytes

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
        if not self.writer:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, **state}, buffer)
        atomic_write_bytes(self.path(stage), buffer.getvalue())

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
        except Exception as exc:
            raise CacheError(f"Cannot resume: checkpoint {path} is unreadable ({exc}). Delete "
                             f"it to start that stage again.") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CacheError(f"Cannot resume: {path} is not an imagefit checkpoint.")
        if state.get("fingerprint") != self.fingerprint:
            raise CacheError(f"Cannot resume: {path} was written with different settings or "
                             f"data. Train without --resume into a new --out folder, or "
                             f"restore the settings of that run.")
        return state

    def clean_temp_files(self) -> None:
        """Remove temp files a killed save left behind."""
        for leftover in self.folder.glob(".tmp-*"):
            try:
                leftover.unlink()
            except OSError:
                pass
