#!/usr/bin/env python3
"""Small-data bars on Fashion-MNIST (apt-get install dataset-fashion-mnist), all evaluated on the
full 10,000-image test set:

    python benchmarks/small_data_finetune.py balanced     # 100/class: probe vs augment + finetune
    python benchmarks/small_data_finetune.py imbalanced   # two classes cut to 10: --balance on/off
    python benchmarks/small_data_finetune.py scratch      # full 60k, --mode scratch (simple_cnn)

Each configuration runs `imagefit.train_run` exactly as `imagefit train` does (seeded split, 20%
held out for early stopping and calibration), then `imagefit.evaluate` on the test folder.
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

SMALL_CLASSES = (0, 6)  # T-shirt/top and Shirt: the pair most easily confused


def folders(tmp: Path, counts: tuple[int, ...], seed: int) -> tuple[Path, Path]:
    import make_demo_dataset as fm

    src = Path("/usr/share/datasets/fashion-mnist")
    if not src.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install dataset-fashion-mnist")
    images, labels = fm.load_split(src, "train")
    rng = np.random.default_rng(seed)
    fm.write_split(tmp, "train", images, fm.sample_indices(labels, counts, rng))
    test_images, test_labels = fm.load_split(src, "test")
    fm.write_split(tmp, "test", test_images, [np.flatnonzero(test_labels == c) for c in range(10)])
    return tmp / "train", tmp / "test"


def run(name: str, train: Path, test: Path, tmp: Path, **settings) -> dict:
    started = time.perf_counter()
    config = imagefit.TrainConfig(data=str(train), out=str(tmp / name), report=False,
                                  cache_dir=str(tmp / "cache"), **settings)
    result = imagefit.train_run(config, progress=False)
    train_seconds = time.perf_counter() - started
    metrics = imagefit.evaluate(result.classifier, imagefit.scan_folder(test)).metrics
    clf = result.classifier
    return {"name": name, "metrics": metrics, "train_seconds": train_seconds,
            "mode": clf.mode_, "balance": clf.balance_, "epochs": len(clf.history_),
            "best_epoch": clf.best_epoch_, "last": clf.history_[-1] if clf.history_ else {}}


def table(rows: list[dict], small: list[str]) -> None:
    head = f"{'configuration':44s}{'acc':>8s}{'bal acc':>9s}{'ECE':>7s}{'train s':>9s}"
    head += "".join(f"{'recall ' + c[:8]:>16s}" for c in small)
    print(head)
    for r in rows:
        m = r["metrics"]
        line = (f"{r['name']:44s}{m['accuracy']:8.4f}{m['balanced_accuracy']:9.4f}"
                f"{m['ece']:7.3f}{r['train_seconds']:9.0f}")
        line += "".join(f"{m['per_class'][c]['recall']:16.3f}" for c in small)
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", choices=("balanced", "imbalanced", "scratch"))
    ap.add_argument("--image-size", type=int, help="default: the backbone's own (224), as "
                    "`imagefit train` with no options")
    ap.add_argument("--time-budget", type=float, default=15.0, help="minutes per fine-tune run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", default="auto", help="augmentation of the fine-tune and "
                    "scratch runs (default auto: what `imagefit train` chooses)")
    args = ap.parse_args()
    size, budget = args.image_size, args.time_budget
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.variant == "scratch":
            counts = (6000,) * 10
        elif args.variant == "balanced":
            counts = (100,) * 10
        else:
            counts = tuple(10 if c in SMALL_CLASSES else 100 for c in range(10))
        train, test = folders(tmp / "fm", counts, args.seed)
        size = 32 if args.variant == "scratch" else size
        print(f"Fashion-MNIST {args.variant}: {sum(counts):,} training images "
              f"({'/'.join(map(str, sorted(set(counts))))} per class), 10,000 test images, "
              f"{size or 'default'} px, 2 threads")
        common = dict(image_size=size, seed=args.seed)
        if args.variant == "balanced":
            rows = [run("probe (frozen features + head)", train, test, tmp, mode="probe", **common),
                    run(f"finetune, augment {args.augment}, budget {budget:g} min", train, test,
                        tmp, mode="finetune", augment=args.augment, time_budget=budget,
                        **common)]
            small = []
        elif args.variant == "imbalanced":
            rows = []
            for balance in ("none", "weights", "sampler"):
                rows.append(run(f"finetune, --balance {balance}", train, test, tmp,
                                mode="finetune", balance=balance, augment=args.augment,
                                time_budget=budget, **common))
            import make_demo_dataset as fm

            small = [fm.CLASS_NAMES[c] for c in SMALL_CLASSES]  # Fashion-MNIST label order
        else:
            rows = [run(f"scratch simple_cnn, augment {args.augment}, 32 px", train, test, tmp,
                        mode="scratch", augment=args.augment, image_size=32, epochs=40,
                        batch_size=128,
                        time_budget=budget, seed=args.seed)]
            small = []
        table(rows, small)
        for r in rows:
            last = r["last"]
            print(f"  {r['name']}: mode {r['mode']}, balance {r['balance']}, "
                  f"{r['epochs']} epochs in total; best epoch {r['best_epoch']} of its stage; "
                  f"last epoch: train loss {last.get('train_loss', float('nan')):.3f}, val "
                  f"accuracy {last.get('val_accuracy', float('nan')):.3f}, "
                  f"{last.get('seconds', 0):.0f} s")


if __name__ == "__main__":
    main()
