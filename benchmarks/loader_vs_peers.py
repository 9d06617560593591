#!/usr/bin/env python3
"""The training loader against its peers, on the same JPEG files, in one run, on one core:
  - imagefit (`benchmark_loader`): decode only, a cold epoch (decode + augment from the files)
    and epochs from the decoded-image cache, augment "keras";
  - Keras `ImageDataGenerator` with the Keras blog's settings, `flow_from_directory` at 224 px,
    batch 32 (KERAS_BACKEND=torch);
  - torchvision v2: `ImageFolder` (PIL loader), Resize((224, 224)), RandomAffine(degrees=40,
    translate=(0.2, 0.2), shear=0.2, scale=(0.8, 1.2)), RandomHorizontalFlip, ToImage +
    ToDtype(uint8), DataLoader(num_workers=0, batch 32); the same ops on tensors (ToImage first)
    as a second row.
Each peer runs one full epoch; with --repeats R the runs are interleaved and the best of R is kept.

    python benchmarks/loader_vs_peers.py --size 500x375 --n 400
    python benchmarks/loader_vs_peers.py --size 4032x3024 --n 48
    python benchmarks/loader_vs_peers.py --data DIR [--limit N] [--json FILE]

Bars: imagefit cold >= 5x Keras and >= 2x torchvision on 500x375 photos; >= 5x Keras on
4032x3024. Photos come from ../shared/bench/make_photo_corpus.py (scikit-image's sample
photographs). Needs keras and scikit-image (pip install -e '.[bench]').
"""

from __future__ import annotations

import os

# One core for everyone, and Keras on PyTorch: both must be set before the imports below.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"
os.environ["KERAS_BACKEND"] = "torch"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from imagefit.workflows.benchmark import benchmark_loader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS_SCRIPT = ROOT.parent / "shared" / "bench" / "make_photo_corpus.py"
SIZE = 224
BATCH = 32
# The Keras blog's ImageDataGenerator ("Building powerful image classification models using
# very little data"); imagefit's "keras" preset has the same values.
KERAS_BLOG = dict(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                  shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest",
                  rescale=1 / 255)


def run_keras(data: Path) -> tuple[int, float]:
    """One epoch of flow_from_directory; (images, seconds), directory scan not timed."""
    try:
        from keras._tf_keras.keras.preprocessing.image import ImageDataGenerator
    except ImportError:  # the class itself; the public alias moved between Keras 3 releases
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    flow = ImageDataGenerator(**KERAS_BLOG).flow_from_directory(
        str(data), target_size=(SIZE, SIZE), batch_size=BATCH, class_mode="categorical", seed=0)
    count = 0
    started = time.perf_counter()
    for _ in range(len(flow)):
        x, _y = next(flow)
        count += len(x)
    return count, time.perf_counter() - started


def run_torchvision(data: Path, tensor_ops: bool) -> tuple[int, float]:
    """One epoch of ImageFolder + v2 transforms through a DataLoader (num_workers=0)."""
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import pil_loader
    from torchvision.transforms import v2

    geometry = [v2.Resize((SIZE, SIZE)),
                v2.RandomAffine(degrees=40, translate=(0.2, 0.2), shear=0.2, scale=(0.8, 1.2)),
                v2.RandomHorizontalFlip()]
    ops = ([v2.ToImage(), *geometry, v2.ToDtype(torch.uint8, scale=True)] if tensor_ops else
           [*geometry, v2.ToImage(), v2.ToDtype(torch.uint8, scale=True)])
    dataset = ImageFolder(str(data), transform=v2.Compose(ops), loader=pil_loader)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    count = 0
    started = time.perf_counter()
    for x, _y in loader:
        count += len(x)
    return count, time.perf_counter() - started


def run_imagefit(data: Path, epochs: int) -> dict:
    return benchmark_loader(data, augment="keras", image_size=SIZE, workers=0, epochs=epochs,
                            batch_size=BATCH)


def make_corpus(out: Path, size: str, n: int, seed: int) -> None:
    if not CORPUS_SCRIPT.is_file():
        sys.exit(f"{CORPUS_SCRIPT} not found; pass --data DIR instead")
    subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(out), "--n", str(n), "--size", size,
                    "--seed", str(seed)], check=True)


def linked_subset(data: Path, out: Path, limit: int, seed: int) -> Path:
    """A folder of symlinks to `limit` seeded files of `data` (same class folders), so every
    loader reads exactly the same files."""
    files = sorted(p for p in data.rglob("*") if p.is_file()
                   and p.suffix.lower() in (".jpg", ".jpeg"))
    if limit < len(files):
        files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(
            len(files), limit, replace=False))]
    for f in files:
        target = out / f.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f.resolve())
    return out


def describe(data: Path) -> str:
    from PIL import Image

    sizes = {}
    for p in sorted(data.rglob("*.jp*g")):
        with Image.open(p) as im:
            key = "x".join(str(v) for v in sorted(im.size, reverse=True))
            sizes[key] = sizes.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="folder of class sub-folders of JPEGs")
    ap.add_argument("--size", default="500x375", help="corpus photo size WxH (without --data)")
    ap.add_argument("--n", type=int, default=400, help="corpus photos (without --data)")
    ap.add_argument("--limit", type=int, help="use this many files of --data (seeded)")
    ap.add_argument("--epochs", type=int, default=2, help="imagefit cached epochs")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs; best is kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory(prefix="loader-vs-peers-") as tmp:
        tmp = Path(tmp)
        if args.data is None:
            data = tmp / "corpus"
            print(f"making {args.n} JPEGs of {args.size} ...", flush=True)
            make_corpus(data, args.size, args.n, args.seed)
        elif args.limit:
            data = linked_subset(args.data, tmp / "subset", args.limit, args.seed)
        else:
            data = args.data
        shapes = describe(data)

        runs: dict[str, list[tuple[int, float]]] = {k: [] for k in (
            "decode", "cold", "cached", "keras", "tv_pil", "tv_tensor")}
        for _ in range(args.repeats):
            result = run_imagefit(data, args.epochs)
            n, s = result["n_images"], result["seconds"]
            runs["decode"].append((n, s["decode"]))
            runs["cold"].append((n, s["cold"]))
            runs["cached"].append((n, sum(s["cached"]) / len(s["cached"])))
            runs["keras"].append(run_keras(data))
            runs["tv_pil"].append(run_torchvision(data, tensor_ops=False))
            runs["tv_tensor"].append(run_torchvision(data, tensor_ops=True))

    best = {k: max(v, key=lambda r: r[0] / r[1]) for k, v in runs.items()}
    rate = {k: n / s for k, (n, s) in best.items()}
    names = {"decode": "imagefit decode only (load_image)",
             "cold": "imagefit cold (decode + augment)",
             "cached": f"imagefit cached (mean of {args.epochs} epochs)",
             "keras": "Keras ImageDataGenerator",
             "tv_pil": "torchvision v2, PIL ops",
             "tv_tensor": "torchvision v2, tensor ops"}
    n_files = best["cold"][0]
    print(f"\n{n_files} JPEGs ({shapes}) -> {SIZE} px, Keras-blog augmentation, batch {BATCH}, "
          f"1 core" + (f", best of {args.repeats}" if args.repeats > 1 else ""))
    print(f"{'':36s}{'images':>7s}{'seconds':>9s}{'img/s':>9s}{'cold/this':>11s}"
          f"{'cached/this':>13s}")
    for key, label in names.items():
        n, s = best[key]
        peer = key in ("keras", "tv_pil", "tv_tensor")
        ratios = (f"{rate['cold'] / rate[key]:10.2f}x{rate['cached'] / rate[key]:12.2f}x"
                  if peer else "")
        print(f"{label:36s}{n:7d}{s:9.2f}{rate[key]:9.1f}{ratios}")
    bars = [("cold >= 5x Keras", rate["cold"] / rate["keras"], 5.0),
            ("cold >= 2x torchvision (PIL ops)", rate["cold"] / rate["tv_pil"], 2.0),
            ("cold >= 2x torchvision (tensor ops)", rate["cold"] / rate["tv_tensor"], 2.0)]
    for text, value, bar in bars:
        print(f"bar {text:38s} {value:6.2f}x  {'met' if value >= bar else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({
            "files": n_files, "shapes": shapes, "image_size": SIZE, "batch_size": BATCH,
            "repeats": args.repeats,
            "images_per_sec": {k: v for k, v in rate.items() if math.isfinite(v)},
            "runs": {k: [{"images": n, "seconds": s} for n, s in v] for k, v in runs.items()},
            "ratios": {"cold_vs_keras": rate["cold"] / rate["keras"],
                       "cold_vs_torchvision_pil": rate["cold"] / rate["tv_pil"],
                       "cold_vs_torchvision_tensor": rate["cold"] / rate["tv_tensor"],
                       "cached_vs_keras": rate["cached"] / rate["keras"],
                       "cached_vs_torchvision_pil": rate["cached"] / rate["tv_pil"],
                       "cached_vs_torchvision_tensor": rate["cached"] / rate["tv_tensor"]},
        }, indent=2))


if __name__ == "__main__":
    main()
