#!/usr/bin/env python3
"""Report build time for a 2,000-image run (bar: under a minute on 2 cores): train a probe on
Fashion-MNIST, 200 images per class (features cached by training), then time
`imagefit report RUN` as a whole process, and check the page with headless Chromium.

    python benchmarks/report_build.py [--per-class 200] [--image-size 224]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
VENV_BIN = Path(sys.executable).parent


def main() -> None:
    import make_demo_dataset as fm

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = fm.load_split(src, "train")
        rng = np.random.default_rng(0)
        fm.write_split(tmp, "train", images, fm.sample_indices(labels, (args.per_class,) * 10, rng))
        env = dict(os.environ, IMAGEFIT_CACHE=str(tmp / "cache"))
        imagefit = str(VENV_BIN / "imagefit")
        started = time.perf_counter()
        subprocess.run([imagefit, "train", str(tmp / "train"), "--out", str(tmp / "run"),
                        "--image-size", str(args.image_size), "--no-report", "--quiet",
                        "--mode", "probe"],
                       check=True, env=env)
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([imagefit, "report", str(tmp / "run"), "--quiet"], check=True, env=env)
        report_seconds = time.perf_counter() - started
        page = tmp / "run" / "report" / "index.html"
        size = sum(f.stat().st_size for f in page.parent.rglob("*") if f.is_file())
        n_assets = len(list((page.parent / "assets").iterdir()))
    n = 10 * args.per_class
    print(f"{n} images at {args.image_size} px: train {train_seconds:.1f} s (no report), "
          f"report {report_seconds:.1f} s (bar: < 60 s); report folder {size / 1e6:.1f} MB, "
          f"{n_assets} assets")


if __name__ == "__main__":
    main()
