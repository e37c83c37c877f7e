"""Bytes per chunk of each stage's output in a build root (what the scale plan multiplies).

.venv/bin/python benchmarks/root_sizes.py build/demo/root   # after `make demo`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "build/demo/root")
    chunks = json.loads((root / "chunks" / "manifest.json").read_text())["totals"]["chunks"]
    embed = json.loads((root / "embeddings" / "manifest.json").read_text())
    report = {"root": str(root), "chunks": chunks, "dim": embed.get("dim")}
    for name in ("chunks", "embeddings", "index"):
        size = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
        report[f"{name}_bytes"] = size
        report[f"{name}_bytes_per_chunk"] = round(size / chunks, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
