"""Pre-flight: decode every indexed file once, in parallel, before any training starts. Bad files
are dropped from the index and listed with their reason; good ones get their SHA-256 (used by the
split and the feature store) and feed a histogram of formats and modes. The working-size pixels
can be handed to the caller as they come (`on_decoded`), so a job that needs them (feature
extraction) does not decode each file a second time. Never writes to user files.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import hashlib
import os
from collections import Counter, deque
from typing import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from imagefit.data.images import (DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, decode_image,
                                  read_file_bytes)
from imagefit.data.index import BadFile, ImageIndex
from imagefit.errors import DatasetError, ImageLoadError
from imagefit.progress import progress_bar

# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 256
_CHUNK = 32  # files a worker takes at a time
_WINDOW_CHUNKS = 2  # chunks per worker submitted at a time: bounds the results held in memory
# A file that takes a pre-flight process longer than this is taken for a hung decoder.
HANG_SECONDS = 60.0
_DEVNULL = None  # where a hung worker's traceback dump goes


@dataclass
class PreflightResult:
    """The usable index plus what decoding found."""

    index: ImageIndex
    bad_files: list[BadFile]
    formats: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)   # (width, height) as stored, before EXIF
    exif_rotated: int = 0
    multi_frame: int = 0

    def summary(self) -> str:
        """One line for the terminal."""
        n_bad = len(self.bad_files)
        line = f"Pre-flight: {len(self.index):,} images usable"
        if n_bad:
            reasons = Counter(b.reason for b in self.bad_files)
            detail = ", ".join(f"{r} x{c}" for r, c in sorted(reasons.items()))
            line += f", {n_bad} skipped ({detail})"
        return line + "."


def preflight(index: ImageIndex, *, image_size: int | None = None, workers: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
              on_decoded: Callable[[str, np.ndarray], None] | None = None,
              background: tuple[int, int, int] = DEFAULT_BACKGROUND) -> PreflightResult:
    """Fully decode every file of `index` once; drop and report the ones that fail.

    Args:
        index: the scanned dataset.
        image_size: the working size; JPEGs are then decoded at reduced scale, as in training.
        workers: decoding processes (default: all cores).
        max_pixels: pixel cap for decompression bombs.
        progress: show a progress bar.
        on_decoded: called in this process with (SHA-256, uint8 image at `image_size`) for
            each decodable file, as results come in (in no promised order); with it the
            results held in memory stay bounded by a few chunks per worker.
        background: what transparent pixels are composited over (for `on_decoded`).

    Returns:
        A `PreflightResult` whose index has the `sha256` column and only decodable files; its
        `bad_files` include the ones the scan already rejected.
    """
    if on_decoded is not None and image_size is None:
        raise ValueError("on_decoded needs an image_size")
    paths = index.paths.tolist()
    keep_pixels = on_decoded is not None
    jobs = [(p, image_size, max_pixels, background, keep_pixels) for p in paths]
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=len(paths), desc="Checking images", unit="img", enabled=progress)

    def taken(result):  # hands the pixels over; what is kept is the small part
        bar.update()
        if isinstance(result, BadFile) or not keep_pixels:
            return result
        on_decoded(result[0], result[-1])
        return result[:-1]

    if workers > 1 and len(paths) >= _POOL_MIN_FILES:
        results = _check_in_processes(jobs, workers, taken)
    else:
        results = [taken(_check_file(job)) for job in jobs]
    bar.close()
    bad = list(index.report.bad_files)
    out = PreflightResult(index, bad)
    keep = np.zeros(len(paths), bool)
    hashes = np.zeros(len(paths), dtype="<U64")
    for row, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, BadFile):
            bad.append(result)
            continue
        digest, fmt, mode, frames, rotated, size = result
        keep[row], hashes[row] = True, digest
        out.formats[fmt] += 1
        out.modes[mode] += 1
        out.sizes[size] += 1
        out.multi_frame += frames > 1
        out.exif_rotated += rotated
    checked = dataclasses.replace(index, sha256=hashes, checked=True)
    out.index = _without_emptied_classes(checked, keep, bad[len(index.report.bad_files):])
    return out


def _without_emptied_classes(index: ImageIndex, keep: np.ndarray,
                             failed: list[BadFile]) -> ImageIndex:
    """`index.take(keep)`, leaving out the classes whose every file failed to decode.

    The scan already leaves out a class folder with no usable images (with a warning); a class
    whose files all fail only at decoding is treated the same, rather than training a model
    with an output it never saw an image of. If that leaves fewer classes than the scan asked
    for, it is the scan's "only 1 class" error, listing the files, since no run folder (and no
    bad_files.csv) will be written.

    Raises:
        DatasetError: fewer usable classes remain than the scan's `min_classes`.
    """
    kept = index.take(keep)
    n = len(index.classes)
    before = np.bincount(index.labels[index.labels >= 0], minlength=n)
    after = np.bincount(kept.labels[kept.labels >= 0], minlength=n)
    emptied = [c for c in range(n) if before[c] and not after[c]]
    if not emptied:
        return kept
    members = {c: set(index.paths[index.labels == c].tolist()) for c in emptied}
    by_class = {c: [b for b in failed if b.path in members[c]] for c in emptied}
    min_classes = index.report.min_classes
    remaining = [name for c, name in enumerate(index.classes) if after[c]]
    if min_classes >= 2 and int((before > 0).sum()) >= min_classes > len(remaining):
        listing = "\n".join(f"  {b.path}: {b.reason} ({b.message})"
                            for c in emptied for b in by_class[c][:5])
        names = ", ".join(repr(index.classes[c]) for c in emptied)
        found = (f"Only 1 class has usable images ({remaining[0]!r})" if remaining else
                 "No class has usable images")
        raise DatasetError(f"{found}; a classifier needs at least {min_classes}. No file of "
                           f"{names} could be decoded:\n{listing}")
    if not remaining:  # nothing decodes at all: callers say so in their own words
        return kept
    for c in emptied:
        n_bad = len(by_class[c])
        index.report.warnings.append(
            f"Class '{index.classes[c]}' has no usable images ({n_bad} file"
            f"{'s' if n_bad != 1 else ''} could not be decoded, see the bad files list) and is "
            f"left out.")
    keep_classes = [name for c, name in enumerate(index.classes) if after[c] or not before[c]]
    return kept.with_classes(keep_classes)


def _check_in_processes(jobs: list, workers: int, taken: Callable) -> list:
    """`_check_file` over `jobs` in a process pool, each result passed through `taken` as it
    comes. A file that crashes or hangs its decoder process (a segfault in a C library, the
    out-of-memory killer, an endless loop) is listed as bad instead of ending or stalling the
    run: after a crash, the files that were in flight are checked one at a time, so the one
    that crashes again is named; then the pool goes on with the rest. Jobs are submitted a
    window at a time, the next one while this one is collected: workers never wait, and
    results (pixels, with `on_decoded`) never pile up faster than they are taken."""
    results: list = [None] * len(jobs)
    todo = list(range(len(jobs)))
    window = workers * _CHUNK * _WINDOW_CHUNKS
    while todo:
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                in_flight: deque = deque()
                for start in range(0, len(todo), window):
                    rows = todo[start:start + window]
                    in_flight.append((rows, pool.map(_check_file_in_worker,
                                                     [jobs[i] for i in rows],
                                                     chunksize=_CHUNK)))
                    if len(in_flight) > 1:
                        _collect(*in_flight.popleft(), results, taken)
                while in_flight:
                    _collect(*in_flight.popleft(), results, taken)
        except BrokenProcessPool:
            todo = [i for i in todo if results[i] is None]
            # Results come back in order: what was in flight is among the first unfinished.
            _check_one_by_one(todo[:(workers + 2) * _CHUNK], jobs, results, taken)
        todo = [i for i in todo if results[i] is None]
    return results


def _collect(rows: list[int], checked, results: list, taken: Callable) -> None:
    for row, result in zip(rows, checked):
        results[row] = taken(result)


def _check_one_by_one(rows: list[int], jobs: list, results: list, taken: Callable) -> None:
    """Each file in turn in a process of its own making: if it dies, that file killed it."""
    pool = ProcessPoolExecutor(max_workers=1)
    try:
        for row in rows:
            try:
                results[row] = taken(pool.submit(_check_file_in_worker, jobs[row]).result())
            except BrokenProcessPool:
                results[row] = taken(BadFile(jobs[row][0], "corrupt", "the decoder crashed or "
                                             "hung on this file (its process died)"))
                pool.shutdown(wait=False)
                pool = ProcessPoolExecutor(max_workers=1)
    finally:
        pool.shutdown()


def _check_file_in_worker(job: tuple):
    """`_check_file` in a pre-flight process, which ends itself if the file takes longer than
    HANG_SECONDS (a decoder stuck in C cannot be interrupted otherwise); the pool then names
    the file."""
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=_DEVNULL)
    try:
        return _check_file(job)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _check_file(job: tuple):
    path, size, max_pixels, background, keep_pixels = job
    try:
        data = read_file_bytes(path)
        pixels, info = decode_image(data, size, max_pixels=max_pixels, background=background)
    except ImageLoadError as exc:
        return BadFile(path, exc.reason, exc.message)
    return (hashlib.sha256(data).hexdigest(), info.format, info.mode, info.n_frames,
            info.exif_rotated, (info.width, info.height)) + ((pixels,) if keep_pixels else ())
