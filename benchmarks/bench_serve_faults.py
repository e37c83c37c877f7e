"""``/health`` latency of ``tda serve`` while slow or hostile requests are in flight.

    .venv/bin/python benchmarks/bench_serve_faults.py [--generate 192] [--ig-steps 128]

Index: the attribution benchmark's (documentation topics, default-shaped builtin model;
built under build/bench-serve-faults). Two real ``tda serve`` processes on 127.0.0.1,
one with the default ``--max-request-bytes`` (1 MiB) and one with 16 MiB. For each
scenario this process sends the slow request(s) while another process polls ``GET
/health`` every 10 ms (one keep-alive connection; apart, so that the load generator's own
threads cannot delay the polls); reports /health p50 / p99 / max latency, the
number of polls and of polls over 50 ms, and each slow request's status and time:

* ``idle``: nothing else running (2 s);
* ``attribution``: ``POST /api/attribute`` generating ``--generate`` tokens with
  integrated gradients (``--ig-steps``) and k=100;
* ``keys_1MiB`` / ``keys_16MiB``: the issue's body, 500,000 unknown keys (6.9 MB),
  refused by size (1 MiB server) or by the key bound (16 MiB server), 5 times;
* ``search_burst``: 16 concurrent ``GET /api/search`` on the 1 MiB server (queued for the
  one model), 3 rounds.

Writes build/serve_faults_bench.json. Before this work the issue measured /health at
5.6 s behind the 500k-key body (answered with a 34 MB error after 5.1 s).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """A ``tda serve`` process on a free port, once /health answers."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tda.jobs.cli", "serve", str(root), "--port", str(port),
         "--device", "cpu", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"tda serve did not start: {proc.stderr.read()}")
        time.sleep(0.2)


def _poll(base: str, stop, conn) -> None:
    """In its own process (so the load this one generates cannot delay it): GET /health
    every 10 ms on one keep-alive connection until ``stop`` is set; send the latencies."""
    import httpx

    ms: list[float] = []
    with httpx.Client(timeout=60) as client:
        client.get(f"{base}/health")  # connect first: time the answers, not the handshake
        conn.send("ready")
        while not stop.is_set():
            t = time.perf_counter()
            assert client.get(f"{base}/health").status_code == 200
            ms.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)
    conn.send(ms)


def _during(base: str, work, min_seconds: float = 0.0) -> dict:
    """Poll /health every 10 ms (another process) while ``work()`` runs here -> latency
    figures and what ``work`` returned."""
    import multiprocessing

    import numpy as np

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    here, there = ctx.Pipe()
    poller = ctx.Process(target=_poll, args=(base, stop, there))
    poller.start()
    assert here.recv() == "ready"
    start = time.perf_counter()
    result = work()
    work_s = time.perf_counter() - start
    time.sleep(max(0.0, min_seconds - work_s))
    stop.set()
    ms = here.recv()
    poller.join()
    return {
        "health_polls": len(ms),
        "health_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "health_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "health_max_ms": round(max(ms), 1),
        "health_over_50ms": sum(m > 50 for m in ms),
        "work_s": round(work_s, 3),
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-serve-faults"))
    parser.add_argument("--generate", type=int, default=192)
    parser.add_argument("--ig-steps", type=int, default=128)
    args = parser.parse_args()

    import httpx
    from bench_attribute import build_index

    root = build_index(Path(args.out))
    small, small_base = _serve(root)
    roomy, roomy_base = _serve(root, "--max-request-bytes", "16MiB")
    keys = json.dumps(
        {"prompt": "a", "output": "b", **{f"k{i}": 0 for i in range(500_000)}}
    ).encode()
    slow_body = {
        "prompt": "The for statement is used to iterate over the elements of a sequence",
        "generate": args.generate,
        "input_attribution": "ig",
        "ig_steps": args.ig_steps,
        "k": 100,
    }

    def attribution() -> dict:
        r = httpx.post(f"{small_base}/api/attribute", json=slow_body, timeout=600)
        return {"status": r.status_code, "answer_bytes": len(r.content)}

    def huge(base: str):
        def send() -> dict:
            codes, sizes = [], []
            for _ in range(5):
                r = httpx.post(
                    f"{base}/api/attribute", content=keys, timeout=120,
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                codes.append(r.status_code)
                sizes.append(len(r.content))
            return {"statuses": sorted(set(codes)), "answer_bytes": max(sizes),
                    "body_bytes": len(keys)}  # fmt: skip

        return send

    def burst() -> dict:
        def one(i: int) -> int:
            params = {"text": f"iterate over a sequence {i}", "k": 10}
            return httpx.get(f"{small_base}/api/search", params=params, timeout=120).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = [c for _ in range(3) for c in pool.map(one, range(16))]
        return {"statuses": {str(c): codes.count(c) for c in sorted(set(codes))}}

    try:
        scenarios = {
            "idle": _during(small_base, dict, min_seconds=2.0),
            "attribution": _during(small_base, attribution),
            "keys_1MiB": _during(small_base, huge(small_base)),
            "keys_16MiB": _during(roomy_base, huge(roomy_base)),
            "search_burst": _during(small_base, burst),
        }
    finally:
        for proc in (small, roomy):
            proc.terminate()
            proc.wait(timeout=30)
    report = {
        "machine": machine(),
        "generate": args.generate,
        "ig_steps": args.ig_steps,
        "scenarios": scenarios,
        "health_max_ms_overall": max(s["health_max_ms"] for s in scenarios.values()),
        "health_p50_ms_median": statistics.median(s["health_p50_ms"] for s in scenarios.values()),
    }
    (REPO / "build" / "serve_faults_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
