"""Synthetic clustered embeddings for ``bench_index_scale.py``, written as a build root in
a streaming way (one input file at a time, so 10M vectors need ~0.5 GB of RAM), with the
exact top-k of held-out queries computed in the same pass.

    .venv/bin/python benchmarks/scale_data.py --out /tmp/work/scale-256 --n 10000000 --dim 256

Data: ``n / 1000`` centres, so clusters hold ~1,000 vectors (the shape of
``bench_index.py``'s 1M root, where PQ64 measured recall@10 0.54). A vector is a centre
plus noise, L2-normalised and stored in float16. With ``--decay a`` (a > 0) both the
centres and the noise have per-axis standard deviation ``(1 + i) ** -a`` on axis i (a
decaying spectrum, as real embeddings have, so a PCA reduction keeps most of the
neighbour order); with a = 0 (default) they are isotropic. Queries are fresh vectors of the
same distribution (not stored ones). Exact neighbours: inner product in float32 over the
stored (float16) values, merged over files by ``faiss.ResultHeap``.

Writes ROOT/chunks/manifest.json (no chunk parts: the benchmark searches ids only),
ROOT/embeddings/ (parts + manifest, as the embed stage writes them), ROOT/queries.npy
(q, dim) float32 and ROOT/truth.npy (q, k) int64 chunk ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _spectrum(dim: int, decay: float) -> np.ndarray:
    return ((1.0 + np.arange(dim)) ** -decay).astype(np.float32)


def _vectors(centres, scale, n, noise, rng) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x += noise * rng.standard_normal(x.shape, dtype=np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(out: Path, n: int, dim: int, files: int, queries: int, k: int, decay: float,
             noise: float = 1.0, seed: int = 0) -> dict:  # fmt: skip
    import faiss

    from tda.attribution.io.parts import parquet_write_options
    from tda.schemas import (
        DEFAULT_CODEC,
        ChunkingPolicy,
        ContextPolicy,
        EmbedCounts,
        EmbedManifest,
        EncoderInfo,
        FileCounts,
        InputFile,
        Manifest,
        Pooling,
        ReadOptions,
        TokenizerInfo,
        embedding_schema,
        vectors_to_arrow,
    )
    from tda.schemas.manifest import StoredFile

    started = time.perf_counter()
    (out / "chunks").mkdir(parents=True, exist_ok=False)
    (out / "embeddings").mkdir()
    rng = np.random.default_rng(seed)
    scale = _spectrum(dim, decay)
    centres = rng.standard_normal((max(1, n // 1000), dim), dtype=np.float32) * scale
    q = _vectors(centres, scale, queries, noise, np.random.default_rng(seed + 1))
    heap = faiss.ResultHeap(queries, k, keep_max=True)
    bounds = np.linspace(0, n, files + 1).astype(np.int64)
    inputs, counts, ecounts = [], [], []
    for f in range(files):
        rows = int(bounds[f + 1] - bounds[f])
        x = _vectors(centres, scale, rows, noise, np.random.default_rng(seed + 100 + f))
        x16 = x.astype(np.float16)
        ids = DEFAULT_CODEC.encode_many(0, f, np.arange(rows))
        scores, rank = faiss.knn(q, x16.astype(np.float32), k, faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, ids[rank])
        emb = pa.Table.from_arrays(
            [
                pa.array(ids, pa.int64()),
                vectors_to_arrow(x16),
                pa.array([[0]] * rows, pa.list_(pa.uint16())),
                pa.array([[1.0]] * rows, pa.list_(pa.float16())),
            ],
            schema=embedding_schema(dim),
        )
        relative = f"embeddings/part-{f:06d}.parquet"
        pq.write_table(emb, out / relative, row_group_size=8192,
                       **parquet_write_options(emb.schema, ("vector",)))  # fmt: skip
        data = (out / relative).read_bytes()
        part = StoredFile(relative, hashlib.sha256(data).hexdigest(), len(data))
        inputs.append(InputFile(f, f"/corpus/f{f}.jsonl", "jsonl", 1))
        counts.append(FileCounts(f, rows, rows, rows, rows, {}))
        ecounts.append(EmbedCounts(f, rows, rows, rows, 0, 1, 1, 0, parts=(part,)))
        print(f"file {f + 1}/{files}: {time.perf_counter() - started:.0f} s", flush=True)
    heap.finalize()
    tok = TokenizerInfo("t", "huggingface", "t", "sha256:t", 10)
    chunks = Manifest("0.1.0", DEFAULT_CODEC, 0, tok, ReadOptions(), ChunkingPolicy(),
                      tuple(inputs), tuple(counts))  # fmt: skip
    (out / "chunks" / "manifest.json").write_text(chunks.to_json())
    chunk_sha = hashlib.sha256((out / "chunks" / "manifest.json").read_bytes()).hexdigest()
    (out / "embeddings" / "concepts.json").write_text('{"known": ["c0"], "harmful": []}')
    concepts = (out / "embeddings" / "concepts.json").read_bytes()
    enc = EncoderInfo("builtin", "builtin:none", "sha256:e", "sha256:t", dim, 1, 1, 256, 1)
    embed = EmbedManifest(
        "0.1.0", enc, Pooling(), ContextPolicy(256, 64), dim, 1024, chunk_sha, tuple(ecounts),
        StoredFile("embeddings/concepts.json", hashlib.sha256(concepts).hexdigest(),
                   len(concepts)),
    )  # fmt: skip
    (out / "embeddings" / "manifest.json").write_text(embed.to_json())
    np.save(out / "queries.npy", q)
    np.save(out / "truth.npy", heap.I)
    record = {"n": n, "dim": dim, "files": files, "queries": queries, "k": k, "decay": decay,
              "noise": noise, "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    (out / "data.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--decay", type=float, default=0.0)
    parser.add_argument("--noise", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(generate(Path(args.out), args.n, args.dim, args.files, args.queries,
                              args.k, args.decay, args.noise)))  # fmt: skip


if __name__ == "__main__":
    main()
