#!/usr/bin/env python3
"""A bounded load test of `imagefit serve` on loopback: start the service, send N requests
(default 500) from C concurrent clients (default 16), report status counts, p50/p99 latency and
requests per second. Only 200 and 429 are acceptable statuses. Stops by itself.

    python benchmarks/serve_load.py runs/demo [--images DIR] [--requests 500]
        [--concurrency 16 48] [--max-batch 1 16] [--max-queue 64]

With several --max-batch values, one service per value runs in turn on the same requests:
`--max-batch 1` is the service without micro-batching (each request through the model alone).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
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


def load(run: str, bodies: list[bytes], requests: int, concurrency: int,
         serve_args: list[str]) -> dict:
    """Start `imagefit serve RUN *serve_args`, send the requests, stop it; the figures."""
    port = free_port()
    server = subprocess.Popen([str(VENV_BIN / "imagefit"), "serve", run, "--port", str(port),
                               *serve_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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

        local = threading.local()

        def one(i: int) -> tuple[int, float]:
            # One keep-alive connection per client thread, as a real client keeps: a new
            # httpx client per request spends more CPU on itself than the service spends.
            client = getattr(local, "client", None) or httpx.Client(timeout=30)
            local.client = client
            started = time.perf_counter()
            try:
                r = client.post(f"{url}/predict", content=bodies[i % len(bodies)],
                                headers={"Content-Type": "application/octet-stream"})
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            return status, time.perf_counter() - started

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    statuses = Counter(s for s, _ in results)
    ok = np.array([t for s, t in results if s == 200]) * 1000
    return {"statuses": dict(statuses), "rps": len(ok) / elapsed,
            "p50": float(np.percentile(ok, 50)) if len(ok) else float("nan"),
            "p99": float(np.percentile(ok, 99)) if len(ok) else float("nan"),
            "unexpected": {s: n for s, n in statuses.items() if s not in (200, 429)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="run or model folder")
    ap.add_argument("--images", default=str(ROOT / "examples/fashion-mnist-demo/test"))
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[16],
                    help="one service per value, side by side (1 = one request at a time)")
    ap.add_argument("--max-queue", type=int, default=16, help="the service's --max-queue "
                    "(requests beyond --max-concurrency + this get 429)")
    args = ap.parse_args()
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in
                   (".png", ".jpg", ".jpeg"))[:200]
    bodies = [f.read_bytes() for f in files]
    print(f"{args.requests} requests per row, {len(bodies)} distinct images from {args.images}")
    print(f"{'concurrent':>10} {'max-batch':>9} {'200/s':>7} {'p50 ms':>7} {'p99 ms':>7}  "
          f"statuses")
    failed = False
    for concurrency in args.concurrency:
        base = None
        for max_batch in args.max_batch:
            r = load(args.run, bodies, args.requests, concurrency,
                     ["--max-batch", str(max_batch), "--max-queue", str(args.max_queue)])
            base = base or r["rps"]
            print(f"{concurrency:>10} {max_batch:>9} {r['rps']:7.1f} {r['p50']:7.0f} "
                  f"{r['p99']:7.0f}  {r['statuses']}  ({r['rps'] / base:.2f}x the first)")
            failed = failed or bool(r["unexpected"])
    print("errors other than 429: " + ("some (see statuses)" if failed else "none"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
