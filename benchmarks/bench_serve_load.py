"""Load test of the demo API: ``--requests`` concurrent searches on loopback against the real server.

Starts ``vlptm serve`` (uvicorn) in a subprocess on a free loopback port, waits for ``/api/health``, then
fires all requests at once from a thread pool (one thread per request up to ``--concurrency``), each a
different query, and reports errors and latency percentiles (from request start to full response body).

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_serve_load.py --index runs/retrieval-bench/index
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SIZES = ["a small", "a large", "two", "three", "one"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon", "diamond"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", required=True, help="index directory (vlptm index)")
    parser.add_argument("--requests", type=int, default=200, help="requests (default 200)")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight at once (default 200)")
    parser.add_argument("--k", type=int, default=8, help="results per search")
    parser.add_argument("--rerank", type=int, default=16, help="server's ITM re-rank depth")
    args = parser.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    log_path = Path(args.index).parent / f"bench-serve-{port}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "vlptm.cli", "serve", "--index", args.index, "--port",
                                   str(port), "--rerank", str(args.rerank), "--device", "cpu"],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait(url, server, log_path)
            queries = [f"{s} {c} {h}" for s, c, h in itertools.product(SIZES, COLOURS, SHAPES)]
            queries = [queries[i % len(queries)] + ("" if i < len(queries) else f" and a {SHAPES[i % 7]}")
                       for i in range(args.requests)]
            barrier = threading.Barrier(min(args.concurrency, args.requests))

            def one(query: str):
                try:
                    barrier.wait(timeout=60)
                except threading.BrokenBarrierError:
                    pass
                t0 = time.perf_counter()
                try:
                    path = "/api/search?" + urllib.parse.urlencode({"q": query, "k": args.k})
                    with urllib.request.urlopen(url + path, timeout=600) as response:
                        body = json.loads(response.read())
                        ok = response.status == 200 and len(body["results"]) == args.k
                        return ok, time.perf_counter() - t0, response.status
                except (urllib.error.URLError, OSError, ValueError) as err:
                    return False, time.perf_counter() - t0, repr(err)

            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=min(args.concurrency, args.requests)) as pool:
                outcomes = list(pool.map(one, queries))
            wall = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    errors = [o for o in outcomes if not o[0]]
    latencies = 1000 * np.array([o[1] for o in outcomes])
    print(f"{args.requests} search requests, {min(args.concurrency, args.requests)} concurrent, on {url} "
          f"(ITM re-rank of the top {args.rerank}, k = {args.k})")
    print(f"errors: {len(errors)}" + (f" (e.g. {errors[0][2]})" if errors else ""))
    print(f"latency ms: p50 {np.percentile(latencies, 50):.0f}, p90 {np.percentile(latencies, 90):.0f}, "
          f"p99 {np.percentile(latencies, 99):.0f}, max {latencies.max():.0f}; wall {wall:.1f}s "
          f"({args.requests / wall:.1f} requests/s)")
    if errors:
        sys.exit(1)


def _wait(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not start within {timeout}s; see {log_path}")


if __name__ == "__main__":
    main()
