#!/usr/bin/env python3
"""Reading a large table of image paths (issue 11): `from_table` on a CSV of `--rows` rows
(path, label, patient, split) with `check_files=False` (the files need not exist: the table is
trusted and the pre-flight checks each file later), beside pandas' `read_csv` of the same file
as a reference for the parse alone. Each runs in a fresh process and is measured after its
imports: wall time and the growth of peak RSS, after reading and (imagefit) after the grouped
split of the resulting index (hashes faked from the paths).

    python benchmarks/table_scan.py [--rows 1000000]

Linux or macOS (resource.getrusage); pandas is optional (its row is left out without it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
what, table = sys.argv[1], sys.argv[2]
if what == "imagefit":  # imports first: the figures are the table's, not torch's
    from imagefit.data.tables import from_table
else:
    import pandas as pd
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if what == "imagefit":
    t0 = time.perf_counter()
    index = from_table(table, group_col="patient", check_files=False)
    read = time.perf_counter() - t0
    read_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = index.__class__(index.paths, index.labels, index.classes, index.subsets,
                            index.paths.astype("<U64"), index.report, groups=index.groups)
    t0 = time.perf_counter()
    train, val = index.split(0.2, seed=0)
    split = time.perf_counter() - t0
    extra = {"rows": len(index), "classes": len(index.classes),
             "peak_rss_growth_after_read_mb": round((read_peak - before) / 1024),
             "split_s": round(split, 2),
             "val_rows": len(val), "arrays_mb": round(sum(a.nbytes for a in (
                 index.paths, index.labels, index.groups, index.subsets)) / 2**20, 1)}
else:
    t0 = time.perf_counter()
    frame = pd.read_csv(table)
    read = time.perf_counter() - t0
    extra = {"rows": len(frame)}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"read_s": round(read, 2), "peak_rss_growth_mb": round((peak - before) / 1024),
                  **extra}))
"""


def write_table(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, rows)
    with open(path, "w", encoding="utf-8") as f:
        f.write("path,label,patient,split\n")
        for i in range(rows):
            split = "test" if i % 20 == 0 else "train"
            f.write(f"images/{i // 1000:04d}/img_{i:08d}.jpg,class_{labels[i]:03d},"
                    f"P{i // 7:07d},{split}\n")


def measure(what: str, table: Path) -> dict | None:
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(table)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        print(f"{what}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table.csv"
        start = time.perf_counter()
        write_table(table, args.rows)
        print(f"table: {args.rows:,} rows, {table.stat().st_size / 2**20:.0f} MB, written in "
              f"{time.perf_counter() - start:.1f} s")
        results = {"imagefit from_table (check_files=False)": measure("imagefit", table)}
        try:
            import pandas  # noqa: F401
            results["pandas read_csv (parse only)"] = measure("pandas", table)
        except ImportError:
            pass
    width = max(map(len, results))
    for name, r in results.items():
        if r is None:
            continue
        more = ", ".join(f"{k} {v}" for k, v in r.items()
                         if k not in ("read_s", "peak_rss_growth_mb"))
        print(f"{name:<{width}}  read {r['read_s']:6.2f} s  peak RSS +{r['peak_rss_growth_mb']:5d} "
              f"MB  ({more})")


if __name__ == "__main__":
    main()
