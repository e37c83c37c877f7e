"""Peak memory of chunking one file, as the file grows 10x: it must stay flat.

    .venv/bin/python benchmarks/bench_chunk_memory.py [--out build/bench-memory]

Writes one JSONL.gz file of real text (Python's documentation topics, repeated) at 1x and
10x size, chunks each with ``tda chunk`` in a fresh process (in-process DirectRunner), and
reports the process's peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys
from tda.schemas import ChunkConfig
from tda.pipeline.chunk import run_chunk
r = run_chunk(ChunkConfig(inputs=(sys.argv[1],), out=sys.argv[2], tokenizer=sys.argv[3],
                          overwrite=True))
print(r.manifest.totals.tokens, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-memory"))
    parser.add_argument("--base-copies", type=int, default=20)
    args = parser.parse_args()
    from pydoc_data.topics import topics

    from tda.attribution.tokenizer import train_bpe_tokenizer

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = sorted(topics.items())
    tok = out / "tokenizer"
    if not (tok / "tokenizer.json").exists():
        train_bpe_tokenizer(iter(t for _, t in docs), 4096, str(tok))
    rows = []
    for scale in (1, 10):
        path = out / f"x{scale}" / "corpus.jsonl.gz"
        path.parent.mkdir(exist_ok=True)
        with gzip.open(path, "wt", compresslevel=1) as f:
            for copy in range(args.base_copies * scale):
                for doc_id, text in docs:
                    f.write(json.dumps({"id": f"{copy}-{doc_id}", "text": text}) + "\n")
        raw_mb = sum(len(t.encode()) for _, t in docs) * args.base_copies * scale / 1e6
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(out / f"root{scale}"), str(tok)],
            check=True,
            capture_output=True,
            text=True,
        )
        tokens, max_rss_kb = map(int, result.stdout.split()[-2:])
        rows.append(
            {
                "scale": scale,
                "text_mb": round(raw_mb, 1),
                "tokens": tokens,
                "peak_rss_mb": round(max_rss_kb / 1024, 1),
            }
        )
        print(json.dumps(rows[-1]))
    growth = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS grows {growth:.2f}x while the file grows 10x")
    (out / "memory.json").write_text(
        json.dumps({"rows": rows, "growth": round(growth, 3)}, indent=2)
    )


if __name__ == "__main__":
    main()
