"""What opening a large folder again costs: the scan plus a lazy pre-flight (read and hash every
file), first with an empty cache, then unchanged (hashes remembered: files are only stat'ed),
then with one file changed. Each in a fresh process.

    .venv/bin/python benchmarks/rescan.py FOLDER [--baseline-src /tmp/old/src]

FOLDER: class sub-folders of images (benchmarks/founding_question.py --corpus DIR makes one).
With --baseline-src, another checkout's src/ runs the same steps (one without remembered hashes
re-reads every file each time).
"""

from __future__ import annotations

import argparse
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
from imagefit.data.index import scan_class_folders
started = time.perf_counter()
index = scan_class_folders(sys.argv[1])
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--baseline-src", type=Path)
    args = ap.parse_args()
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
