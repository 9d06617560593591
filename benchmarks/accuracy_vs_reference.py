#!/usr/bin/env python3
"""Accuracy bars: imagefit's probe mode beside the hand-written reference (frozen backbone
features + scikit-learn LogisticRegression), both evaluated on the same held-out test images.

    python benchmarks/accuracy_vs_reference.py demo                 # bundled demo, 224 px
    python benchmarks/accuracy_vs_reference.py fashion-mnist        # 100/class, full 10k test, 96 px

The reference trains on all training images; imagefit holds 20% of them out for early stopping
and calibration, as it always does. Needs scikit-learn (pip install -e '.[bench]').
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import eager_features, logistic_regression_scores  # noqa: E402

import imagefit  # noqa: E402


def fashion_mnist_folders(tmp: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    import make_demo_dataset as fm

    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    images, labels = fm.load_split(src, "train")
    rng = np.random.default_rng(seed)
    fm.write_split(tmp, "train", images, fm.sample_indices(labels, (per_class,) * 10, rng))
    test_images, test_labels = fm.load_split(src, "test")
    fm.write_split(tmp, "test", test_images, [np.flatnonzero(test_labels == c) for c in range(10)])
    return tmp / "train", tmp / "test"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", choices=("demo", "fashion-mnist"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset == "demo":
            train_dir, test_dir = (ROOT / "examples/fashion-mnist-demo/train",
                                   ROOT / "examples/fashion-mnist-demo/test")
            size = 224
        else:
            train_dir, test_dir = fashion_mnist_folders(Path(tmp) / "fm", args.per_class, args.seed)
            size = 96
        train, test = imagefit.scan_folder(train_dir), imagefit.scan_folder(test_dir)
        print(f"{args.dataset}: {len(train)} training images, {len(test)} test images, {size} px")

        started = time.perf_counter()
        config = imagefit.TrainConfig(data=str(train_dir), out=str(Path(tmp) / "run"), mode="probe",
                                      image_size=size, seed=args.seed,
                                      cache_dir=str(Path(tmp) / "cache"))
        result = imagefit.train_run(config, progress=False)
        ours = imagefit.evaluate(result.classifier, test).metrics
        ours_seconds = time.perf_counter() - started

        started = time.perf_counter()
        x_train = eager_features(train.paths.tolist(), size)
        x_test = eager_features(test.paths.tolist(), size)
        test_labels = test.with_classes(train.classes).labels
        ref = logistic_regression_scores(x_train, train.labels, x_test, test_labels)
        ref_seconds = time.perf_counter() - started

    print(f"{'':34s}{'accuracy':>10s}{'balanced acc':>14s}{'seconds':>10s}")
    print(f"{'imagefit probe (train + eval)':34s}{ours['accuracy']:10.4f}"
          f"{ours['balanced_accuracy']:14.4f}{ours_seconds:10.1f}")
    print(f"{'reference: eager timm + LogReg':34s}{ref['accuracy']:10.4f}"
          f"{ref['balanced_accuracy']:14.4f}{ref_seconds:10.1f}")
    print(f"imagefit ECE {ours['ece']:.4f}, log loss {ours['log_loss']:.4f}")


if __name__ == "__main__":
    main()
