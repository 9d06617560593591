#!/usr/bin/env python3
"""imagefit.keras against Keras 3's own legacy ImageDataGenerator, on the same JPEG files, in
one run, on one core: `flow_from_directory` with the Keras blog's augmentation (rotation 40,
shifts 0.2, shear 0.2, zoom 0.2, horizontal flip, rescale 1/255), 224x224, batch 32, one full
cold epoch each (nothing cached between epochs; files read from the page cache); also
imagefit.keras with `draft=True` (large JPEGs decoded at reduced DCT scale: not Keras' pixels,
the same files for nothing beyond 2x the target size). With
--repeats R the two run alternately and the best of R is kept. The decode-only rate (libjpeg-
turbo, no resize) is printed as the ceiling.

    python benchmarks/keras_generator_speed.py --size 500x375 --n 400
    python benchmarks/keras_generator_speed.py --data DIR

Bar (issue 13): >= 5x Keras on 500x375 photos. Photos come from
../shared/bench/make_photo_corpus.py (scikit-image's sample photographs). Needs keras and
scikit-image (pip install -e '.[bench]').
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ["KERAS_BACKEND"] = "torch"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import simplejpeg  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS_SCRIPT = ROOT.parent / "shared" / "bench" / "make_photo_corpus.py"
BLOG = dict(rescale=1 / 255, rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
            shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")


def one_epoch(generator_class, data: Path, **extensions) -> tuple[int, float]:
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images ..."
        it = generator_class(**BLOG).flow_from_directory(
            str(data), target_size=(224, 224), batch_size=32, class_mode="binary", seed=0,
            **extensions)
    start = time.perf_counter()
    for i in range(len(it)):
        it[i]
    return it.samples, time.perf_counter() - start


def decode_only(data: Path) -> tuple[int, float]:
    files = sorted(data.rglob("*.jpg"))
    start = time.perf_counter()
    for f in files:
        simplejpeg.decode_jpeg(f.read_bytes(), colorspace="RGB")
    return len(files), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a folder of class folders of JPEGs")
    ap.add_argument("--size", default="500x375")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import cv2
    cv2.setNumThreads(1)
    from keras.src.legacy.preprocessing.image import ImageDataGenerator as KerasGenerator

    from imagefit.keras import ImageDataGenerator as ImagefitGenerator

    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if data is None:
            data = Path(tmp) / "photos"
            subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(data), "--n", str(a.n),
                            "--size", a.size], check=True)
        runs = {"keras": lambda: one_epoch(KerasGenerator, data),
                "imagefit.keras": lambda: one_epoch(ImagefitGenerator, data),
                "draft": lambda: one_epoch(ImagefitGenerator, data, draft=True),
                "decode": lambda: decode_only(data)}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(a.repeats):
            for name, run in runs.items():
                n, seconds = run()
                best[name] = min(best[name], seconds / n)
    keras_rate = 1 / best["keras"]
    print(f"{n} JPEGs ({a.size if a.data is None else a.data}), 224x224, blog augmentation, "
          f"one core, cold epoch, best of {a.repeats}")
    print(f"{'':30}{'img/s':>8}{'vs Keras':>10}")
    for name, label in (("keras", "Keras 3 ImageDataGenerator"),
                        ("imagefit.keras", "imagefit.keras"),
                        ("draft", "imagefit.keras, draft=True"),
                        ("decode", "decode only (libjpeg-turbo)")):
        rate = 1 / best[name]
        print(f"{label:30}{rate:8.0f}{rate / keras_rate:9.2f}x")


if __name__ == "__main__":
    main()
