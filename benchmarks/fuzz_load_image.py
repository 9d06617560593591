#!/usr/bin/env python3
"""Byte-mutation fuzzing of `load_image` at scale: the harness of tests/test_fuzz.py
(tests/fuzz_runner.py) on more cases, with its figures.

    python benchmarks/fuzz_load_image.py [--cases 20000] [--seed 0] [--workers 2] [--first 0]

Prints the cases run, the time and cases per second, the outcome of each decode (ok, or the
ImageLoadError reason), the peak resident memory per worker and the slowest and most
memory-hungry cases, then every finding (an exception other than ImageLoadError, a decode over
2 s of CPU, a crash, a case adding over 1 GB) with the command that rebuilds it. Exit status 1 when
there is a finding. The default CI run is the first 5,000 cases of seed 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fuzz_runner  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="master seed (CI uses 0)")
    parser.add_argument("--first", type=int, default=0, help="number of the first case")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--keep", help="keep the workers' result files in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(args.keep or tmp)
        print(f"fuzzing load_image: cases {args.first:,}..{args.first + args.cases - 1:,} of "
              f"seed {args.seed}, {args.workers} worker processes, "
              f"{len(fuzz_runner.seed_images())} seed images x {len(fuzz_runner.MUTATIONS)} "
              f"mutations; per decode {fuzz_runner.SOFT_TIMEOUT_S:g} s of CPU, per worker "
              f"{fuzz_runner.AS_HEADROOM_MB} MB address space over its baseline, per case "
              f"{fuzz_runner.RSS_BUDGET_MB} MB resident", flush=True)
        report = fuzz_runner.run_cases(args.cases, master_seed=args.seed, first=args.first,
                                       workers=args.workers, work_dir=work_dir)
    print(report.summary())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
