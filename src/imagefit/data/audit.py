"""Pre-flight: decode every indexed file once, in parallel, before any training starts. Bad files
are dropped from the index and listed with their reason; good ones get their SHA-256 (used by the
split and the feature store) and feed a histogram of formats and modes. Never writes to user files.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imagefit.data.images import DEFAULT_MAX_PIXELS, decode_image, read_file_bytes
from imagefit.data.index import BadFile, ImageIndex
from imagefit.errors import ImageLoadError
from imagefit.progress import progress_bar

# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 256


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
              max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False) -> PreflightResult:
    """Fully decode every file of `index` once; drop and report the ones that fail.

    Args:
        index: the scanned dataset.
        image_size: the working size; JPEGs are then decoded at reduced scale, as in training.
        workers: decoding processes (default: all cores).
        max_pixels: pixel cap for decompression bombs.
        progress: show a progress bar.

    Returns:
        A `PreflightResult` whose index has the `sha256` column and only decodable files; its
        `bad_files` include the ones the scan already rejected.
    """
    paths = index.paths.tolist()
    jobs = [(p, image_size, max_pixels) for p in paths]
    workers = workers or os.cpu_count() or 1
    bar = progress_bar(total=len(paths), desc="Checking images", unit="img", enabled=progress)
    results = []
    if workers > 1 and len(paths) >= _POOL_MIN_FILES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(_check_file, jobs, chunksize=32):
                results.append(result)
                bar.update()
    else:
        for job in jobs:
            results.append(_check_file(job))
            bar.update()
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
    checked = ImageIndex(index.paths, index.labels, index.classes, index.subsets, hashes,
                         index.report, index.root)
    out.index = checked.take(keep)
    return out


def _check_file(job: tuple[str, int | None, int]):
    path, size, max_pixels = job
    try:
        data = read_file_bytes(path)
        _, info = decode_image(data, size, max_pixels=max_pixels)
    except ImageLoadError as exc:
        return BadFile(path, exc.reason, exc.message)
    return (hashlib.sha256(data).hexdigest(), info.format, info.mode, info.n_frames,
            info.exif_rotated, (info.width, info.height))


def write_bad_files(bad_files: list[BadFile], path: str | os.PathLike) -> None:
    """Write `path,reason,message` rows (always, with a header, even when empty)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason", "message"])
        for bad in bad_files:
            writer.writerow([bad.path, bad.reason, bad.message])
