"""What ``bound_heap`` (fixed glibc malloc thresholds) costs and saves in the embed stage
on CPU: alternated runs with and without it, embed time, peak RSS and the RSS level over
the run (sampled every second).

    .venv/bin/python benchmarks/bench_memory.py      # makes the roots and the model (once)
    .venv/bin/python benchmarks/bench_heap.py [--root ROOT] [--repeat 3]  # build/heap_bench.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, threading, time
root, model, mode = sys.argv[1:4]
if mode == "bound":
    from tda.attribution.io.fs import bound_heap
    bound_heap()
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) // 1024
samples = []
def sample():
    while True:
        samples.append(status("VmRSS:"))
        time.sleep(1)
threading.Thread(target=sample, daemon=True).start()
from tda.pipeline.embed import run_embed
from tda.schemas import EmbedConfig
started = time.time()
run_embed(EmbedConfig(root=root, model=model, device="cpu", overwrite=True))
print(json.dumps({"mode": mode, "seconds": round(time.time() - started, 2),
                  "peak_rss_mb": status("VmHWM:"), "rss_mb_samples": samples}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    base = REPO / "build" / "bench-memory-stages"
    parser.add_argument("--root", default=str(base / "root-filex3-x1"))
    parser.add_argument("--model", default=str(base / "model"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        for mode in ("bound", "default"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.root, args.model, mode],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"{r['mode']:<8} {r['seconds']:>7.2f} s  peak {r['peak_rss_mb']} MB", flush=True)
    (REPO / "build" / "heap_bench.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
