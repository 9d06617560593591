#!/usr/bin/env python3
"""A bounded load test of `imagefit serve` on loopback: start the service, send N requests
(default 500) from C concurrent clients (default 16), report status counts, p50/p99 latency and
requests per second. Only 200 and 429 are acceptable statuses. Stops by itself.

    python benchmarks/serve_load.py runs/demo [--images DIR] [--requests 500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="run or model folder")
    ap.add_argument("--images", default=str(ROOT / "examples/fashion-mnist-demo/test"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in
                   (".png", ".jpg", ".jpeg"))[:200]
    bodies = [f.read_bytes() for f in files]
    port = free_port()
    server = subprocess.Popen([str(VENV_BIN / "imagefit"), "serve", args.run, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            sys.exit("the service did not start")

        def one(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            try:
                r = httpx.post(f"{url}/predict", content=bodies[i % len(bodies)], timeout=30,
                               headers={"Content-Type": "application/octet-stream"})
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            return status, time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    statuses = Counter(s for s, _ in results)
    ok = np.array([t for s, t in results if s == 200]) * 1000
    print(f"{args.requests} requests, {args.concurrency} concurrent, {len(bodies)} distinct "
          f"images from {args.images}")
    print(f"statuses: {dict(statuses)}")
    print(f"requests/s: {args.requests / elapsed:.1f} (all), {len(ok) / elapsed:.1f} (200 only)")
    if len(ok):
        print(f"latency of 200s: p50 {np.percentile(ok, 50):.0f} ms, p99 "
              f"{np.percentile(ok, 99):.0f} ms")
    unexpected = {s: n for s, n in statuses.items() if s not in (200, 429)}
    print("errors other than 429: " + (str(unexpected) if unexpected else "none"))
    sys.exit(1 if unexpected else 0)


if __name__ == "__main__":
    main()
