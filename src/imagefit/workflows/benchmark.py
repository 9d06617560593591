"""`imagefit benchmark loader`: the training data path's throughput on one folder, measured on the
same files with the loader training uses: decode only, a cold epoch (decode + augment from files)
and epochs from the decoded-image cache. It only measures: the dataset is never written to, and
the decoded-image cache is a temporary folder unless one is given.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import cv2
import numpy as np
import torch

from imagefit._validation import check_int
from imagefit.data.augment import AugmentConfig, Augmenter
from imagefit.data.images import decode_image, read_file_bytes, resize_uint8
from imagefit.data.sources import open_dataset
from imagefit.errors import DatasetError, ImageLoadError
from imagefit.features.extract import DecodeRunner, compute_features
from imagefit.models.backbones import preprocessing_for
from imagefit.progress import progress_bar
from imagefit.train.loader import CachedImages, FileImages, TrainLoader, shuffled_indices

# The backbone only fixes the working-size conventions (background colour, resize); any
# registered one gives the same pixels at a given size.
_BACKBONE = "efficientnet_lite0"
# Files the per-stage timings go through (sequentially, in this process).
STAGE_SAMPLE = 200
STAGES = ("read", "decode", "resize", "augment", "collate")


def benchmark_loader(data: str | os.PathLike, *,
                     augment: "str | Mapping | AugmentConfig" = "keras",
                     image_size: int = 224, workers: int = 0, epochs: int = 2,
                     limit: int | None = None, cache_dir: str | os.PathLike | None = None,
                     batch_size: int = 64, seed: int = 0, progress: bool = False) -> dict:
    """Images per second of the training loader on the images of `data`.

    Three figures on the same files, each through `TrainLoader` with uint8 batch collation:
    `decode_images_per_sec` (`load_image` at the working size, no augmentation),
    `images_per_sec` (one cold epoch: decode + augment from the files) and
    `images_per_sec_cached` (the mean epoch over the decoded-image cache, filled first and not
    timed). File bytes are in the OS page cache for all three (hashing reads every file first),
    so disk speed is not measured. With `workers=0` everything runs on one core: PyTorch and
    OpenCV are limited to one thread for the duration and restored afterwards.

    Files that cannot be decoded are skipped, counted in `n_failed` and listed in `bad_files`
    with their reason (the files the scan rejected, plus those of the measured set that fail to
    decode); the rates count decoded images only.

    Args:
        data: a dataset folder of class sub-folders, or a CSV of path,label.
        augment: preset name (none, light, keras, strong), a YAML file, a mapping or an
            `AugmentConfig`.
        image_size: working size (square side, pixels).
        workers: DataLoader processes (0: this process, one core).
        epochs: cached epochs to time (their mean is reported).
        limit: use a seeded random subset of this many files.
        cache_dir: where the decoded-image cache lives (default: a temporary folder, removed
            afterwards).
        batch_size: images per batch.
        seed: seed of the subset, the shuffles and the augmentation draws.
        progress: show progress bars.

    Returns:
        A dict with `images_per_sec, images_per_sec_cached, decode_images_per_sec,
        cache_speedup, n_images, n_failed, image_size, augment, workers` (the keys of
        `imagefit benchmark loader --json`), plus `epochs, batch_size, seconds` (per stage),
        `stages_ms` (milliseconds per image of each step of a cold draw: read, decode, resize,
        augment, collate; measured one after another on up to 200 of the files, in this
        process) and `bad_files` ([{path, reason, message}]).

    Example:
        >>> result = benchmark_loader("data/", image_size=224, epochs=2)   # doctest: +SKIP
        >>> round(result["cache_speedup"], 1)                             # doctest: +SKIP
        2.7
    """
    check_int("workers", workers, 0)
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    if limit is not None:
        check_int("limit", limit, 1)
    prep = preprocessing_for(_BACKBONE, image_size)  # validates image_size
    augmenter = Augmenter(augment)
    index = open_dataset(data)
    if limit is not None and limit < len(index):
        pick = np.sort(np.random.default_rng(seed).choice(len(index), limit, replace=False))
        index = index.take(pick)
    index = index.with_hashes()
    bad_files = list(index.report.bad_files)
    size = prep.image_size
    n = len(index)
    draws = shuffled_indices(n, seed)

    def files(aug: Augmenter) -> FileImages:
        return FileImages(index.paths, index.labels, size, aug, seed=seed,
                          background=prep.background)

    with _one_core(workers == 0), _cache_folder(cache_dir) as cache:
        decode_s, n_ok = _timed_epochs(files(Augmenter("none")), draws, [1], batch_size,
                                       workers, "Decoding (timed)", progress, n)
        if n_ok[0] == 0:
            raise DatasetError(f"None of the {n} images in {data} could be decoded; nothing to "
                               f"measure. Run 'imagefit inspect {data}' to see why.")
        cold_s, n_cold = _timed_epochs(files(augmenter), draws, [1], batch_size, workers,
                                       "Cold epoch (timed)", progress, n)
        runner = DecodeRunner(prep)
        store = runner.store(cache)
        filled = compute_features(index.paths, runner, keys=index.sha256, store=store,
                                  batch_size=batch_size, workers=workers, progress=progress)
        bad_files += filled.failed
        ok = filled.ok
        cached = CachedImages(*store.resolve(index.sha256[ok]), index.labels[ok], augmenter,
                              seed=seed)
        cached_s, n_cached = _timed_epochs(cached, shuffled_indices(int(ok.sum()), seed),
                                           list(range(1, epochs + 1)), batch_size, workers,
                                           "Cached epochs (timed)", progress, int(ok.sum()))
        stages_ms = _stage_times(index.paths[draws(1)[:STAGE_SAMPLE]], size, augmenter,
                                 prep.background, batch_size, seed)
    n_images = int(ok.sum())
    if not n_ok[0] == n_cold[0] == n_images or any(k != n_images for k in n_cached):
        raise DatasetError(f"The files of {data} changed while they were measured "
                           f"({n_ok[0]}, {n_cold[0]} and {n_images} images decoded); run again.")
    cold_rate = n_images / cold_s[0]
    cached_rate = n_images / (sum(cached_s) / len(cached_s))
    return {
        "images_per_sec": cold_rate,
        "images_per_sec_cached": cached_rate,
        "decode_images_per_sec": n_images / decode_s[0],
        "cache_speedup": cached_rate / cold_rate,
        "n_images": n_images,
        "n_failed": len(bad_files),
        "image_size": size,
        "augment": augment if isinstance(augment, str) else "custom",
        "workers": workers,
        "epochs": epochs,
        "batch_size": batch_size,
        "seconds": {"decode": decode_s[0], "cold": cold_s[0], "cached": cached_s},
        "stages_ms": stages_ms,
        "bad_files": [{"path": b.path, "reason": b.reason, "message": b.message}
                      for b in bad_files],
    }


def _stage_times(paths: np.ndarray, size: int, augmenter: Augmenter,
                 background: tuple[int, int, int], batch_size: int, seed: int) -> dict:
    """Milliseconds per image of each step of a cold draw, one after another, so that the
    slowest one shows: read the bytes, decode (at the DCT scale the size allows), resize to
    the working size, augment (sample + apply), collate (stack a batch into a tensor)."""
    total = dict.fromkeys(STAGES, 0.0)
    rng = np.random.default_rng(seed)
    batch: list[np.ndarray] = []
    n = 0
    clock = time.perf_counter
    for path in paths:
        t0 = clock()
        data = read_file_bytes(str(path))
        t1 = clock()
        try:
            pixels, _ = decode_image(data, size, background=background, resize=False)
        except ImageLoadError:
            continue
        t2 = clock()
        if pixels.shape[:2] != (size, size):
            pixels = resize_uint8(pixels, (size, size))
        t3 = clock()
        batch.append(augmenter(pixels, rng))
        t4 = clock()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            total[stage] += seconds
        n += 1
        if len(batch) == batch_size or n == len(paths):
            t5 = clock()
            torch.from_numpy(np.stack(batch))
            total["collate"] += clock() - t5
            batch = []
    if batch:
        t5 = clock()
        torch.from_numpy(np.stack(batch))
        total["collate"] += clock() - t5
    return {stage: 1000 * seconds / max(n, 1) for stage, seconds in total.items()}


def _timed_epochs(dataset, draws, epochs: list[int], batch_size: int, workers: int, desc: str,
                  progress: bool, total: int) -> tuple[list[float], list[int]]:
    """Seconds and images delivered per epoch; worker start-up counts in the first epoch."""
    started = time.perf_counter()
    loader = TrainLoader(dataset, draws, batch_size=batch_size, workers=workers)
    seconds, counts = [], []
    for epoch in epochs:
        count = 0
        with progress_bar(total=total, desc=f"{desc} {epoch}/{len(epochs)}"
                          if len(epochs) > 1 else desc, unit="img", enabled=progress) as bar:
            for _images, labels in loader.epoch(epoch):
                count += len(labels)
                bar.update(len(labels))
        now = time.perf_counter()
        seconds.append(max(now - started, 1e-9))
        counts.append(count)
        started = now
    del loader  # persistent workers stop here, before the next stage is timed
    return seconds, counts


@contextmanager
def _one_core(enabled: bool) -> Iterator[None]:
    """One PyTorch and one OpenCV thread while enabled; the previous settings are restored."""
    if not enabled:
        yield
        return
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        cv2.setNumThreads(cv2_threads)


@contextmanager
def _cache_folder(cache_dir: str | os.PathLike | None) -> Iterator[Path]:
    if cache_dir is not None:
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="imagefit-bench-") as tmp:
        yield Path(tmp)


def format_table(result: dict) -> list[str]:
    """The printed summary of `benchmark_loader`'s result, one line per string."""
    workers = result["workers"]
    where = "1 process, 1 thread" if workers == 0 else f"{workers} workers"
    lines = [f"{result['n_images']} images at {result['image_size']} px, augment "
             f"{result['augment']}, {where}"
             + (f"; {result['n_failed']} bad files skipped" if result["n_failed"] else "")]
    s = result["seconds"]
    rows = [("decode only (load_image)", result["decode_images_per_sec"], s["decode"]),
            ("cold epoch (decode + augment)", result["images_per_sec"], s["cold"]),
            (f"cached epochs (mean of {len(s['cached'])})", result["images_per_sec_cached"],
             sum(s["cached"]) / len(s["cached"]))]
    lines.append(f"{'':32s}{'img/s':>10s}{'s/epoch':>10s}")
    lines += [f"{name:32s}{rate:10.1f}{sec:10.2f}" for name, rate, sec in rows]
    lines.append(f"cache speedup: {result['cache_speedup']:.2f}x")
    stages = result.get("stages_ms")
    if stages:
        slowest = max(stages, key=stages.get)
        lines.append("cold draw, ms per image (one core): " + ", ".join(
            f"{name} {ms:.2f}" for name, ms in stages.items())
            + f"; slowest: {slowest}")
    return lines


__all__ = ["benchmark_loader", "format_table"]
