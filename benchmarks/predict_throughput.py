#!/usr/bin/env python3
"""Batch prediction throughput, whole processes measured in one run: `imagefit predict` on N
photos (500x375 JPEGs) vs a hand-written eager PyTorch loop over the same trained network
(PIL decode + resize, batch 64, 2 threads), both writing a CSV.

    python benchmarks/predict_throughput.py [--n 1000]

The model is a probe trained on a small photo corpus first (labels carry no meaning: this
measures speed). Needs scikit-image and psutil (pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from features_throughput_memory import CORPUS_SCRIPT, VENV_BIN, measure  # noqa: E402

EAGER = """
import csv, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
import imagefit
torch.set_num_threads(2)
clf = imagefit.load_model({run!r})
net, prep = clf.net_.eval(), clf.preprocessing_
mean = torch.tensor(prep.mean).view(1, 3, 1, 1); std = torch.tensor(prep.std).view(1, 3, 1, 1)
paths = sorted(str(p) for p in Path({data!r}).rglob("*.jpg"))
with open({out!r}, "w", newline="") as f:
    w = csv.writer(f)
    for s in range(0, len(paths), 64):
        batch = [np.asarray(Image.open(p).convert("RGB").resize((prep.image_size,) * 2, Image.BILINEAR))
                 for p in paths[s:s + 64]]
        x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            p = torch.softmax(net(x) / net.temperature, 1).numpy()
        for path, row in zip(paths[s:s + 64], p):
            w.writerow([path, clf.classes_[int(row.argmax())], float(row.max())])
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, IMAGEFIT_CACHE=str(tmp / "cache"))
        subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(tmp / "train"), "--n", "200"],
                       check=True)
        subprocess.run([str(VENV_BIN / "imagefit"), "train", str(tmp / "train"), "--out",
                        str(tmp / "run"), "--quiet", "--epochs", "5", "--mode", "probe"],
                       check=True, env=env)
        data = tmp / "photos"
        subprocess.run([sys.executable, str(CORPUS_SCRIPT), str(data), "--n", str(args.n),
                        "--seed", "1"], check=True)
        ours = measure([str(VENV_BIN / "imagefit"), "predict", str(tmp / "run"), str(data),
                        "--out", str(tmp / "ours.csv"), "--quiet"], env)
        eager = measure([sys.executable, "-c", EAGER.format(run=str(tmp / "run"), data=str(data),
                                                              out=str(tmp / "eager.csv"))], env)
    print(f"{'':40s}{'images':>8s}{'seconds':>10s}{'img/s':>9s}{'peak MB':>10s}")
    for name, (seconds, peak) in (("imagefit predict (ONNX Runtime)", ours),
                                  ("eager PyTorch loop (2 threads)", eager)):
        print(f"{name:40s}{args.n:8d}{seconds:10.1f}{args.n / seconds:9.1f}{peak:10.0f}")
    print(f"imagefit predict: {eager[0] / ours[0]:.2f}x the eager loop (aim: >= 2x)")


if __name__ == "__main__":
    main()
