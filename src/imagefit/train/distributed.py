"""Data-parallel training under `torchrun`: the process group (gloo on CPU, NCCL on GPU), which
rank does what, and sharding. Ranks share the content-keyed caches, so feature extraction and
decoding are split across ranks and every rank then reads all rows. Only rank 0 writes files.
Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    active: bool = True  # False after `finish`: the ranks no longer talk to each other

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 and self.active

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, n: int) -> np.ndarray:
        """This rank's rows of range(n) (strided, so ranks get similar mixes of rows)."""
        if not self.enabled:
            return np.arange(n)
        return np.arange(self.rank, n, self.world_size)

    def shard_epoch(self, indices: np.ndarray) -> np.ndarray:
        """This rank's part of an epoch's draws, padded by repetition so every rank takes the
        same number of steps (DistributedDataParallel needs that)."""
        if not self.enabled:
            return indices
        per_rank = -(-len(indices) // self.world_size)
        padded = np.resize(indices, per_rank * self.world_size)
        return padded[self.rank::self.world_size]


# Set by `finish`: this process's place in a process group that has been closed.
_finished: Distributed | None = None


def current() -> Distributed:
    """The process group of this process, started on first use when run under torchrun."""
    if _finished is not None:
        return _finished
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size())


def finish() -> None:
    """Every rank leaves the process group here, together (no-op without torchrun). What runs
    after it (rank 0's report, out-of-fold heads, evaluation) uses no collectives: the other
    ranks may have exited."""
    global _finished
    context = current()
    if context.enabled:
        dist.barrier()
        dist.destroy_process_group()
        _finished = Distributed(context.rank, context.world_size, active=False)


def wrap(model: torch.nn.Module, context: Distributed, device: str) -> torch.nn.Module:
    """`model` wrapped for gradient averaging across ranks (itself when not distributed)."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
