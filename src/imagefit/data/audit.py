"""Pre-flight: decode every indexed file once, in parallel, before any training starts. Bad files
are dropped from the index and listed with their reason; good ones get their SHA-256 (used by the
split and the feature store) and feed a histogram of formats and modes. The working-size pixels
can be handed to the caller as they come (`on_decoded`), so a job that needs them (feature
extraction) does not decode each file a second time. Never writes to user files.

Strategies: "full" decodes every file; "lazy" only reads and hashes each one and checks that it
starts as an accepted image format, leaving the decode (and the skipping of a file that fails
it) to the moment a run first draws the file; "sample" is lazy plus a full check of a random
sample, to stop early on a systematically broken dataset.
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

from imagefit._validation import check_choice
from imagefit.data.images import (DEFAULT_BACKGROUND, DEFAULT_MAX_PIXELS, accepted_format,
                                  decode_image, read_file_bytes)
from imagefit.data.index import BadFile, ImageIndex
from imagefit.data.known_hashes import FileStats, KnownHashes, path_keys
from imagefit.errors import ConfigError, DatasetError, ImageLoadError
from imagefit.progress import progress_bar

# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 256
_CHUNK = 32  # files a worker takes at a time
_SAMPLE_STREAM = 0x5A4D  # the sample's generator
_WINDOW_CHUNKS = 2  # chunks per worker submitted at a time: bounds the results held in memory
# A file that takes a pre-flight process longer than this is taken for a hung decoder.
HANG_SECONDS = 60.0
_DEVNULL = None  # where a hung worker's traceback dump goes
STRATEGIES = ("auto", "full", "lazy", "sample")
# "auto": "full" up to this many files; beyond, "sample" of AUTO_SAMPLE files (decoding a
# million files up front takes hours, and most of them a run with --max-per-class never draws).
AUTO_FULL_MAX = 50_000
AUTO_SAMPLE = 1_000
# A sample with more than this share of bad files stops the run before any training.
SAMPLE_MAX_BAD = 0.5


@dataclass
class PreflightResult:
    """The usable index plus what decoding found."""

    index: ImageIndex
    bad_files: list[BadFile]
    strategy: str = "full"
    n_decoded: int = 0      # files decoded (the rest were hashed only: lazy, sample)
    n_known: int = 0        # files not read: unchanged since a run hashed them (`known`)
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
        if self.strategy != "full":
            checked = (f"{self.n_decoded:,} sampled files decoded, the rest" if self.n_decoded
                       else "files")
            line += (f" ({self.strategy}: {checked} read and hashed only; each is decoded when "
                     f"first drawn, and skipped then if it fails)")
        if self.n_known:
            line += f"; {self.n_known:,} files unchanged since an earlier run were not read"
        return line + "."


def parse_strategy(spec) -> tuple[str, int]:
    """"auto", "full", "lazy", "sample:N" (or "sample N") -> (strategy, sample size).

    Example:
        >>> parse_strategy("sample:500"), parse_strategy("lazy")
        (('sample', 500), ('lazy', 0))

    Raises:
        ConfigError: anything else.
    """
    name, _, count = str(spec).replace(" ", ":").partition(":")
    if name in STRATEGIES and (name == "sample") == bool(count):
        if not count:
            return name, 0
        if count.isdigit() and int(count) > 0:
            return name, int(count)
    raise ConfigError(f"The pre-flight strategy must be auto, full, lazy or sample:N (N files "
                      f"decoded up front). Got {spec!r} instead.")


def resolve_strategy(spec, n_files: int, strict: bool = False) -> tuple[str, int]:
    """The strategy a run uses: --strict always checks every file; "auto" checks every file
    up to AUTO_FULL_MAX of them, and beyond, a sample of AUTO_SAMPLE.

    Example:
        >>> resolve_strategy("auto", 1_000), resolve_strategy("auto", 200_000)
        (('full', 0), ('sample', 1000))
    """
    name, count = parse_strategy(spec)
    if strict or name == "full" or (name == "auto" and n_files <= AUTO_FULL_MAX):
        return "full", 0
    return ("sample", AUTO_SAMPLE) if name == "auto" else (name, count)


def preflight(index: ImageIndex, *, image_size: int | None = None, workers: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False,
              on_decoded: Callable[[str, np.ndarray], None] | None = None,
              background: tuple[int, int, int] = DEFAULT_BACKGROUND, strategy: str = "full",
              sample: int = 0, seed: int = 0, known: KnownHashes | None = None
              ) -> PreflightResult:
    """Fully decode every file of `index` once (or, by `strategy`, only some); drop and report
    the ones that fail.

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
        strategy, sample, seed: "full"; "lazy" (read, hash and check the format of each file,
            decode none); "sample" (lazy, but decode `sample` files chosen with `seed`). See
            the module's docstring.
        known: hashes remembered from earlier runs: a file not to decode whose size, mtime
            and inode are unchanged is not read at all; every hash found is remembered.

    Returns:
        A `PreflightResult` whose index has the `sha256` column and only the files that passed;
        its `bad_files` include the ones the scan already rejected.

    Raises:
        DatasetError: more than half of a sample failed (a broken dataset: nothing trains).
    """
    if on_decoded is not None and image_size is None:
        raise ValueError("on_decoded needs an image_size")
    check_choice("strategy", strategy, STRATEGIES[1:])
    paths = index.paths.tolist()
    keep_pixels = on_decoded is not None
    decode = np.full(len(paths), strategy == "full")
    if strategy == "sample":
        rng = np.random.default_rng([seed, _SAMPLE_STREAM])
        decode[rng.choice(len(paths), min(sample, len(paths)), replace=False)] = True
    hashes = np.zeros(len(paths), dtype="<U64")
    formats: list[str | None] = [None] * len(paths)
    if known is not None:
        stats, keys = FileStats.of(paths), path_keys(paths)
        hashes, formats = known.lookup(keys, stats)
        hashes[decode] = ""  # to be decoded: read whatever is remembered
    unchanged = hashes != ""  # not read again
    todo = np.flatnonzero(~unchanged).tolist()
    jobs = [(paths[row], image_size, max_pixels, background, keep_pixels, bool(decode[row]))
            for row in todo]
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=len(jobs), desc="Checking images", unit="img", enabled=progress)

    def taken(result):  # hands the pixels over; what is kept is the small part
        bar.update()
        if isinstance(result, BadFile) or not keep_pixels or result[2] is None:
            return result
        on_decoded(result[0], result[-1])
        return result[:-1]

    if workers > 1 and len(jobs) >= _POOL_MIN_FILES:
        checked = _check_in_processes(jobs, workers, taken)
    else:
        checked = [taken(_check_file(job)) for job in jobs]
    bar.close()
    bad = list(index.report.bad_files)
    out = PreflightResult(index, bad, strategy, int(decode.sum()) if strategy != "full" else 0,
                          len(paths) - len(jobs))
    keep = unchanged.copy()
    out.formats.update(formats[row] for row in np.flatnonzero(unchanged).tolist())
    for row, result in zip(todo, checked):
        if isinstance(result, BadFile):
            bad.append(result)
            continue
        digest, fmt, mode, frames, rotated, size = result
        keep[row], hashes[row], formats[row] = True, digest, fmt
        out.formats[fmt] += 1
        if mode is not None:  # decoded
            out.modes[mode] += 1
            out.sizes[size] += 1
            out.multi_frame += frames > 1
            out.exif_rotated += rotated
    if strategy == "sample":
        _check_sample(checked, decode[todo])
    if known is not None and jobs:  # with nothing read, nothing new to remember
        known.save(keys, stats, hashes, formats)
    checked = dataclasses.replace(index, sha256=hashes, checked=True)
    out.index = _without_emptied_classes(checked, keep, bad[len(index.report.bad_files):])
    return out


def _check_sample(results: list, decoded: np.ndarray) -> None:
    """Stop before any training when most of the sampled files are bad."""
    failed = [r for r, d in zip(results, decoded) if d and isinstance(r, BadFile)]
    n = int(decoded.sum())
    if n and len(failed) > SAMPLE_MAX_BAD * n:
        reasons = Counter(b.reason for b in failed).most_common()
        examples = "\n".join(f"  {b.path}: {b.reason} ({b.message})" for b in failed[:5])
        raise DatasetError(f"Pre-flight sample: {len(failed)} of the {n} files checked cannot "
                           f"be decoded ({', '.join(f'{r} x{c}' for r, c in reasons)}); the "
                           f"dataset looks broken, so nothing was trained. Fix the files, or "
                           f"run with --preflight full to skip every bad one:\n{examples}")


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
    if index.is_regression or index.is_multilabel:  # no classes to empty (a label may go)
        return kept
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
    path, size, max_pixels, background, keep_pixels, decode = job
    try:
        data = read_file_bytes(path)
        if not decode:  # lazy: what can be told without decoding
            return hashlib.sha256(data).hexdigest(), accepted_format(data), None, 0, False, None
        pixels, info = decode_image(data, size, max_pixels=max_pixels, background=background)
    except ImageLoadError as exc:
        return BadFile(path, exc.reason, exc.message)
    return (hashlib.sha256(data).hexdigest(), info.format, info.mode, info.n_frames,
            info.exif_rotated, (info.width, info.height)) + ((pixels,) if keep_pixels else ())
