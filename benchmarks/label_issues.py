#!/usr/bin/env python3
"""Label-error detection on Fashion-MNIST with a known share of labels flipped: confident learning
(`find_label_issues` on `out_of_fold_probabilities`) beside the plain self-confidence ranking and
"predicted != given", as precision and recall against the flipped rows.

    python benchmarks/label_issues.py [--per-class 200] [--noise 0.05] [--seed 0] [--size 96]

Images are written as PNG class folders with their true labels and go through imagefit's own
scan, pre-flight and feature extraction; only the label array is flipped (seeded, each flipped
row to a random other class). Needs Fashion-MNIST (apt-get install dataset-fashion-mnist).
Fashion-MNIST has some genuinely ambiguous or mislabelled images of its own, so a "false
positive" here is not always wrong.
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

import imagefit  # noqa: E402
from imagefit.evaluation.issues import (  # noqa: E402
    find_label_issues,
    out_of_fold_probabilities,
    self_confidence_ranking,
)
from imagefit.features.extract import BackboneRunner, compute_features  # noqa: E402
from imagefit.models.backbones import create_backbone, preprocessing_for  # noqa: E402

SRC = Path("/usr/share/datasets/fashion-mnist")
BACKBONE = "efficientnet_lite0"


def features_of(folder: Path, cache: Path, size: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Scan, pre-flight and extract features the way `imagefit train` does."""
    index = imagefit.preflight(imagefit.scan_folder(folder), image_size=size).index
    runner = BackboneRunner(create_backbone(BACKBONE, image_size=size),
                            preprocessing_for(BACKBONE, size), cache_dir=cache)
    result = compute_features(index.paths, runner, batch_size=64, workers=2)
    return result.features[result.ok], index.labels[result.ok], index.classes


def flip_labels(labels: np.ndarray, fraction: float, n_classes: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip `fraction` of the labels, each to a uniformly random other class."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), round(fraction * len(labels)), replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, n_classes, len(flipped))) % n_classes
    return noisy, flipped


def row(name: str, chosen: np.ndarray, flipped: np.ndarray) -> str:
    hits = len(np.intersect1d(chosen, flipped))
    precision = hits / len(chosen) if len(chosen) else float("nan")
    return (f"{name:44s}{len(chosen):8d}{hits:7d}{precision:11.3f}"
            f"{hits / len(flipped):9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    if not SRC.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    import make_demo_dataset as fm

    with tempfile.TemporaryDirectory() as tmp:
        images, labels = fm.load_split(SRC, "train")
        rng = np.random.default_rng(args.seed)
        per_class = fm.sample_indices(labels, (args.per_class,) * 10, rng)
        fm.write_split(Path(tmp), "train", images, per_class)
        started = time.perf_counter()
        x, truth, classes = features_of(Path(tmp) / "train", Path(tmp) / "cache", args.size)
        extract_s = time.perf_counter() - started
    k_classes = len(classes)
    noisy, flipped = flip_labels(truth, args.noise, k_classes, args.seed + 1)
    k = len(flipped)

    started = time.perf_counter()
    proba = out_of_fold_probabilities(x, noisy, k_classes, seed=args.seed)
    oof_s = time.perf_counter() - started
    started = time.perf_counter()
    found = find_label_issues(noisy, proba)
    by_margin = find_label_issues(noisy, proba, rank_by="normalized_margin")
    cl_s = time.perf_counter() - started
    baseline = self_confidence_ranking(noisy, proba)
    disagree = np.flatnonzero(proba.argmax(axis=1) != noisy)

    print(f"Fashion-MNIST: {len(x)} images ({args.per_class}/class, {args.size} px, {BACKBONE}), "
          f"{k} labels flipped ({args.noise:.0%}), seed {args.seed}")
    print(f"features {extract_s:.1f} s | out-of-fold probabilities (5 folds x 60 epochs) "
          f"{oof_s:.1f} s | find_label_issues x2 {cl_s * 1000:.0f} ms")
    print(f"out-of-fold accuracy: {(proba.argmax(1) == truth).mean():.3f} vs true labels, "
          f"{(proba.argmax(1) == noisy).mean():.3f} vs noisy labels")
    print()
    print(f"{'':44s}{'flagged':>8s}{'hits':>7s}{'precision':>11s}{'recall':>9s}")
    print(row(f"confident learning, top k={k} (self-conf.)", found.indices[:k], flipped))
    print(row(f"confident learning, top k={k} (norm. margin)", by_margin.indices[:k], flipped))
    print(row(f"self-confidence ranking, top k={k}", baseline[:k], flipped))
    print(row("confident learning, all flagged", found.indices, flipped))
    print(row("predicted != given (argmax)", disagree, flipped))
    print()
    position = {r: i for i, r in enumerate(found.indices)}
    hits = [r for r in flipped if r in position]
    right = sum(found.suggested[position[r]] == truth[r] for r in hits)
    print(f"suggested label = true label for {right}/{len(hits)} flipped rows found")
    cj = found.confident_joint
    print(f"estimated issues (off-diagonal of the calibrated confident joint): "
          f"{cj.sum() - np.trace(cj)} (true: {k})")
    false_pos = [r for r in found.indices[:k] if r not in set(flipped)]
    pairs = [f"{classes[truth[r]]}->{classes[found.suggested[position[r]]]}" for r in false_pos]
    if pairs:
        common = sorted(set(pairs), key=lambda p: -pairs.count(p))[:5]
        print("top-k rows not flipped by us (given -> suggested): "
              + ", ".join(f"{p} x{pairs.count(p)}" for p in common))


if __name__ == "__main__":
    main()
