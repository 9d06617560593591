"""The training data path: working-size uint8 images (from the decoded-image cache, or decoded from
files for a cold epoch), augmented afresh on every draw, batched by a DataLoader. Everything a
worker holds is a NumPy array or a short list, never per-sample Python objects. Each draw's
augmentation comes from its own generator, seeded by (seed, epoch, position in the epoch): runs
repeat exactly, whatever the number of workers, and no two draws or epochs share parameters.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from imagefit.data.augment import Augmenter
from imagefit.data.images import DEFAULT_MAX_PIXELS, load_image
from imagefit.data.text import as_text
from imagefit.errors import ImageLoadError, WorkerError

log = logging.getLogger(__name__)

# Separates augmentation streams from every other use of the run's seed.
_AUGMENT_STREAM = 0xA06
# Draws a sampler turns into Python tuples at a time (see `EpochDraws.__iter__`).
_DRAW_BLOCK = 1 << 16


def draw_generator(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one draw: a pure function of (seed, epoch, position)."""
    return np.random.default_rng([seed, epoch, position, _AUGMENT_STREAM])


class _Draws(Dataset):
    """Base: `dataset[(index, epoch, position)]` -> (augmented uint8 image, label, ok). Labels
    are class indices (int64), the numbers a regression trains on (float32), or a multi-label
    task's 0/1 rows (float32, one row per image)."""

    def __init__(self, labels: np.ndarray, augmenter: Augmenter, seed: int):
        labels = np.asarray(labels)
        self.labels = labels.astype(np.float32 if labels.dtype.kind in "fb" else np.int64)
        self.augmenter = augmenter
        self.seed = seed
        # Once, not per draw: comparing configs costs more than reading a small cached image.
        self._identity = augmenter.config.is_identity

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray | None:
        raise NotImplementedError

    def image_nbytes(self) -> int:
        """Bytes of one working-size image (what a batch is made of)."""
        raise NotImplementedError

    def __getitem__(self, key: tuple[int, int, int]):
        index, epoch, position = key
        image = self.image(index)
        label = self.labels[index] if self.labels.ndim > 1 else self.labels[index].item()
        if image is None:  # unreadable at run time: the collate drops it
            return None, label
        if not self._identity:
            image = self.augmenter(image, draw_generator(self.seed, epoch, position))
        return image, label


class CachedImages(_Draws):
    """Draws from the decoded-image cache: chunk files plus (chunk, row) per image."""

    def __init__(self, chunk_files: list, chunk: np.ndarray, row: np.ndarray, labels: np.ndarray,
                 augmenter: Augmenter, seed: int = 0):
        super().__init__(labels, augmenter, seed)
        self.locate(np.arange(len(chunk)), chunk_files, chunk, row)

    def locate(self, rows: np.ndarray, chunk_files: list, chunk: np.ndarray,
               row: np.ndarray) -> None:
        """Where the images `rows` are (in the chunk files); the others are unknown until
        located. Workers forked after this see it (an epoch's images, located before it)."""
        self.chunk_files = [os.fspath(f) for f in chunk_files]
        self.chunk = np.full(len(self.labels), -1, np.int32)
        self.row = np.zeros(len(self.labels), np.int64)
        self.chunk[rows], self.row[rows] = chunk, row
        self._arrays: list[np.ndarray] | None = None  # opened lazily, once per worker

    def image_nbytes(self) -> int:
        if not self.chunk_files:
            return 0
        rows = np.load(self.chunk_files[0], mmap_mode="r", allow_pickle=False)
        return int(np.prod(rows.shape[1:])) * rows.dtype.itemsize

    def image(self, index: int) -> np.ndarray:
        if self._arrays is None:
            # Plain ndarray views of the maps: indexing an np.memmap runs Python code per row.
            self._arrays = [np.load(f, mmap_mode="r", allow_pickle=False).view(np.ndarray)
                            for f in self.chunk_files]
        chunk = self.chunk[index]
        if chunk < 0:  # a caller's mistake, never a user's: say so rather than read another row
            raise LookupError(f"image {index} was drawn before it was located")
        return np.array(self._arrays[chunk][self.row[index]])


class FileImages(_Draws):
    """Draws decoded from the files every time (a cold epoch; no cache)."""

    def __init__(self, paths: np.ndarray, labels: np.ndarray, size: int, augmenter: Augmenter,
                 seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = (255, 255, 255)):
        super().__init__(labels, augmenter, seed)
        self.paths = as_text(paths)
        self.size, self.max_pixels, self.background = size, max_pixels, background

    def image_nbytes(self) -> int:
        width, height = (self.size, self.size) if np.isscalar(self.size) else self.size
        return int(width) * int(height) * 3

    def image(self, index: int) -> np.ndarray | None:
        try:
            return load_image(str(self.paths[index]), self.size, max_pixels=self.max_pixels,
                              background=self.background)
        except ImageLoadError:
            return None


class EpochDraws(Sampler):
    """Yields (index, epoch, position) for one epoch of `indices(epoch)`; `set_epoch` first.

    Under torchrun a rank's k-th draw is draw `rank + k * world_size` of the whole epoch (the
    strided share `Distributed.shard_epoch` gives it), so ranks never share a generator.
    """

    def __init__(self, indices: Callable[[int], np.ndarray], rank: int = 0, world_size: int = 1):
        self.indices = indices
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draws of `epoch` from its `start`-th on (a resumed epoch skips what it did)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        # The epoch's draws are made as the DataLoader takes them, a block at a time: a list of
        # them all would hold a tuple and three ints per draw in this process (~150 MB per
        # million draws, for the whole epoch). The indices are chosen now, as before.
        indices = np.asarray(self.indices(self.epoch))
        return _epoch_draws(indices, self.epoch, self.start, self.rank, self.world_size)

    def __len__(self) -> int:
        return max(len(self.indices(self.epoch)) - self.start, 0)


def _epoch_draws(indices: np.ndarray, epoch: int, start: int, rank: int,
                 stride: int) -> Iterator[tuple[int, int, int]]:
    for first in range(start, len(indices), _DRAW_BLOCK):
        for k, i in enumerate(indices[first:first + _DRAW_BLOCK].tolist(), first):
            yield i, epoch, rank + k * stride


def collate_uint8(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, label) pairs into a uint8 (B, H, W, 3) batch, dropping failed draws;
    labels int64, or float32 where they are numbers (regression) or rows (multi-label)."""
    rows = bool(items) and isinstance(items[0][1], np.ndarray)
    dtype = torch.float32 if items and isinstance(items[0][1], (float, np.ndarray)) else torch.int64
    empty_labels = (0, len(items[0][1])) if rows else (0,)
    items = [(image, label) for image, label in items if image is not None]
    if not items:
        return torch.zeros((0, 1, 1, 3), dtype=torch.uint8), torch.zeros(empty_labels, dtype=dtype)
    images = torch.from_numpy(np.stack([image for image, _ in items]))
    if rows:
        return images, torch.from_numpy(np.stack([label for _, label in items]))
    return images, torch.tensor([label for _, label in items], dtype=dtype)


class TrainLoader:
    """Epochs of augmented uint8 batches: `loader.epoch(e)` iterates epoch `e`.

    Args:
        dataset: `CachedImages` or `FileImages`.
        indices: epoch -> the dataset rows drawn that epoch, in order (a shuffle, or a
            balanced sampler's draws).
        batch_size: images per batch.
        workers: DataLoader processes (0: in this process); they live across epochs unless
            not `persistent` (a dataset that changes between epochs: `CachedImages.locate`).
        drop_last: drop an epoch's last batch when it is smaller than `batch_size`.
        rank, world_size: this process's place under torchrun (see `EpochDraws`).
    """

    def __init__(self, dataset: _Draws, indices: Callable[[int], np.ndarray], *,
                 batch_size: int, workers: int = 0, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, persistent: bool = True):
        self.sampler = EpochDraws(indices, rank, world_size)
        image_nbytes = getattr(dataset, "image_nbytes", lambda: 0)()  # 0: not known
        workers = workers_that_fit(workers, batch_size * image_nbytes)
        # Each new iterator draws a base seed from the loader's generator; from its own one,
        # not torch's global generator, which dropout draws from (a run resumed mid-epoch
        # starts an iterator the interrupted one did not, and would otherwise drift).
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                 drop_last=drop_last,
                                 num_workers=workers, collate_fn=collate_uint8,
                                 persistent_workers=persistent and workers > 0,
                                 worker_init_fn=_worker_init if workers > 0 else None,
                                 generator=torch.Generator().manual_seed(0))

    def epoch(self, epoch: int,
              first_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch`, from batch `first_batch` on (each as it would be in the
        whole epoch: a resumed epoch continues exactly)."""
        self.sampler.set_epoch(epoch, first_batch * self.loader.batch_size)
        return _naming_dead_workers(iter(self.loader))


def _naming_dead_workers(batches: Iterator) -> Iterator:
    """`batches`, with a worker's death said in words, instead of PyTorch's traceback."""
    try:
        yield from batches
    except RuntimeError as exc:
        if "DataLoader worker" not in str(exc):
            raise
        cause = str(exc).strip().splitlines()[0]
        raise WorkerError(f"A data-loading worker process died ({cause}). It was most likely "
                          f"out of memory, or of shared memory in a container. Continue with "
                          f"--resume and fewer --workers (or --workers 0); finished epochs are "
                          f"kept.") from None


def workers_that_fit(workers: int, batch_bytes: int, shm: str = "/dev/shm") -> int:
    """As many of `workers` as shared memory holds the batches of. Workers hand batches over
    through /dev/shm, two in flight each; when it fills (Docker gives 64 MB by default) a
    worker dies of a bus error, hours into a run. Fewer workers, with a warning, instead."""
    if workers == 0 or batch_bytes <= 0:
        return workers
    try:
        available = shutil.disk_usage(shm).total
    except OSError:  # no /dev/shm (macOS, Windows): another mechanism, nothing to check
        return workers
    fits = int(available // (4 * batch_bytes))  # two batches in flight, room to spare
    if fits >= workers:
        return workers
    log.warning("Shared memory (%s) holds %d MB: enough for %d of the %d loader workers; "
                "using %d. In Docker, run the container with --shm-size=1g.", shm,
                available >> 20, fits, workers, fits)
    return fits


def _worker_init(_worker_id: int) -> None:
    # One thread per worker: the workers are the parallelism.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group; the training process alone decides what to do
    # (finish the step, save), and stops its workers itself. SIGTERM ends a worker plainly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def shuffled_indices(n: int, seed: int, size: int | None = None) -> Callable[[int], np.ndarray]:
    """epoch -> a permutation of range(n), a pure function of (seed, epoch); with `size`, its
    first `size` rows (a new subset each epoch), or more permutations after it where `size`
    exceeds n.

    Example:
        >>> draws = shuffled_indices(10, seed=0, size=4)
        >>> len(draws(1)), len(set(draws(1))), bool((draws(1) != draws(2)).any())
        (4, 4, True)
    """
    def indices(epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed, epoch, 0x5F])
        if size is None:
            return rng.permutation(n)
        return np.concatenate([rng.permutation(n) for _ in range(-(-size // n))])[:size]
    return indices


def to_float_batch(images: torch.Tensor, mean, std, *, channels_last: bool = True) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W), channels-last in memory."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)
