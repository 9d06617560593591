"""What opening a large folder again costs: the scan plus a lazy pre-flight (read and hash every
file), first with an empty cache, then unchanged (hashes remembered: files are only stat'ed),
then with one file changed. Each in a fresh process.

    .venv/bin/python benchmarks/rescan.py FOLDER [--make 1000000] [--baseline-src /tmp/old/src]

FOLDER: class sub-folders of images (benchmarks/founding_question.py --corpus DIR makes one;
with --make N, this script makes an ImageNet-like tree of N tiny distinct PNG files there, 1,000
a class folder, unless FOLDER exists).
With --baseline-src, another checkout's src/ runs the same steps (one without remembered hashes
re-reads every file each time).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEP = """
import json, resource, sys, time
from imagefit._fileio import cache_folder
from imagefit.data.audit import preflight
from imagefit.data.sources import open_dataset
started = time.perf_counter()
index = open_dataset(sys.argv[1])
scanned = time.perf_counter()
options = {"strategy": "lazy"}
try:
    from imagefit.data.known_hashes import KnownHashes
    options["known"] = KnownHashes.for_folder(cache_folder(), sys.argv[1])
except ImportError:  # a checkout from before: no lazy pre-flight, no remembered hashes
    options = {}
checked = preflight(index, **options)
done = time.perf_counter()
print(json.dumps({"files": len(index), "scan": scanned - started, "preflight": done - scanned,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def step(src: Path, folder: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), IMAGEFIT_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-c", STEP, str(folder)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def make_tree(folder: Path, n: int) -> None:
    """n distinct 8 x 8 PNG files (a counter after the image's end), 1,000 a class folder."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 30)).save(buffer, "PNG")
    for i in range(n):
        cls = folder / f"n{i // 1000:08d}"
        if i % 1000 == 0:
            cls.mkdir(parents=True)
        (cls / f"{cls.name}_{i:08d}.png").write_bytes(buffer.getvalue() + i.to_bytes(4, "little"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--make", type=int, metavar="N")
    ap.add_argument("--baseline-src", type=Path)
    args = ap.parse_args()
    if args.make and not args.folder.exists():
        make_tree(args.folder, args.make)
    sides = [("this checkout", REPO / "src")]
    if args.baseline_src:
        sides.append(("baseline", args.baseline_src.resolve()))
    some_file = next(p for p in sorted(args.folder.rglob("*")) if p.is_file())
    original = some_file.read_bytes()
    rows = []
    try:
        for name, src in sides:
            cache = Path(tempfile.mkdtemp(prefix="rescan-"))
            for what in ("first", "unchanged", "one file changed"):
                if what == "one file changed":
                    some_file.write_bytes(original + b"\0")  # bytes after the image's end
                rows.append((name, what, step(src, args.folder, cache)))
                print(rows[-1], flush=True)
            some_file.write_bytes(original)
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        some_file.write_bytes(original)
    print(f"\n{rows[0][2]['files']:,} files; scan + pre-flight (lazy where the checkout has it)")
    print(f"{'':<16}{'':<18}{'scan s':>8}{'pre-flight s':>14}{'peak MB':>9}")
    for name, what, r in rows:
        print(f"{name:<16}{what:<18}{r['scan']:>8.1f}{r['preflight']:>14.1f}{r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
