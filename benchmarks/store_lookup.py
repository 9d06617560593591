#!/usr/bin/env python3
"""The feature store's key lookup at scale: a store of N rows (SHA-256 keys, in chunks of
4,096), then in a fresh process: reading its records, `missing` over every key, `resolve`
over every key and `get` of 100,000 rows; time and peak RSS growth. With --baseline-src DIR
the same measurement runs on another checkout's `src/` (e.g. the commit before) side by side.

    python benchmarks/store_lookup.py --rows 1000000 [--baseline-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path, rows: int) -> None:
    import numpy as np

    from imagefit.features.store import FeatureStore

    store = FeatureStore(folder, "bench", dim=1)
    with store.writer() as writer:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            keys = [hashlib.sha256(str(start + i).encode()).hexdigest() for i in range(n)]
            writer.add(keys, np.zeros((n, 1), np.float32))


def measure(folder: Path, rows: int) -> dict:
    import numpy as np

    from imagefit.features.store import FeatureStore

    keys = np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = FeatureStore(folder, "bench", dim=1)
    out = {}
    t = time.perf_counter()
    missing = store.missing(keys)
    out["first missing (reads records)"] = time.perf_counter() - t
    assert not missing.any()
    t = time.perf_counter()
    store.missing(keys)
    out["missing again"] = time.perf_counter() - t
    t = time.perf_counter()
    store.resolve(keys)
    out["resolve"] = time.perf_counter() - t
    t = time.perf_counter()
    store.get(keys[::max(1, rows // 100_000)])
    out["get 100k rows"] = time.perf_counter() - t
    out["peak RSS growth MB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure, a.rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), a.rows)
        runs = {"this checkout": ROOT / "src"}
        if a.baseline_src:
            runs = {"baseline": a.baseline_src.resolve(), **runs}
        results = {}
        for name, src in runs.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            done = subprocess.run([sys.executable, __file__, "--rows", str(a.rows),
                                   "--measure", tmp], env=env, check=True,
                                  capture_output=True, text=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"feature store with {a.rows:,} rows, fresh process each")
    print(f"{'':32}" + "".join(f"{name:>16}" for name in results))
    for key in next(iter(results.values())):
        print(f"{key:32}" + "".join(f"{r[key]:16.2f}" for r in results.values()))


if __name__ == "__main__":
    main()
