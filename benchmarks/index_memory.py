"""Memory of a 1,000,000-row `ImageIndex` (paths like an ImageNet tree's, SHA-256 hashes, a
split): the growth of a fresh process's RSS from building it and from splitting it into
training and validation, per row, beside another checkout's.

    .venv/bin/python benchmarks/index_memory.py [--rows 1000000] [--baseline-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEP = """
import gc, json, sys
import numpy as np
import psutil
from imagefit.data.index import ImageIndex
n = int(sys.argv[1])
proc = psutil.Process()
before = proc.memory_info().rss
# Built in NumPy (no Python string per row, whose freed memory would stay in the process).
i = np.arange(n)
cls = np.strings.zfill((i % 1000).astype("<U8"), 8)
paths = np.strings.add(np.strings.add(np.strings.add("/data/imagenet/train/n", cls), "/n"),
                       np.strings.add(np.strings.add(cls, "_"), np.strings.zfill(i.astype("<U8"), 8)))
paths = np.strings.add(paths, ".JPEG")
sha256 = np.strings.zfill(i.astype("<U20"), 64)
index = ImageIndex(paths, i % 1000, tuple(f"c{k}" for k in range(1000)), sha256=sha256)
del i, cls, paths, sha256
gc.collect()
built = proc.memory_info().rss
train, val = index.split(0.2, seed=0)
del index
gc.collect()
split = proc.memory_info().rss
print(json.dumps({"built": (built - before) / n, "split": (split - before) / n,
                  "dtype": str(train.paths.dtype), "path_chars": len(str(train.paths[0]))}))
"""


def step(src: Path, rows: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    done = subprocess.run([sys.executable, "-c", STEP, str(rows)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-src", type=Path)
    args = ap.parse_args()
    sides = [("this checkout", REPO / "src")]
    if args.baseline_src:
        sides.append(("baseline", args.baseline_src.resolve()))
    print(f"ImageIndex of {args.rows:,} rows (ImageNet-like paths, SHA-256 hex, labels); RSS "
          f"growth per row in a fresh process, the columns built in NumPy first")
    print(f"{'':<16}{'built B/row':>12}{'after split B/row':>19}  paths dtype")
    for name, src in sides:
        r = step(src, args.rows)
        print(f"{name:<16}{r['built']:>12.0f}{r['split']:>19.0f}  {r['dtype']}")


if __name__ == "__main__":
    main()
