#!/usr/bin/env python3
"""The probe head on N cached feature rows (issue 14): a synthetic feature store of N rows
(1280 float32 each, 10 classes as Gaussian clusters) under the key of EfficientNet-Lite0 at
32 px, then `ImageClassifier(mode="probe").fit` on an index of N synthetic checked files whose
hashes are the store's keys (nothing is decoded: every row is stored). Reports peak RSS above
the process's start and the seconds per epoch, in a fresh process; with --baseline-src DIR
the same fit runs on another checkout's `src/` beside it.

    python benchmarks/probe_stream.py --rows 1000000 [--epochs 3] [--baseline-src /tmp/old/src]
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
DIM, CLASSES, SIZE = 1280, 10, 32


def keys_of(n: int):
    import numpy as np

    return np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)])


def build(cache: Path, rows: int) -> None:
    import numpy as np

    from imagefit.features.extract import BackboneRunner
    from imagefit.features.store import FeatureStore
    from imagefit.models.backbones import create_backbone, preprocessing_for

    runner = BackboneRunner(create_backbone("efficientnet_lite0", image_size=SIZE),
                            preprocessing_for("efficientnet_lite0", SIZE), cache_dir=cache)
    store = FeatureStore(cache, runner.key, DIM)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (CLASSES, DIM)).astype(np.float32)
    keys = keys_of(rows)
    with store.writer() as writer:
        for start in range(0, rows, 4096):
            part = np.arange(start, min(rows, start + 4096))
            noise = rng.normal(0, 3, (len(part), DIM)).astype(np.float32)
            writer.add(list(keys[part]), centres[part % CLASSES] + noise)


def measure(cache: Path, rows: int, epochs: int) -> dict:
    import numpy as np

    import imagefit
    from imagefit.data.index import ImageIndex

    keys = keys_of(rows)
    labels = np.arange(rows) % CLASSES
    index = ImageIndex(np.array([f"/synthetic/{i}.jpg" for i in range(rows)]),
                       labels.astype(np.int64), tuple(f"c{c}" for c in range(CLASSES)),
                       sha256=keys, checked=True)
    train, val = index.split(0.2, 0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    clf = imagefit.ImageClassifier(mode="probe", image_size=SIZE, epochs=epochs,
                                   time_budget="none", cache_dir=str(cache), workers=0)
    clf.fit(train, val)
    total = time.perf_counter() - start
    seconds = [r["seconds"] for r in clf.history_]
    return {"fit s": total, "s per epoch": sum(seconds) / len(seconds),
            "epochs": len(seconds), "val accuracy": clf.history_[-1]["val_accuracy"],
            "peak RSS growth MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
            / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--baseline-src", type=Path)
    ap.add_argument("--measure", nargs=2, metavar=("CACHE", "ROWS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), int(args.measure[1]), args.epochs)))
        return
    sides = {"this checkout": ROOT / "src"}
    if args.baseline_src:
        sides = {"baseline": args.baseline_src.resolve(), **sides}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        t = time.perf_counter()
        build(cache, args.rows)
        print(f"store: {args.rows:,} rows x {DIM} float32 written in "
              f"{time.perf_counter() - t:.0f} s")
        results = {}
        for name, src in sides.items():
            env = dict(os.environ, PYTHONPATH=str(src))
            done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs),
                                   "--measure", str(cache), str(args.rows)],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed: {done.stderr[-2000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"probe on {args.rows:,} cached rows, {args.epochs} epochs, fresh process each")
    print(f"{'':24}" + "".join(f"{name:>16}" for name in results))
    for label in next(iter(results.values())):
        print(f"{label:24}" + "".join(f"{r[label]:16.3f}" for r in results.values()))


if __name__ == "__main__":
    main()
