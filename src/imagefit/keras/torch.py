"""A Keras-style iterator as a PyTorch `DataLoader` (`iterator.as_torch(num_workers=N)`).

The epoch's order is drawn in the main process, from the iterator's seed and the epoch number;
each batch is built in a worker with NumPy's global generator seeded from (seed, epoch, batch),
so every worker draws different transforms (no two workers repeat each other's, the classic
fork pitfall) and a seed gives the same batches whatever the number of workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _Batches(Dataset):
    def __init__(self, iterator: Any):
        self.iterator = iterator

    def __len__(self) -> int:
        return len(self.iterator)

    def __getitem__(self, key: tuple[int, np.ndarray]):
        batch_seed, index_array = key
        np.random.seed(batch_seed)
        return self.iterator._get_batches_of_transformed_samples(index_array)


class _EpochOrder(Sampler):
    """Yields (batch seed, sample indices) for each batch of an epoch, reshuffled per epoch."""

    def __init__(self, iterator: Any, seed: int):
        self.iterator = iterator
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.iterator)

    def __iter__(self):
        it = self.iterator
        np.random.seed([self.seed, self.epoch, 0])
        order = it.epoch_order()
        batch_seeds = np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(len(it))
        self.epoch += 1
        for b in range(len(it)):
            yield int(batch_seeds[b]), order[b * it.batch_size:(b + 1) * it.batch_size]


def as_torch(iterator: Any, num_workers: int = 0, **loader_kwargs: Any) -> DataLoader:
    """A DataLoader yielding the iterator's batches as tensors (structure kept: x, (x, y) or
    (x, y, w)). Extra keyword arguments go to `DataLoader` (e.g. `pin_memory`)."""
    seed = iterator.seed
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    return DataLoader(_Batches(iterator), sampler=_EpochOrder(iterator, int(seed)),
                      batch_size=None, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(int(seed)), **loader_kwargs)
