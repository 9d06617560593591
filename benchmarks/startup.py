#!/usr/bin/env python3
"""What a short command costs before it does any work: `import imagefit`, `imagefit --help` and
`imagefit predict MODEL one.png` (a warm cache, as on any second call), each a whole process,
time and peak RSS (median of --repeat runs), and whether timm was imported. With
--baseline-src DIR the same commands run on another checkout's `src/` side by side.

    python benchmarks/startup.py [--repeat 5] [--baseline-src /tmp/old/src]

The model is a probe trained (once, 32 images, seconds) on the bundled demo dataset; it is
saved by each side's own code, so each side's model.json is what that side writes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from features_throughput_memory import measure  # noqa: E402

DEMO = ROOT / "examples" / "fashion-mnist-demo"
CLI = "import sys; from imagefit.cli.main import main; sys.exit(main())"
TRAIN = """
import sys
from pathlib import Path
import imagefit
files = sorted(Path({data!r}).rglob("*.png"))
classes = sorted({{p.parent.name for p in files}})[:2]
paths = [p for c in classes for p in sorted(Path({data!r}, c).glob("*.png"))[:16]]
clf = imagefit.ImageClassifier(mode="probe", image_size=96, epochs=2, time_budget="none")
clf.fit([str(p) for p in paths], [p.parent.name for p in paths]).save({out!r})
"""
TIMM_CHECK = """
import sys, imagefit
imagefit.load_model({model!r}).predict_files([{image!r}])
print("timm" in sys.modules)
"""


def side(src: Path, tmp: Path, name: str, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), IMAGEFIT_CACHE=str(tmp / f"cache-{name}"))
    model = tmp / f"model-{name}"
    image = str(next((DEMO / "test").rglob("*.png")))
    subprocess.run([sys.executable, "-c", TRAIN.format(data=str(DEMO / "train"),
                                                      out=str(model))],
                   env=env, check=True, capture_output=True)
    commands = {"import imagefit": [sys.executable, "-c", "import imagefit"],
                "imagefit --help": [sys.executable, "-c", CLI, "--help"],
                "imagefit predict (1 image)": [sys.executable, "-c", CLI, "predict",
                                               str(model), image, "--quiet"]}
    measure(commands["imagefit predict (1 image)"], env)  # the first call fills the cache
    out = {}
    for label, cmd in commands.items():
        runs = [measure(cmd, env) for _ in range(repeat)]
        out[label] = (statistics.median(r[0] for r in runs),
                      statistics.median(r[1] for r in runs))
    check = subprocess.run([sys.executable, "-c", TIMM_CHECK.format(model=str(model),
                                                                   image=image)],
                           env=env, check=True, capture_output=True, text=True)
    out["predict imports timm"] = check.stdout.strip().splitlines()[-1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline-src", type=Path, help="another checkout's src/ to compare")
    args = ap.parse_args()
    sides = {"this": ROOT / "src"}
    if args.baseline_src:
        sides = {"baseline": args.baseline_src.resolve(), **sides}
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: side(src, Path(tmp), name, args.repeat) for name, src in sides.items()}
    print(f"{'':30}" + "".join(f"{name:>22}" for name in results))
    for label in next(iter(results.values())):
        cells = []
        for result in results.values():
            value = result[label]
            cells.append(f"{value[0]:8.2f} s {value[1]:7.0f} MB" if isinstance(value, tuple)
                         else value)
        print(f"{label:30}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
