"""``GET /api/documents/{chunk_id}`` on a long document: latency and response size at the
cap, the figure behind the viewer's document view.

    .venv/bin/python benchmarks/bench_documents.py [--copies 2] [--repeat 5]

Index: one document made of every Python documentation topic (``pydoc_data.topics``, PSF
licence) ``--copies`` times over (twice: 930,254 characters, 3,509 chunks, well over the
2,000-chunk cap), beside the topics as their own short documents; default-shaped random
builtin model; built under build/bench-documents. Asks for the long document's middle
chunk with the cap (2,000) and with ``limit=200``, and for a short document whole;
reports chunks and characters returned, ``truncated``, response bytes and median /
first-call latency in process (FastAPI's TestClient, no network). Writes
build/documents_bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def build(out: Path, copies: int) -> Path:
    """The benchmark's root (see the module docstring) under ``out``."""
    from pydoc_data.topics import topics

    from bench_embed import _random_model

    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    items = sorted(topics.items())
    long_text = "\n\n".join(text for _ in range(copies) for _, text in items)
    corpus = out / "docs.jsonl"
    lines = [{"id": "all-topics", "text": long_text}] + [{"id": k, "text": v} for k, v in items]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in lines))
    model = _random_model(out / "model", corpus, 4096)
    root = out / "root"
    run_chunk(ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=model))
    run_embed(EmbedConfig(root=str(root), model=model))
    run_index(IndexConfig(root=str(root)))
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-documents"))
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    from fastapi.testclient import TestClient

    from tda.jobs.serve import create_app

    root = build(Path(args.out), args.copies)
    rows = pq.read_table(
        root / "chunks" / "part-000000.parquet", columns=["chunk_id", "doc_id", "chunk_index"]
    ).to_pylist()
    long_ids = [r["chunk_id"] for r in rows if r["doc_id"] == "all-topics"]
    short = next(r for r in rows if r["doc_id"] != "all-topics" and r["chunk_index"] == 1)
    client = TestClient(create_app(str(root), device="cpu"), base_url="http://127.0.0.1")
    results = []
    middle = long_ids[len(long_ids) // 2]
    cases = [
        (f"long document ({len(long_ids)} chunks), middle chunk, cap", middle, {}),
        ("long document, middle chunk, limit=200", middle, {"limit": 200}),
        (f"short document {short['doc_id']!r}", short["chunk_id"], {}),
    ]  # fmt: skip
    for name, chunk_id, params in cases:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            r = client.get(f"/api/documents/{chunk_id}", params=params)
            times.append(1000 * (time.perf_counter() - start))
        assert r.status_code == 200, r.text
        doc = r.json()
        result = {
            "case": name,
            "chunks": len(doc["chunks"]),
            "chars": len(doc["text"]),
            "truncated": doc["truncated"],
            "bytes": len(r.content),
            "median_ms": round(statistics.median(times), 1),
            "first_ms": round(times[0], 1),
        }
        results.append(result)
        print(
            f"{name}: {result['chunks']} chunks, {result['chars']:,} chars, truncated "
            f"{result['truncated']}, {result['bytes']:,} bytes, median {result['median_ms']} ms "
            f"(first call {result['first_ms']} ms)"
        )
    (REPO / "build" / "documents_bench.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
