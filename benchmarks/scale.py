#!/usr/bin/env python3
"""Scale figures side by side, each measured in a fresh process (reliability rows A15 and B6,
check T-mem):
  - `scan_folder` on a tree of separate tiny JPEGs in 10 classes: first and second scan, peak RSS
    growth, the index's arrays; `--scan-links N` adds the A15 fixture, N hard links to tiny JPEGs
    (a new file every 50,000 entries: ext4's link limit). The scan stats, opens and sniffs every
    entry, then counts a linked file once (row A11), so that index holds few rows;
  - a training table of `--rows` entries as `ImageIndex` holds it: the arrays and the RSS they take;
  - one epoch over `--rows` entries with 4 workers: the sum of the workers' USS growth and this
    process's peak RSS growth, for imagefit's `CachedImages` over the decoded-image cache (written
    and resolved by `FeatureStore`, as training does) beside torchvision `ImageFolder`'s table, a
    `samples` list of (path, label) tuples; `--file-images N` adds `FileImages` over N paths to one
    tiny PNG (it decodes every draw: ~150 us each);
  - the sampler, iterated in the training process: the epoch's draws as a list (before) beside
    `EpochDraws`' iterator, bytes held once iteration has begun (tracemalloc).

    python benchmarks/scale.py [--scan 100000] [--scan-links 0] [--rows 1000000] [--file-images 0]

Bar (T-mem): imagefit's worker USS growth < 50 MB over the epoch; the list table shows the
copy-on-write growth the bar is there to catch. Needs psutil. Linux (forked workers).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil

MB = 2**20
WORKERS = 4
BATCH = 4096
ROW_SHAPE = (4, 4, 3)
CLASSES = 10
# ext4 allows 65,000 links to one file: a new file starts every LINKS_PER_FILE entries.
LINKS_PER_FILE = 50_000


class PeakRSS:
    """This process's RSS, polled every 10 ms while the block runs: growth and peak growth."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.me = psutil.Process()
        self.start = self.peak = self.me.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, self.me.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.end = self.me.memory_info().rss
        self.peak = max(self.peak, self.end)

    @property
    def peak_growth(self) -> float:
        return (self.peak - self.start) / MB


# --- phases (each runs in its own process and prints one JSON line) ------------------------------

def phase_scan(n: int, links: bool, tmp: Path) -> dict:
    from PIL import Image

    from imagefit.data.sources import scan_folder

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "JPEG", quality=50)
    data = buffer.getvalue()
    root = tmp / "tree"
    started = time.perf_counter()
    for c in range(CLASSES):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        source = None  # the last file written out in full; links point at it
        for j, i in enumerate(range(c, n, CLASSES)):
            path = folder / f"img_{i:07d}.jpg"
            if links and j % LINKS_PER_FILE:
                os.link(source, path)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                os.write(fd, data)
                os.close(fd)
                source = path
    create = time.perf_counter() - started
    try:
        with PeakRSS() as rss:
            started = time.perf_counter()
            index = scan_folder(root)
            first = time.perf_counter() - started
        started = time.perf_counter()
        scan_folder(root)
        again = time.perf_counter() - started
    finally:
        shutil.rmtree(root)
    return {"entries": n, "links": links, "create_s": create, "scan_s": first, "again_s": again,
            "peak_mb": rss.peak_growth, "kept_mb": (rss.end - rss.start) / MB,
            "rows": len(index), "paths_dtype": str(index.paths.dtype),
            "index_mb": (index.paths.nbytes + index.labels.nbytes) / MB}


def synthetic_paths(n: int) -> list[str]:
    return [f"/home/user/datasets/photos/train/class_{i % CLASSES:03d}/IMG_2024_{i:08d}.jpg"
            for i in range(n)]


def phase_table(n: int) -> dict:
    from imagefit.data.index import ImageIndex

    gc.collect()
    me = psutil.Process()
    start = me.memory_info().rss
    with PeakRSS() as rss:
        paths = synthetic_paths(n)
        names = [f"class_{i % CLASSES:03d}" for i in range(n)]
        index = ImageIndex.from_paths(paths, names)
        # the pre-flight's content-hash column, in the dtype ImageIndex.with_hashes gives it
        sha256 = np.array([f"{i:064x}" for i in range(n)], dtype="<U64")
        del paths, names
        gc.collect()
    return {"rows": n, "paths_dtype": str(index.paths.dtype), "paths_mb": index.paths.nbytes / MB,
            "paths_utf8_mb": index.paths.astype(np.bytes_).nbytes / MB,
            "labels_mb": index.labels.nbytes / MB, "sha256_mb": sha256.nbytes / MB,
            "sha256_ascii_mb": sha256.astype(np.bytes_).nbytes / MB,
            "kept_mb": (me.memory_info().rss - start) / MB, "peak_mb": rss.peak_growth}


def encode_rows(rows: np.ndarray) -> np.ndarray:
    images = np.zeros((len(rows), *ROW_SHAPE), np.uint8)
    flat = images.reshape(len(rows), -1)
    for byte in range(3):
        flat[:, byte] = (rows >> (8 * byte)) & 255
    return images


def phase_epoch(kind: str, n: int, tmp: Path) -> dict:
    from torch.utils.data import Dataset

    from imagefit.data.augment import Augmenter
    from imagefit.features.store import FeatureStore
    from imagefit.train.loader import CachedImages, FileImages, TrainLoader, shuffled_indices

    labels = np.arange(n) % CLASSES
    if kind == "cached":
        keys = np.array([f"{i:064x}" for i in range(n)])
        store = FeatureStore(tmp, "scale", ROW_SHAPE, dtype=np.uint8, kind="images")
        with store.writer() as writer:
            for start in range(0, n, BATCH):
                rows = np.arange(start, min(n, start + BATCH))
                writer.add(keys[rows].tolist(), encode_rows(rows))
        store = FeatureStore(tmp, "scale", ROW_SHAPE, dtype=np.uint8, kind="images")
        dataset = CachedImages(*store.resolve(keys), labels, Augmenter("none"))
    elif kind == "files":
        from PIL import Image
        tmp.mkdir(parents=True, exist_ok=True)
        image = tmp / "tiny.png"
        Image.new("RGB", ROW_SHAPE[:2], (200, 40, 40)).save(image)
        paths = np.array([str(image)] * n)  # what ImageIndex.paths holds: a NumPy str array
        dataset = FileImages(paths, labels, ROW_SHAPE[0], Augmenter("none"))
    else:
        class SampleList(Dataset):
            """torchvision ImageFolder's table: a Python list of (path, label) tuples."""

            def __init__(self):
                self.samples = [(p, i % CLASSES) for i, p in enumerate(synthetic_paths(n))]
                self.image = np.zeros(ROW_SHAPE, np.uint8)

            def __len__(self):
                return len(self.samples)

            def __getitem__(self, key):
                _path, label = self.samples[key[0]]
                return self.image.copy(), label

        dataset = SampleList()

    me = psutil.Process()
    before = {child.pid for child in me.children()}
    shuffle, warm_up = shuffled_indices(n, seed=0), np.arange(min(n, WORKERS * BATCH))
    loader = TrainLoader(dataset, lambda epoch: shuffle(epoch) if epoch else warm_up,
                         batch_size=BATCH, workers=WORKERS)
    for _ in loader.epoch(0):  # workers start and take a first batch each
        pass
    workers = [child for child in me.children() if child.pid not in before]
    start = [w.memory_full_info().uss / MB for w in workers]
    drawn = 0
    with PeakRSS() as rss:
        started = time.perf_counter()
        for images, _labels in loader.epoch(1):
            drawn += len(images)
        seconds = time.perf_counter() - started
    end = [w.memory_full_info().uss / MB for w in workers]
    return {"kind": kind, "rows": n, "drawn": drawn, "epoch_s": seconds, "start": start,
            "end": end, "growth_mb": sum(end) - sum(start), "parent_peak_mb": rss.peak_growth}


def phase_sampler(n: int) -> dict:
    from imagefit.train.loader import EpochDraws, shuffled_indices

    order = shuffled_indices(n, seed=0)

    def held(make) -> float:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            draws = make()
            next(draws)
            return (tracemalloc.get_traced_memory()[0] - base) / MB
        finally:
            tracemalloc.stop()

    as_list = held(lambda: iter([(int(i), 1, k) for k, i in enumerate(order(1))]))
    ours = held(lambda: iter(EpochDraws(order)))
    return {"rows": n, "list_mb": as_list, "iterator_mb": ours}


# --- driver --------------------------------------------------------------------------------------

def run_phase(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"phase {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan", type=int, nargs="*", default=[100_000],
                    help="tree sizes of separate files to scan")
    ap.add_argument("--scan-links", type=int, nargs="*", default=[],
                    help="tree sizes of hard links to scan (the A15 fixture)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--file-images", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the trees and the cache")
    ap.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        name, *rest = args.phase
        functions = {"scan": lambda n, links, tmp: phase_scan(int(n), links == "1", Path(tmp)),
                     "table": lambda n: phase_table(int(n)),
                     "epoch": lambda kind, n, tmp: phase_epoch(kind, int(n), Path(tmp)),
                     "sampler": lambda n: phase_sampler(int(n))}
        print(json.dumps(functions[name](*rest)))
        return

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        print(f"scan_folder, {CLASSES} classes{'':24s}{'entries':>9s}{'create s':>10s}"
              f"{'scan s':>8s}{'again s':>9s}{'peak MB':>9s}{'index rows':>12s}{'index MB':>10s}")
        for n, links in [(n, False) for n in args.scan] + [(n, True) for n in args.scan_links]:
            r = run_phase("scan", str(n), "1" if links else "0", tmp)
            name = "hard links (counted once)" if links else "separate tiny JPEGs"
            print(f"{name:44s}{r['entries']:9d}{r['create_s']:10.1f}{r['scan_s']:8.2f}"
                  f"{r['again_s']:9.2f}{r['peak_mb']:9.0f}{r['rows']:12d}{r['index_mb']:10.1f}")

        t = run_phase("table", str(args.rows))
        print(f"\nImageIndex of {t['rows']:,} rows: paths {t['paths_dtype']} "
              f"{t['paths_mb']:.0f} MB (as UTF-8 bytes: {t['paths_utf8_mb']:.0f} MB), labels "
              f"{t['labels_mb']:.0f} MB, sha256 <U64 {t['sha256_mb']:.0f} MB (as ASCII bytes: "
              f"{t['sha256_ascii_mb']:.0f} MB); RSS kept {t['kept_mb']:.0f} MB, "
              f"peak {t['peak_mb']:.0f} MB while building")

        kinds = [("cached", args.rows, "imagefit CachedImages (image cache)"),
                 ("list", args.rows, "samples list of (path, label) tuples")]
        if args.file_images:
            kinds.append(("files", args.file_images, "imagefit FileImages (one tiny PNG)"))
        print(f"\none epoch, {WORKERS} workers, batch {BATCH}{'':18s}{'rows':>9s}{'epoch s':>9s}"
              f"{'worker USS start -> end MB':>30s}{'sum growth':>12s}{'parent peak':>13s}")
        for kind, n, name in kinds:
            cache = Path(tmp) / f"cache-{kind}"
            r = run_phase("epoch", kind, str(n), str(cache))
            shutil.rmtree(cache, ignore_errors=True)
            if r["drawn"] != n:
                sys.exit(f"{name}: drew {r['drawn']} of {n} rows")
            uss = f"{np.mean(r['start']):.1f} -> {np.mean(r['end']):.1f} (mean)"
            print(f"{name:44s}{n:9d}{r['epoch_s']:9.1f}{uss:>30s}{r['growth_mb']:9.1f} MB"
                  f"{r['parent_peak_mb']:10.1f} MB")

        s = run_phase("sampler", str(args.rows))
        print(f"\nsampler in the training process, {s['rows']:,} draws: a list of the epoch's "
              f"draws holds {s['list_mb']:.0f} MB; EpochDraws' iterator {s['iterator_mb']:.0f} MB")
        print("bar (T-mem): imagefit worker USS growth < 50 MB")


if __name__ == "__main__":
    main()
