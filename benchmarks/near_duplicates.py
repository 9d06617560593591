#!/usr/bin/env python3
"""Choosing `NEAR_DUPLICATE_THRESHOLD`: recall of planted near-copies and the pairs found beside
them, per cosine-similarity threshold, on EfficientNet-Lite0 embeddings of real photographs.

    python benchmarks/near_duplicates.py [--n 400] [--copies 60] [--size 224] [--seed 0]

A "train" set of `--n` JPEG crops of scikit-image's photographs (../shared/bench/
make_photo_corpus.py) and a "val" set of `--copies` near-copies of distinct train images, in
five equal kinds: resized to 70%, re-encoded at JPEG quality 60, flipped left-right, cropped to
90%, and all four at once. The corpus cuts every image from one of only 7 photographs, so two
crops of one photograph can overlap heavily and be near duplicates in their own right: the
corpus generator's random draws are replayed (and checked against its files) to know each
crop's photograph and box, and pairs that are not planted are reported by that relation.
Crops of different photographs never come close, so false positives are measured on hard
negatives too: 1,000 distinct Fashion-MNIST test images (100 per class), where two plain
T-shirts look alike without being copies. Needs scikit-image (pip install -e '.[bench]') and
Fashion-MNIST (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imagefit.evaluation.issues import NEAR_DUPLICATE_THRESHOLD, near_duplicate_pairs
from imagefit.features.extract import BackboneRunner, compute_features
from imagefit.models.backbones import create_backbone, preprocessing_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CORPUS_SCRIPT = ROOT.parent / "shared" / "bench" / "make_photo_corpus.py"
BACKBONE = "efficientnet_lite0"
KINDS = ("resize70", "jpeg60", "hflip", "crop90", "all4")
THRESHOLDS = np.round(np.arange(0.80, 0.995, 0.01), 2)


def make_corpus(script: Path, out: Path, n: int, seed: int) -> list[Path]:
    subprocess.run([sys.executable, str(script), str(out), "--n", str(n), "--size", "500x375",
                    "--classes", "2", "--seed", str(seed)], check=True)
    return sorted(out.rglob("*.jpg"), key=lambda p: p.name)


def replay_corpus(script: Path, files: list[Path], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(photograph index, crop box) of every corpus file, by replaying the generator's draws.

    Each file is re-rendered from the replayed draws and compared byte for byte; a mismatch
    (the generator changed) gives photograph -1 for every file instead of a wrong answer.
    """
    spec = importlib.util.spec_from_file_location("make_photo_corpus", script)
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    import skimage.data as d

    photos = [Image.fromarray(getattr(d, name)()).convert("RGB") for name in corpus.PHOTOS]
    rng = np.random.default_rng(seed)
    sources, boxes = np.full(len(files), -1), np.zeros((len(files), 4))
    for i, path in enumerate(files):
        s = int(rng.integers(len(photos)))
        W, H = photos[s].size
        w, h = int(rng.integers(W // 2, W + 1)), int(rng.integers(H // 2, H + 1))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        size = (500, 375) if rng.random() < 0.7 else (375, 500)
        buffer = io.BytesIO()
        photos[s].crop((x, y, x + w, y + h)).resize(size, Image.BILINEAR).save(
            buffer, format="JPEG", quality=90)
        if buffer.getvalue() != path.read_bytes():
            print(f"warning: cannot replay {script.name}; photographs unknown")
            return np.full(len(files), -1), boxes
        sources[i], boxes[i] = s, (x, y, x + w, y + h)
    return sources, boxes


def near_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """One near-copy and the JPEG quality to save it with."""
    if kind in ("crop90", "all4"):
        w, h = image.size
        cw, ch = round(w * 0.9), round(h * 0.9)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((x, y, x + cw, y + ch))
    if kind in ("hflip", "all4"):
        image = ImageOps.mirror(image)
    if kind in ("resize70", "all4"):
        image = image.resize((round(image.width * 0.7), round(image.height * 0.7)),
                             Image.BILINEAR)
    return image, 60 if kind in ("jpeg60", "all4") else 90


def embed(paths: list[Path], size: int, cache: Path) -> np.ndarray:
    runner = BackboneRunner(create_backbone(BACKBONE, image_size=size),
                            preprocessing_for(BACKBONE, size), cache_dir=cache)
    result = compute_features(np.array([str(p) for p in paths]), runner, batch_size=32,
                              workers=2)
    assert result.ok.all(), result.errors
    return result.features


def fashion_mnist_lookalikes(tmp: Path, per_class: int, size: int,
                             seed: int) -> tuple[np.ndarray, float]:
    """Similarities of all pairs >= the lowest threshold among distinct Fashion-MNIST images,
    and the smallest mean absolute pixel difference of those pairs (a real copy would be ~0)."""
    import make_demo_dataset as fm

    images, labels = fm.load_split(FASHION_MNIST, "test")
    per = fm.sample_indices(labels, (per_class,) * 10, np.random.default_rng(seed))
    fm.write_split(tmp, "test", images, per)
    files = sorted((tmp / "test").rglob("*.png"))
    official = np.array([int(p.stem.rsplit("-", 1)[1]) for p in files])
    pairs = near_duplicate_pairs(embed(files, size, tmp), threshold=float(THRESHOLDS[0]))
    pixels = images[official].reshape(len(files), -1).astype(np.float64)
    mad = [np.abs(pixels[int(a)] - pixels[int(b)]).mean() for a, b in pairs[:, :2]]
    return pairs[:, 2], min(mad, default=float("nan"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def scaling_check(n: int = 20_000, d: int = 1280) -> str:
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    tracemalloc.start()
    started = time.perf_counter()
    near_duplicate_pairs(x, threshold=0.5)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return (f"near_duplicate_pairs on {n:,} x {d} random embeddings: {seconds:.1f} s, peak "
            f"{peak:.0f} MB beyond the input (a full {n:,}^2 float32 matrix: "
            f"{n * n * 4 / 2**20:.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--copies", type=int, default=60)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus-script", type=Path, default=CORPUS_SCRIPT)
    args = ap.parse_args()
    if not args.corpus_script.is_file():
        sys.exit(f"{args.corpus_script} not found (pass --corpus-script)")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        train_files = make_corpus(args.corpus_script, Path(tmp) / "train", args.n, args.seed)
        sources, boxes = replay_corpus(args.corpus_script, train_files, args.seed)
        originals = np.sort(rng.choice(len(train_files), args.copies, replace=False))
        kinds = np.array([KINDS[i % len(KINDS)] for i in range(args.copies)])
        val_dir = Path(tmp) / "val"
        val_dir.mkdir()
        val_files = []
        for v, (row, kind) in enumerate(zip(originals, kinds)):
            image, quality = near_copy(Image.open(train_files[row]).convert("RGB"), kind, rng)
            val_files.append(val_dir / f"copy{v:03d}-{kind}.jpg")
            image.save(val_files[-1], quality=quality)
        started = time.perf_counter()
        emb = embed(train_files + val_files, args.size, Path(tmp))
        extract_s = time.perf_counter() - started
        if FASHION_MNIST.is_dir():
            fm_sims, fm_mad = fashion_mnist_lookalikes(Path(tmp) / "fm", 100, args.size,
                                                       args.seed)
        else:
            print("Fashion-MNIST not found (apt-get install dataset-fashion-mnist): no "
                  "look-alike column")
            fm_sims, fm_mad = None, float("nan")
    n_train = len(train_files)
    # Every row's train original: itself for train rows, the copied image for val rows.
    origin = np.concatenate([np.arange(n_train), originals])
    planted = {(int(o), n_train + v) for v, o in enumerate(originals)}
    kind_of = {(int(o), n_train + v): k for v, (o, k) in enumerate(zip(originals, kinds))}

    started = time.perf_counter()
    pairs = near_duplicate_pairs(emb, threshold=float(THRESHOLDS[0]))
    search_ms = (time.perf_counter() - started) * 1000
    i, j = pairs[:, 0].astype(int), pairs[:, 1].astype(int)
    sims = pairs[:, 2]
    is_planted = np.array([(a, b) in planted for a, b in zip(i, j)], bool)
    # Relation of the other pairs, judged on the train originals behind both rows.
    relation = np.full(len(pairs), "different photo", dtype=object)
    for p, (a, b) in enumerate(zip(origin[i], origin[j])):
        if is_planted[p]:
            relation[p] = "planted"
        elif sources[a] < 0:
            relation[p] = "unknown"
        elif sources[a] == sources[b]:
            relation[p] = ("same photo, IoU>=0.5" if iou(boxes[a], boxes[b]) >= 0.5
                           else "same photo, IoU<0.5")

    print(f"{n_train} train photo crops + {args.copies} planted near-copies in val "
          f"({args.copies // len(KINDS)} per kind), {BACKBONE} at {args.size} px: features "
          f"{extract_s:.1f} s, pair search {search_ms:.0f} ms")
    all_sims = np.array([(emb[a] @ emb[b]) / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b])
                         for a, b in sorted(planted)])
    kinds_sorted = np.array([kind_of[p] for p in sorted(planted)])
    print("planted-pair similarity (min / median) by kind: " + ", ".join(
        f"{k} {all_sims[kinds_sorted == k].min():.3f}/{np.median(all_sims[kinds_sorted == k]):.3f}"
        for k in KINDS))
    others = ~is_planted
    different = relation == "different photo"
    print(f"highest similarity of a non-planted pair: {sims[others].max(initial=0):.3f}; of two "
          f"crops of different photographs: {sims[different].max(initial=0):.3f}"
          + ("" if different.any() else f" (none >= {THRESHOLDS[0]})"))
    if fm_sims is not None:
        print(f"Fashion-MNIST, 1,000 distinct test images at {args.size} px: highest pair "
              f"similarity {fm_sims.max(initial=0):.3f}; smallest mean pixel difference among "
              f"pairs >= {THRESHOLDS[0]}: {fm_mad:.1f}/255 (no pair is a copy)")
    print()
    print(f"{'':13s}{'planted near-copies found':^45s} | {'other pairs, photo corpus':^31s} | "
          f"{'F-MNIST':>8s}")
    print(f"{'thresh':>6s} {'recall':>6s} " + " ".join(f"{k:>8s}" for k in KINDS)
          + f" | {'same photo':>10s} {'same photo':>10s} {'diff.':>7s} | {'distinct':>8s}")
    print(f"{'':6s} {'':6s} " + " ".join(f"{'':>8s}" for _ in KINDS)
          + f" | {'IoU>=0.5':>10s} {'IoU<0.5':>10s} {'photos':>7s} | {'pairs':>8s}")
    for t in THRESHOLDS:
        keep = sims >= np.float32(t)
        found = {(a, b) for a, b in zip(i[keep & is_planted], j[keep & is_planted])}
        per_kind = [sum(1 for p in found if kind_of[p] == k) for k in KINDS]
        per_kind_n = [int((kinds == k).sum()) for k in KINDS]
        counts = [int((keep & (relation == r)).sum()) for r in
                  ("same photo, IoU>=0.5", "same photo, IoU<0.5", "different photo")]
        marker = "  <- NEAR_DUPLICATE_THRESHOLD" if np.isclose(t, NEAR_DUPLICATE_THRESHOLD) else ""
        lookalikes = "-" if fm_sims is None else str(int((fm_sims >= np.float32(t)).sum()))
        print(f"{t:6.2f} {len(found) / len(planted):6.3f} "
              + " ".join(f"{f:>5d}/{m:<2d}" for f, m in zip(per_kind, per_kind_n))
              + f" | {counts[0]:10d} {counts[1]:10d} {counts[2]:7d} | {lookalikes:>8s}{marker}")
    print()
    print(scaling_check())


if __name__ == "__main__":
    main()
