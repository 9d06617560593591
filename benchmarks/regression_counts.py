"""Regression on real images: how many Fashion-MNIST items a canvas holds (1 to 4, placed at
seeded positions on a 112 x 112 black canvas). imagefit's `ImageRegressor` (probe) beside a
hand-written reference (the same offline backbone's features, scikit-learn's RidgeCV), and
the empirical coverage of imagefit's 90 % split-conformal intervals on the test canvases, for
several seeds (a new set of canvases each).

    apt-get install dataset-fashion-mnist
    .venv/bin/python benchmarks/regression_counts.py [--train 1000] [--test 500] [--seeds 5]
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
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SIZE = 112


def fashion_items() -> np.ndarray:
    with gzip.open(FASHION) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)


def canvases(items: np.ndarray, n: int, seed: int, folder: Path) -> tuple[list[str], np.ndarray]:
    """n canvases of 1 to 4 items, each item in its own quadrant at a seeded offset."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths, counts = [], rng.integers(1, 5, n)
    for i, count in enumerate(counts):
        canvas = np.zeros((SIZE, SIZE), np.uint8)
        for quadrant in rng.choice(4, count, replace=False):
            top = (quadrant // 2) * 56 + rng.integers(0, 28)
            left = (quadrant % 2) * 56 + rng.integers(0, 28)
            canvas[top:top + 28, left:left + 28] = items[rng.integers(len(items))]
        path = folder / f"{i:05d}.png"
        Image.fromarray(canvas).convert("RGB").save(path)
        paths.append(str(path))
    return paths, counts.astype(float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    if not FASHION.is_file():
        sys.exit("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    import imagefit
    from _reference import eager_features
    from sklearn.linear_model import RidgeCV

    items = fashion_items()
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="counts-") as tmp:
            train_paths, y_train = canvases(items, args.train, seed, Path(tmp) / "train")
            test_paths, y_test = canvases(items, args.test, 1000 + seed, Path(tmp) / "test")
            started = time.perf_counter()
            reg = imagefit.ImageRegressor(mode="probe", image_size=SIZE, seed=seed,
                                          cache_dir=str(Path(tmp) / "cache"))
            reg.fit(train_paths, y_train)
            value, lower, upper = reg.predict_interval(test_paths)
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            x_train, x_test = eager_features(train_paths, SIZE), eager_features(test_paths, SIZE)
            ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x_train, y_train)
            ridge_pred = ridge.predict(x_test)
            ref_s = time.perf_counter() - started
        row = {"seed": seed, "ours_mae": np.abs(value - y_test).mean(),
               "ridge_mae": np.abs(ridge_pred - y_test).mean(),
               "coverage": np.mean((y_test >= lower) & (y_test <= upper)),
               "width": float(np.mean(upper - lower)), "ours_s": ours_s, "ref_s": ref_s}
        rows.append(row)
        print(row, flush=True)
    print(f"\nItem counts (1-4) of Fashion-MNIST canvases, {args.train} training / {args.test} "
          f"test, {SIZE} px, probe; 90 % intervals")
    print(f"{'seed':>4}{'imagefit MAE':>14}{'ridge MAE':>11}{'coverage':>10}{'width':>7}"
          f"{'imagefit s':>12}{'ridge s':>9}")
    for r in rows:
        print(f"{r['seed']:>4}{r['ours_mae']:>14.3f}{r['ridge_mae']:>11.3f}{r['coverage']:>10.3f}"
              f"{r['width']:>7.2f}{r['ours_s']:>12.1f}{r['ref_s']:>9.1f}")
    cover = np.array([r["coverage"] for r in rows])
    print(f"mean coverage {cover.mean():.3f} (promised 0.900; per seed {cover.min():.3f} to "
          f"{cover.max():.3f})")


if __name__ == "__main__":
    main()
