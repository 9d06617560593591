#!/usr/bin/env python3
"""What bounding the cache costs (issue 14): a cache of S stores x C chunks plus F small files
of array images; the time of `imagefit cache info`, of a prune with nothing to remove (the
first in a process walks the whole folder; later ones, what every chunk a job writes pays under
$IMAGEFIT_CACHE_MAX_GB, list the stores only), and of a prune removing half of the chunks,
least recently used first.

    python benchmarks/cache_prune.py [--stores 4] [--chunks 250] [--files 50000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from imagefit.features import cache
from imagefit.features.store import FeatureStore


def build(root: Path, stores: int, chunks: int, files: int) -> None:
    for k in range(stores):
        store = FeatureStore(root, f"store{k}", dim=256)
        with store.writer() as writer:
            for c in range(chunks):
                keys = [f"{k}-{c}-{i}".ljust(64, "0") for i in range(16)]
                writer.add(keys, np.zeros((16, 256), np.float32))
                writer.flush()
    arrays = root / "arrays" / "bench"
    arrays.mkdir(parents=True)
    for i in range(files):
        (arrays / f"{i:06d}.png").write_bytes(b"\x89PNG" + bytes(96))
    for lease in root.rglob("lease-*-in-use"):  # this process's: nothing would be prunable
        lease.unlink()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=250)
    ap.add_argument("--files", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds, _ = timed(lambda: build(root, args.stores, args.chunks, args.files))
        print(f"cache: {args.stores} stores x {args.chunks} chunks, {args.files:,} array files "
              f"(built in {seconds:.0f} s)")
        seconds, info = timed(lambda: cache.cache_info(root))
        print(f"cache info                        {seconds:7.3f} s  ({info['total_bytes']:,} "
              f"bytes)")
        seconds, _ = timed(lambda: cache.prune(root, 10**15))
        print(f"prune, nothing to remove          {seconds:7.3f} s  (the first in a process)")
        seconds, _ = timed(lambda: cache.prune(root, 10**15))
        print(f"  again                           {seconds:7.3f} s  (paid per chunk written "
              f"under a bound)")
        half = info["total_bytes"] - sum(s["bytes"] for s in info["stores"]) // 2
        seconds, result = timed(lambda: cache.prune(root, half))
        print(f"prune, half of the chunks         {seconds:7.3f} s  ({result.removed:,} chunks "
              f"removed)")


if __name__ == "__main__":
    main()
