"""Load test of ``tda serve`` on loopback: latency under concurrent clients.

    .venv/bin/python benchmarks/bench_serve.py [--clients 8] [--requests 200]

Index: the attribution benchmark's (documentation topics, default-shaped builtin model;
built under build/bench-serve). A real uvicorn server on 127.0.0.1; ``--clients``
threads send ``--requests`` requests in total, a third each of
``POST /api/attribute`` (64-token prompt, 64-token output, default gradient x input),
``GET /api/search`` and ``GET /api/chunks/{id}``. Reports p50 / p99 latency per endpoint
and overall, requests/s, and errors (must be 0). Writes build/serve_bench.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-serve"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    from pydoc_data.topics import topics

    import httpx
    import numpy as np
    import uvicorn
    from bench_attribute import build_index

    from tda.jobs.serve import create_app

    root = build_index(Path(args.out))
    app = create_app(str(root), device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    texts = [v for _, v in sorted(topics.items()) if len(v) > 3000]
    found = httpx.get(f"{base}/api/search", params={"text": "the", "k": 50}, timeout=60)
    chunk_ids = [h["chunk"]["chunk_id"] for h in found.json()["hits"]]

    def request(i: int):
        text = texts[i % len(texts)]
        kind = ("attribute", "search", "chunk")[i % 3]
        start = time.perf_counter()
        if kind == "attribute":
            body = {"prompt": text[1000:1300], "output": text[1300:1600]}
            r = httpx.post(f"{base}/api/attribute", json=body, timeout=120)
        elif kind == "search":
            r = httpx.get(f"{base}/api/search", params={"text": text[:200], "k": 10}, timeout=120)
        else:
            r = httpx.get(f"{base}/api/chunks/{chunk_ids[i % len(chunk_ids)]}", timeout=120)
        return kind, r.status_code, (time.perf_counter() - start) * 1000

    for i in range(6):  # warm up
        request(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = list(pool.map(request, range(args.requests)))
    wall = time.perf_counter() - start
    server.should_exit = True

    def stats(ms: list[float]) -> dict:
        return {
            "n": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "mean_ms": round(statistics.mean(ms), 1),
        }

    report = {
        "machine": machine(),
        "clients": args.clients,
        "requests": args.requests,
        "errors": sum(1 for _, code, _ in results if code != 200),
        "requests_per_s": round(args.requests / wall, 1),
        "all": stats([ms for _, _, ms in results]),
        **{
            kind: stats([ms for k, _, ms in results if k == kind])
            for kind in ("attribute", "search", "chunk")
        },
    }
    (REPO / "build" / "serve_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
