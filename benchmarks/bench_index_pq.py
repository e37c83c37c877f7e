"""The index at pretraining scale: the factory ``tda index build`` picks once the vectors
outgrow a worker's memory (OPQ + IVF with an HNSW coarse quantizer + 64-byte PQ codes),
measured on the synthetic 1M-vector root of ``bench_index.py``.

    .venv/bin/python benchmarks/bench_index.py            # makes build/bench-index (once)
    .venv/bin/python benchmarks/bench_index_pq.py [--root build/bench-index] [--nlist 4096]

Builds ``OPQ64_{dim},IVF{nlist}_HNSW32,PQ64`` (what ``choose_factory`` returns beyond the
memory budget, with nlist scaled to this vector count) into a root that links to the
bench's chunks and embeddings, then reports bytes per chunk, train and fill time, and
recall@10 against exact search and p50 latency per nprobe. Writes build/index_pq_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(REPO / "build" / "bench-index"))
    parser.add_argument("--out", default=str(REPO / "build" / "bench-index-pq"))
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    from tda.attribution.index.build import choose_factory
    from tda.attribution.index.reader import IndexReader, read_index_manifest
    from tda.pipeline.index import run_index
    from tda.schemas import IndexConfig

    source = Path(args.root).resolve()
    base = read_index_manifest(str(source))
    dim, n = base.dim, base.vectors
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("chunks", "embeddings"):
        link = out / name
        if not link.exists():
            os.symlink(source / name, link)
    # The factory the planner picks for a corpus that outgrows the budget, at this nlist.
    big, _, _ = choose_factory(21_000_000_000, dim, 4 << 30)
    factory = big.replace("IVF65536", f"IVF{args.nlist}")
    started = time.perf_counter()
    manifest = run_index(
        IndexConfig(root=str(out), factory=factory, shards=len(base.shards), overwrite=True)
    ).manifest
    build_s = time.perf_counter() - started

    # Exact neighbours of real stored vectors (perturbed), from the embeddings themselves.
    exact_reader = IndexReader.open(str(source))
    rng = np.random.default_rng(5)
    ids = rng.choice(np.asarray(exact_reader_ids(source)), args.queries, replace=False)
    queries = np.stack([exact_reader.vector(int(i)) for i in ids]).astype(np.float32)
    queries += 0.05 * rng.standard_normal(queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact = exact_reader.search(queries, 10, 4096)  # SQfp16 at full nprobe: exact enough
    reader = IndexReader.open(str(out))
    sweep = []
    for nprobe in (16, 64, 256, 512):
        _, got = reader.search(queries, 10, nprobe)
        recall = float(
            np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
        )
        latencies = []
        for q in queries[:100]:
            t = time.perf_counter()
            reader.search(q[None], 10, nprobe)
            latencies.append((time.perf_counter() - t) * 1000)
        sweep.append({"nprobe": nprobe, "recall_at_10": round(recall, 4),
                      "p50_ms": round(float(np.percentile(latencies, 50)), 3)})  # fmt: skip
        print(json.dumps(sweep[-1]), flush=True)
    size = sum(f.size for f in manifest.files)
    shard_bytes = sum(f.size for f in manifest.files if f.path.startswith("shards/"))
    report = {
        "vectors": n,
        "dim": dim,
        "factory": manifest.factory,
        "shards": len(manifest.shards),
        "train_vectors": manifest.train_vectors,
        "build_seconds": round(build_s, 1),
        "index_bytes": size,
        "bytes_per_chunk": round(size / n, 1),
        "shard_bytes_per_chunk": round(shard_bytes / n, 1),
        "sweep": sweep,
    }
    (REPO / "build" / "index_pq_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def exact_reader_ids(root: Path) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(root / "embeddings" / "part-000000.parquet", columns=["chunk_id"])[
        "chunk_id"
    ].to_pylist()


if __name__ == "__main__":
    main()
