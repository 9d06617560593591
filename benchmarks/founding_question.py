"""The founding question, measured: "For one class I have 500 images; for the other, almost a
million. Each epoch I want all 500, augmented, and 500 different ones of the rest."

    .venv/bin/python benchmarks/founding_question.py [--large 200000 20000] [--small 500]
        [--epochs 3] [--baseline-src /tmp/old/src] [--corpus DIR]

Writes a corpus of small photo-like JPEGs (random crops of scikit-image's photographs, 160x120,
distinct bytes) with a class of `--small` images and one of `--large` (the largest of the
`--large` sizes; smaller ones are a prefix of it, linked), then runs, each in a fresh process
with an empty cache:

    imagefit train CORPUS --mode finetune --balance sampler --max-per-class 500 --epochs 3
                          --time-budget none --no-report

and prints, side by side: seconds to the first training step, total seconds, bytes written to
the cache (ONNX graphs aside), and the peak summed proportional set size (PSS) of the process
tree. With --baseline-src, another
checkout's src/ runs the same command on the smallest `--large` size (its cost grows with the
large class; on the largest it takes hours).

Needs scikit-image and psutil (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
SIZE = (160, 120)

# Runs the CLI, noting when the first training step starts (the engine's `_train_step`).
RUNNER = """
import sys, time
import imagefit.train.engine as engine
step = engine._train_step
def first(*args, **kwargs):
    if not hasattr(first, "at"):
        first.at = time.time()
        open(sys.argv[1], "w").write(repr(first.at))
    return step(*args, **kwargs)
engine._train_step = first
from imagefit.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def _write_part(job: tuple[str, int, int, int]) -> None:
    from PIL import Image
    import skimage.data as d

    folder, first, count, seed = job
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(d, n)()).convert("RGB")
              for n in ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field")]
    for i in range(first, first + count):
        src = photos[rng.integers(len(photos))]
        width, height = src.size
        w, h = int(rng.integers(width // 3, width + 1)), int(rng.integers(height // 3, height + 1))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        image = src.crop((x, y, x + w, y + h)).resize(SIZE, Image.BILINEAR)
        image.save(os.path.join(folder, f"{i:07d}.jpg"), quality=85)


def write_class(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = len(os.listdir(folder))
    if have >= n:
        return
    step = 5000
    jobs = [(str(folder), first, min(step, n - first), seed * 1000 + first // step)
            for first in range(have, n, step)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_part, jobs))


def corpus_of(root: Path, small: int, large: int, full: Path) -> Path:
    """`root` with `small` images of class `few` and the first `large` of `full`'s `many`."""
    if (root / "many").is_dir() and len(os.listdir(root / "many")) == large:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "many").mkdir(parents=True)
    shutil.copytree(full / "few", root / "few", copy_function=os.link)
    for name in sorted(os.listdir(full / "many"))[:large]:
        os.link(full / "many" / name, root / "many" / name)
    return root


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(src: Path, data: Path, work: Path, epochs: int, per_class: int) -> dict:
    cache, run, marker = work / "cache", work / "run", work / "first-step"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(src), IMAGEFIT_CACHE=str(cache))
    cmd = [sys.executable, "-c", RUNNER, str(marker), "train", str(data), "--out", str(run),
           "--mode", "finetune", "--balance", "sampler", "--max-per-class", str(per_class),
           "--epochs", str(epochs), "--time-budget", "none", "--no-report", "--quiet"]
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:  # proportional set sizes: pages that forked workers share are counted once
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_full_info().pss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.25)
    total = time.time() - started
    if proc.returncode:
        sys.exit(f"{src} failed: {proc.stderr.read().decode()[-3000:]}")
    first = float(marker.read_text()) - started
    onnx = folder_bytes(cache / "onnx") if (cache / "onnx").is_dir() else 0
    return {"first": first, "total": total, "cache": folder_bytes(cache) - onnx,
            "peak": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", type=int, nargs="+", default=[200_000, 20_000])
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--max-per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    ap.add_argument("--corpus", type=Path, help="keep the generated corpus here (reused)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="founding-"))
    full = args.corpus or tmp / "corpus"
    started = time.time()
    write_class(full / "few", args.small, seed=1)
    write_class(full / "many", max(args.large), seed=2)
    print(f"corpus: {args.small:,} + {max(args.large):,} JPEGs of {SIZE[0]}x{SIZE[1]} in "
          f"{full} ({time.time() - started:.0f} s to make)")
    sides = [("this checkout", REPO / "src", n) for n in sorted(args.large, reverse=True)]
    if args.baseline_src:
        sides.append(("baseline", args.baseline_src.resolve(), min(args.large)))
    rows = []
    for name, src, large in sides:
        data = corpus_of(tmp / f"data-{large}", args.small, large, full)
        result = measure(src, data, tmp / "work", args.epochs, args.max_per_class)
        rows.append((name, large, result))
        print(f"  {name}, {args.small:,} + {large:,}: {result}", flush=True)
    print(f"\nimagefit train --mode finetune --balance sampler --max-per-class "
          f"{args.max_per_class} --epochs {args.epochs}; {args.small:,} + N images, 2 classes")
    print(f"{'':<16}{'N':>9}{'first step s':>14}{'total s':>9}{'cache MB':>10}{'peak MB':>9}")
    for name, large, r in rows:
        print(f"{name:<16}{large:>9,}{r['first']:>14.1f}{r['total']:>9.1f}"
              f"{r['cache'] / 2**20:>10.0f}{r['peak']:>9.0f}")
    shutil.rmtree(tmp / "work", ignore_errors=True)
    for large in args.large:
        shutil.rmtree(tmp / f"data-{large}", ignore_errors=True)
    if not args.corpus:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
