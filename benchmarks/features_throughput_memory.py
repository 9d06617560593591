#!/usr/bin/env python3
"""Feature-extraction bars, whole process trees measured in one run:
  - `imagefit features` on 1,000 vs 4,000 photos: peak memory (sum of RSS over the process and
    its workers, polled every 50 ms) must differ by under 150 MB;
  - throughput vs a hand-written eager extraction (PIL + timm, 2 threads) on the same photos.

    python benchmarks/features_throughput_memory.py [--n-small 1000] [--n-large 4000]
                                                    [--baseline-src /tmp/old/src]

With --baseline-src, `imagefit features` from another checkout's `src/` runs too, side by side.

Photos are cut from scikit-image's sample photographs (../shared/bench/make_photo_corpus.py,
500x375 JPEGs). Each imagefit run gets an empty cache, so every feature is computed.
Needs scikit-image and psutil (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = Path(sys.executable).parent
CORPUS_SCRIPT = ROOT.parent / "shared" / "bench" / "make_photo_corpus.py"
CLI = "import sys; from imagefit.cli.main import main; sys.exit(main())"

EAGER = """
import sys, numpy as np
sys.path.insert(0, {here!r})
from pathlib import Path
from _reference import eager_features
paths = sorted(str(p) for p in Path({data!r}).rglob("*.jpg"))
np.save({out!r}, eager_features(paths, 224))
"""


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run `cmd`; return (seconds, peak MB of the summed RSS of its process tree)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--n-large", type=int, default=4000)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    args = ap.parse_args()
    import os

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows, baseline = [], []
        for n in (args.n_small, args.n_large):
            data = tmp / f"photos{n}"
            subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(data), "--n", str(n)],
                           check=True)
            env = dict(os.environ, IMAGEFIT_CACHE=str(tmp / f"cache{n}"))
            seconds, peak = measure([str(VENV_BIN / "imagefit"), "features", str(data), "--out",
                                     str(tmp / f"feats{n}"), "--quiet"], env)
            rows.append((f"imagefit features, {n} photos", n, seconds, peak))
            if args.baseline_src:
                env = dict(env, PYTHONPATH=str(args.baseline_src.resolve()),
                           IMAGEFIT_CACHE=str(tmp / f"cache-baseline{n}"))
                seconds, peak = measure([sys.executable, "-c", CLI, "features", str(data),
                                         "--out", str(tmp / f"base{n}"), "--quiet"], env)
                baseline.append((f"baseline imagefit features, {n} photos", n, seconds, peak))
            seconds, peak = measure([sys.executable, "-c", EAGER.format(
                here=str(HERE), data=str(data), out=str(tmp / "eager.npy"))])
            rows.append((f"eager PIL + timm (2 threads), {n} photos", n, seconds, peak))

    print(f"{'':42s}{'images':>8s}{'seconds':>10s}{'img/s':>9s}{'peak MB':>10s}")
    for name, n, seconds, peak in rows + baseline:
        print(f"{name:42s}{n:8d}{seconds:10.1f}{n / seconds:9.1f}{peak:10.0f}")
    small, eager_small, large, eager_large = rows
    print(f"imagefit peak memory, {large[1]} vs {small[1]} photos: "
          f"{large[3] - small[3]:+.0f} MB (bar: < 150 MB)")
    for ours, eager in ((small, eager_small), (large, eager_large)):
        print(f"throughput on {ours[1]} photos: {eager[2] / ours[2]:.2f}x the eager reference "
              f"(bar: >= 2x)")
    for base, ours, eager in zip(baseline, (small, large), (eager_small, eager_large)):
        print(f"baseline on {base[1]} photos: {eager[2] / base[2]:.2f}x the eager reference; "
              f"this checkout {base[2] / ours[2]:.2f}x the baseline")


if __name__ == "__main__":
    main()
