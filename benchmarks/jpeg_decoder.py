#!/usr/bin/env python3
"""The one decoder (`imagefit.load_image`) on JPEGs with and without its libjpeg-turbo path,
in one run, on one core: the same files, decoded to the working size and in full, each way
timed alternately (best of --repeats). The pixels are checked equal on the way.

    python benchmarks/jpeg_decoder.py --size 500x375 --n 400
    python benchmarks/jpeg_decoder.py --data DIR

Photos come from ../shared/bench/make_photo_corpus.py (scikit-image's sample photographs).
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

import imagefit.data.images as images

ROOT = Path(__file__).resolve().parent.parent
CORPUS_SCRIPT = ROOT.parent / "shared" / "bench" / "make_photo_corpus.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a folder of JPEGs (searched recursively)")
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            data = Path(tmp) / "photos"
            subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(data), "--n", str(a.n),
                            "--size", a.size], check=True, stdout=subprocess.DEVNULL)
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        blobs = [f.read_bytes() for f in files]
    turbo = images.simplejpeg
    if turbo is None:
        sys.exit("simplejpeg is not installed: there is no fast path to compare")
    best: dict[tuple[str, int | None], float] = {}
    for _ in range(a.repeats):
        for way in ("Pillow", "libjpeg-turbo"):
            images.simplejpeg = turbo if way == "libjpeg-turbo" else None
            for size in (a.image_size, None):
                start = time.perf_counter()
                for blob in blobs:
                    images.load_image(blob, size)
                seconds = time.perf_counter() - start
                best[way, size] = min(best.get((way, size), float("inf")), seconds)
    for size in (a.image_size, None):
        images.simplejpeg = None
        slow = [images.load_image(b, size) for b in blobs[:50]]
        images.simplejpeg = turbo
        fast = [images.load_image(b, size) for b in blobs[:50]]
        same = all(np.array_equal(x, y) for x, y in zip(slow, fast))
        pillow, direct = (len(blobs) / best[w, size] for w in ("Pillow", "libjpeg-turbo"))
        label = f"{size}x{size}" if size else "full size"
        print(f"load_image, {len(blobs)} JPEGs, {label:>9}: Pillow {pillow:6.0f} img/s, "
              f"libjpeg-turbo {direct:6.0f} img/s, {direct / pillow:.2f}x "
              f"(pixels {'equal' if same else 'DIFFER'} on 50 files)")


if __name__ == "__main__":
    main()
