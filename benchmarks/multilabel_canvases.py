"""Multi-label tagging on real images: which Fashion-MNIST classes a canvas holds (2 to 4
items of seeded classes, each in its own quadrant of a 112 x 112 black canvas; the labels are
the classes present). imagefit's multi-label `ImageClassifier` (probe: sigmoid head, per-label
calibration, thresholds by max F1 on its validation split) beside a hand-written reference:
the same offline backbone's features and scikit-learn's one-vs-rest logistic regression,
fitted on every training canvas, labels at probability 0.5. mAP and macro-F1 on the test
canvases, for several seeds (a new set of canvases each).

    apt-get install dataset-fashion-mnist
    .venv/bin/python benchmarks/multilabel_canvases.py [--train 2000] [--test 1000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
FOLDER = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
SIZE = 112


def fashion() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FOLDER / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FOLDER / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def canvases(images: np.ndarray, labels: np.ndarray, n: int, seed: int,
             folder: Path) -> tuple[list[str], np.ndarray]:
    """n canvases of 2 to 4 items, each item in its own quadrant at a seeded offset; returns
    the paths and the 0/1 matrix of the classes present."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    paths, present = [], np.zeros((n, len(CLASSES)), np.int64)
    for i in range(n):
        canvas = np.zeros((SIZE, SIZE), np.uint8)
        count = rng.integers(2, 5)
        for quadrant, cls in zip(rng.choice(4, count, replace=False),
                                 rng.integers(0, len(CLASSES), count)):
            top = (quadrant // 2) * 56 + rng.integers(0, 28)
            left = (quadrant % 2) * 56 + rng.integers(0, 28)
            canvas[top:top + 28, left:left + 28] = images[rng.choice(by_class[cls])]
            present[i, cls] = 1
        path = folder / f"{i:05d}.png"
        Image.fromarray(canvas).convert("RGB").save(path)
        paths.append(str(path))
    return paths, present


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    if not (FOLDER / "train-images-idx3-ubyte.gz").is_file():
        sys.exit("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    import imagefit
    from _reference import eager_features
    from imagefit.metrics import multilabel_metrics
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    images, labels = fashion()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="tags-") as tmp:
            train_paths, y_train = canvases(images, labels, args.train, seed,
                                            Path(tmp) / "train")
            test_paths, y_test = canvases(images, labels, args.test, 1000 + seed,
                                          Path(tmp) / "test")
            started = time.perf_counter()
            clf = imagefit.ImageClassifier(mode="probe", image_size=SIZE, seed=seed,
                                           cache_dir=str(Path(tmp) / "cache"))
            clf.fit(train_paths, [[CLASSES[c] for c in np.flatnonzero(row)] for row in y_train])
            columns = [clf.classes_.index(c) for c in CLASSES]
            proba = clf.predict_proba(test_paths)[:, columns]
            ours = multilabel_metrics(y_test, proba, CLASSES, clf.thresholds_[columns])
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            x_train, x_test = eager_features(train_paths, SIZE), eager_features(test_paths, SIZE)
            reference = OneVsRestClassifier(LogisticRegression(max_iter=2000))
            ref_proba = reference.fit(x_train, y_train).predict_proba(x_test)
            ref = multilabel_metrics(y_test, ref_proba, CLASSES, 0.5)
            ref_s = time.perf_counter() - started
        row = {"seed": seed, "ours_map": ours["map"], "ref_map": ref["map"],
               "ours_f1": ours["macro_f1"], "ref_f1": ref["macro_f1"],
               "ours_micro": ours["micro_f1"], "ref_micro": ref["micro_f1"],
               "ours_ece": ours["ece"], "ref_ece": ref["ece"], "ours_s": ours_s, "ref_s": ref_s}
        rows.append(row)
        print({k: round(float(v), 4) for k, v in row.items()}, flush=True)
    print(f"\nClasses present on Fashion-MNIST canvases (2-4 items), {args.train} training / "
          f"{args.test} test, {SIZE} px, probe; reference: one-vs-rest logistic regression")
    print(f"{'seed':>4}{'mAP ours':>10}{'mAP ref':>9}{'macro-F1 ours':>15}{'macro-F1 ref':>14}"
          f"{'micro-F1 ours':>15}{'micro-F1 ref':>14}{'ECE ours':>10}{'ECE ref':>9}"
          f"{'ours s':>8}{'ref s':>7}")
    for r in rows:
        print(f"{r['seed']:>4}{r['ours_map']:>10.3f}{r['ref_map']:>9.3f}{r['ours_f1']:>15.3f}"
              f"{r['ref_f1']:>14.3f}{r['ours_micro']:>15.3f}{r['ref_micro']:>14.3f}"
              f"{r['ours_ece']:>10.3f}{r['ref_ece']:>9.3f}{r['ours_s']:>8.0f}{r['ref_s']:>7.0f}")
    mean = {k: np.mean([r[k] for r in rows]) for k in rows[0] if k != "seed"}
    print(f"mean{mean['ours_map']:>10.3f}{mean['ref_map']:>9.3f}{mean['ours_f1']:>15.3f}"
          f"{mean['ref_f1']:>14.3f}{mean['ours_micro']:>15.3f}{mean['ref_micro']:>14.3f}"
          f"{mean['ours_ece']:>10.3f}{mean['ref_ece']:>9.3f}")


if __name__ == "__main__":
    main()
