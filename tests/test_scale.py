"""Scale (reliability rows A15 and B6, check T-mem): one epoch over a 1,000,000-row training table
through the real `TrainLoader` and `CachedImages` with 4 workers grows the workers' private memory
(USS) by under 50 MB, while the same table held as torchvision's `samples` list of tuples shows the
copy-on-write growth this measurement exists to catch; the samplers hold no per-draw Python
objects for the epoch; scanning a 100,000-file tree takes seconds.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import threading
import time
import tracemalloc

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from imagefit.data.augment import Augmenter
from imagefit.data.sources import scan_folder
from imagefit.data.sampling import BalancedSampler
from imagefit.features.store import FeatureStore
from imagefit.train.loader import (
    _DRAW_BLOCK,
    CachedImages,
    EpochDraws,
    TrainLoader,
    shuffled_indices,
)

MB = 2**20
N_ROWS = 1_000_000
# The control needs fewer rows to show its growth (~0.6 MB per 1,000 rows over 4 workers).
N_CONTROL = 300_000
WORKERS = 4
# Large batches of 4x4 images: the per-draw work is tiny, so the epoch over every row is short.
BATCH = 4096
ROW_SHAPE = (4, 4, 3)
GROWTH_LIMIT_MB = 50

# (The first start method listed is the default; asking for the current one would fix it.)
fork_only = pytest.mark.skipif(
    (multiprocessing.get_start_method(allow_none=True)
     or multiprocessing.get_all_start_methods()[0]) != "fork",
    reason="copy-on-write growth needs forked workers (spawned workers unpickle the dataset)")


def encode_rows(rows: np.ndarray) -> np.ndarray:
    """Tiny uint8 images whose first three bytes spell their row number (little-endian)."""
    images = np.zeros((len(rows), *ROW_SHAPE), np.uint8)
    flat = images.reshape(len(rows), -1)
    for byte in range(3):
        flat[:, byte] = (rows >> (8 * byte)) & 255
    return images


def decode_rows(batch: torch.Tensor) -> np.ndarray:
    flat = batch.reshape(len(batch), -1)[:, :3].numpy().astype(np.int64)
    return flat[:, 0] | (flat[:, 1] << 8) | (flat[:, 2] << 16)


def image_cache(folder, n: int) -> tuple[list, np.ndarray, np.ndarray]:
    """The decoded-image cache of n images, written and resolved as the estimator does it:
    content keys in, (chunk files, chunk, row) arrays out."""
    keys = np.array([f"{i:064x}" for i in range(n)])  # sha256-like, as ImageIndex.sha256 holds
    store = FeatureStore(folder, "scale", ROW_SHAPE, dtype=np.uint8, kind="images")
    with store.writer() as writer:
        for start in range(0, n, BATCH):
            rows = np.arange(start, min(n, start + BATCH))
            writer.add(keys[rows].tolist(), encode_rows(rows))
    return FeatureStore(folder, "scale", ROW_SHAPE, dtype=np.uint8, kind="images").resolve(keys)


class SampleList(Dataset):
    """The control: torchvision `ImageFolder`'s table, a Python list of (path, label) tuples,
    behind the same draw interface. Reading an entry changes its objects' reference counts,
    which writes to their pages in the worker that reads it."""

    def __init__(self, n: int):
        self.samples = [(f"/data/train/class_{i % 10}/image_{i:07d}.jpg", i % 10)
                        for i in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]):
        index, _epoch, _position = key
        _path, label = self.samples[index]
        return encode_rows(np.array([index]))[0], label


def one_epoch(dataset, n: int) -> dict:
    """One shuffled epoch over all n rows with 4 persistent workers.

    Each worker's USS is read from this process once the workers have started and handled a
    first batch each (a warm-up epoch over the first rows, in order), and again after the epoch.
    This process's RSS is polled during the epoch for its peak.
    """
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    shuffle = shuffled_indices(n, seed=0)
    warm_up = np.arange(min(n, WORKERS * BATCH))
    loader = TrainLoader(dataset, lambda epoch: shuffle(epoch) if epoch else warm_up,
                         batch_size=BATCH, workers=WORKERS)
    for _ in loader.epoch(0):
        pass
    workers = [child for child in me.children() if child.pid not in before]
    assert len(workers) == WORKERS
    start = [w.memory_full_info().uss for w in workers]
    parent_start = me.memory_info().rss
    peak, done = [parent_start], threading.Event()

    def poll():
        while not done.wait(0.01):
            peak[0] = max(peak[0], me.memory_info().rss)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    draws = np.zeros(n, np.int32)
    label_sum = 0
    started = time.perf_counter()
    try:
        for images, labels in loader.epoch(1):
            np.add.at(draws, decode_rows(images), 1)
            label_sum += int(labels.sum())
    finally:
        done.set()
        poller.join()
    seconds = time.perf_counter() - started
    end = [w.memory_full_info().uss for w in workers]
    return {"seconds": seconds, "start": np.array(start) / MB, "end": np.array(end) / MB,
            "growth": (sum(end) - sum(start)) / MB, "parent": (peak[0] - parent_start) / MB,
            "draws": draws, "label_sum": label_sum}


def report(name: str, n: int, result: dict) -> None:
    print(f"{name}, {n:,} rows, {WORKERS} workers: epoch {result['seconds']:.1f} s; worker USS "
          f"{result['start'].round(1).tolist()} -> {result['end'].round(1).tolist()} MB, "
          f"sum of growth {result['growth']:.1f} MB; parent RSS peak growth "
          f"{result['parent']:.1f} MB")


@pytest.mark.slow
@fork_only
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_one_epoch_over_a_million_cached_rows_grows_workers_under_50_mb(tmp_path):
    files, chunk, row = image_cache(tmp_path / "cache", N_ROWS)
    labels = np.arange(N_ROWS) % 10
    dataset = CachedImages(files, chunk, row, labels, Augmenter("none"))
    result = one_epoch(dataset, N_ROWS)
    report("CachedImages", N_ROWS, result)
    assert (result["draws"] == 1).all()  # every row of the table was read, once
    assert result["label_sum"] == int(labels.sum())
    assert result["growth"] < GROWTH_LIMIT_MB
    # the sampler runs here: a list of the epoch's draws would add ~150 MB
    assert result["parent"] < GROWTH_LIMIT_MB


@pytest.mark.slow
@fork_only
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_the_measurement_catches_a_python_list_table():
    result = one_epoch(SampleList(N_CONTROL), N_CONTROL)
    report("list of (path, label) tuples", N_CONTROL, result)
    assert (result["draws"] == 1).all()
    assert result["growth"] > 2 * GROWTH_LIMIT_MB


# --- the samplers, iterated in the training process ---------------------------------------------

def held_while_iterating(sampler) -> tuple[int, list]:
    """Bytes held (traced, NumPy included) once iteration has begun, and the first draws."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        draws = iter(sampler)
        first = [next(draws) for _ in range(3)]
        held = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    return held, first


def test_epoch_draws_hold_no_list_of_the_epoch():
    order = shuffled_indices(N_ROWS, seed=0)
    held, first = held_while_iterating(EpochDraws(order))
    # the epoch's index array (8 MB) and one block of ints; a list of draws is ~150 MB
    assert held < 20 * MB, held / MB
    assert first == [(int(i), 1, k) for k, i in enumerate(order(1)[:3])]


def test_epoch_draws_cross_blocks_exactly():
    """A rank's share of a resumed epoch longer than several blocks, against the definition."""
    n = 3 * _DRAW_BLOCK + 5
    indices = np.random.default_rng(0).permutation(n)
    sampler = EpochDraws(lambda epoch: indices + epoch, rank=1, world_size=3)
    sampler.set_epoch(2, start=_DRAW_BLOCK - 2)
    got = np.array(list(sampler))
    want_k = np.arange(_DRAW_BLOCK - 2, n)
    assert len(got) == len(sampler) == len(want_k)
    np.testing.assert_array_equal(got[:, 0], indices[want_k] + 2)
    assert (got[:, 1] == 2).all()
    np.testing.assert_array_equal(got[:, 2], 1 + 3 * want_k)


def test_balanced_sampler_holds_no_list_of_the_epoch():
    labels = np.minimum(np.arange(N_ROWS) // 1000, 9)  # class 9 holds 991,000 rows
    sampler = BalancedSampler(labels, seed=0, max_per_class=N_ROWS // 10)
    held, first = held_while_iterating(sampler)
    # the index array (8 MB) and one block; a list of a million Python ints is ~36 MB
    assert held < 16 * MB, held / MB
    everything = sampler.indices(0)
    assert first == everything[:3].tolist()
    assert list(sampler) == everything.tolist() and len(everything) == N_ROWS


# --- scanning ------------------------------------------------------------------------------------

N_FILES = 100_000
N_CLASSES = 10


def tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


@pytest.mark.slow
def test_scanning_100k_files_takes_seconds(tmp_path):
    """A tree of 100,000 entries, each class folder one tiny JPEG and hard links to it (cheap
    to make, unlike 100,000 inodes on a busy disk). The scan stats, opens and sniffs every
    entry; it counts each linked file once (row A11), so the index holds one image per class.
    benchmarks/scale.py times a tree of separate files too.

    The limit is on the CPU time of this thread (the scan runs in it, system calls included),
    not on wall time: on a loaded machine the scan waits for a CPU and for the disk, which is
    not its cost."""
    root, data = tmp_path / "data", tiny_jpeg()
    for c in range(N_CLASSES):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        source = folder / f"img_{c:06d}.jpg"
        source.write_bytes(data)
        for i in range(c + N_CLASSES, N_FILES, N_CLASSES):
            os.link(source, folder / f"img_{i:06d}.jpg")
    try:
        started, cpu_started = time.perf_counter(), time.thread_time()
        index = scan_folder(root)
        seconds, cpu_seconds = time.perf_counter() - started, time.thread_time() - cpu_started
    finally:
        shutil.rmtree(root)
    print(f"scan_folder: {N_FILES:,} entries in {seconds:.2f} s ({cpu_seconds:.2f} s of CPU)")
    assert index.counts().tolist() == [1] * N_CLASSES
    assert index.report.ignored == {"linked duplicate": N_FILES - N_CLASSES}
    assert not index.report.bad_files and not index.report.warnings
    assert cpu_seconds < 30
