#!/usr/bin/env python3
"""The same real images two ways (issue 11): Fashion-MNIST, `--per-class` training images per
class (seeded) and the first `--test` test images, given to `imagefit train` once as an `.npz`
(x_train, y_train, x_test, y_test: the arrays path, which stores each image once as a PNG in
the cache) and once as class folders of PNG files (what `examples/make_demo_dataset.py` writes).
Probe mode, 96 px, same seed. The two must agree: the pixels are the same, so only the split
(keyed by file bytes, which differ) may move the figures a little. Also prints the time each
took, the arrays path's one-time PNG writing included.

    python benchmarks/arrays_vs_folders.py [--per-class 100] [--test 2000]

Needs `apt-get install dataset-fashion-mnist`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import make_demo_dataset as fm  # noqa: E402

import imagefit  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not SOURCE.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    images, labels = fm.load_split(SOURCE, "train")
    rows = np.concatenate(fm.sample_indices(labels, (args.per_class,) * 10,
                                            np.random.default_rng(args.seed)))
    test_images, test_labels = fm.load_split(SOURCE, "test")
    test_rows = np.arange(args.test)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "fmnist.npz", x_train=images[rows], y_train=labels[rows],
                 x_test=test_images[test_rows], y_test=test_labels[test_rows])
        fm.write_split(tmp / "folders", "train", images,
                       [rows[labels[rows] == c] for c in range(10)])
        fm.write_split(tmp / "folders", "test", test_images,
                       [test_rows[test_labels[test_rows] == c] for c in range(10)])
        print(f"Fashion-MNIST: {len(rows)} training images, {len(test_rows)} test images, "
              f"probe, 96 px")
        figures = {}
        for name, data, test in (("npz (arrays path)", tmp / "fmnist.npz", None),
                                 ("class folders of PNG", tmp / "folders" / "train",
                                  tmp / "folders" / "test")):
            started = time.perf_counter()
            config = imagefit.TrainConfig(data=str(data), out=str(tmp / name[:3]), mode="probe",
                                          image_size=96, seed=args.seed, report=False,
                                          cache_dir=str(tmp / f"cache-{name[:3]}"))
            result = imagefit.train_run(config, progress=False)
            metrics = (result.test or imagefit.evaluate(result.classifier, str(test))).metrics
            figures[name] = (metrics, time.perf_counter() - started)
    print(f"{'':24}{'accuracy':>10}{'balanced':>10}{'ECE':>8}{'seconds':>9}")
    for name, (m, seconds) in figures.items():
        print(f"{name:24}{m['accuracy']:10.4f}{m['balanced_accuracy']:10.4f}{m['ece']:8.4f}"
              f"{seconds:9.1f}")


if __name__ == "__main__":
    main()
