"""The index at 10M+ vectors: build time, bytes per chunk on disk and resident, recall@10
against exact search and p50 / p99 per nprobe, for the factory ``choose_factory`` picks at
that size, with and without its exact re-rank (fp16 codes, sq8 codes, embeddings table).

    nice -n 10 .venv/bin/python benchmarks/scale_data.py --out /tmp/work/scale-256 \\
        --n 10000000 --dim 256                       # the data, streamed (~5 GB)
    nice -n 10 .venv/bin/python benchmarks/bench_index_scale.py --data /tmp/work/scale-256 \\
        --shards 8 --train-sample 163840             # -> build/index_scale_bench.json

The data root is what the embed stage writes (``scale_data.py``), so the build is
``tda index build``'s own stage (plan: train the shared quantizer; fill every shard, two at
a time on 2 cores; finish) with the span / lexical channels left out. Queries: the data
root's held-out vectors; exact neighbours: ``truth.npy`` (inner product over the stored
float16 vectors). The sq8 re-rank is measured on codes re-encoded from the fp16 ones
(the same 8-bit codes the build writes with ``--refine sq8``, without a second fill); the
embeddings re-rank reads each candidate's float16 vector from the Parquet table by id.
Latency: single-vector queries through ``IndexReader.search`` one after another (the
machine's 2 cores are shared with other jobs, so these are upper bounds). Resident: the
process's RSS growth from opening the index, and after the queries (memory-mapped pages
read so far included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(g[:k]) & set(t)) / k for g, t in zip(got, truth, strict=True)]))


def _sweep(reader, queries, truth, nprobes, latency_queries, label) -> list[dict]:
    rows = []
    for nprobe in nprobes:
        _, got = reader.search(queries, 10, nprobe)
        latencies = []
        for q in queries[:latency_queries]:
            t = time.perf_counter()
            reader.search(q[None], 10, nprobe)
            latencies.append((time.perf_counter() - t) * 1000)
        row = {
            "refine": label,
            "nprobe": nprobe,
            "recall_at_10": round(_recall(got, truth), 4),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _sq8_store(reader, work: Path):
    """A RefineStore of 8-bit codes re-encoded from the index's fp16 codes, in ``work``."""
    import faiss

    from tda.attribution.index.dense import RefineStore, refine_encoder, refine_paths, shard_lookup

    m = reader.manifest
    index_dir = Path(reader.root) / "index"
    fp16 = faiss.read_index(str(index_dir / m.refine["file"]))
    first = np.load(index_dir / refine_paths(m.shards[0].path)[0], mmap_mode="r")
    sample = fp16.sa_decode(np.ascontiguousarray(first[:: max(1, len(first) // 100_000)]))
    sq8 = refine_encoder("sq8", fp16.d, fp16.metric_type)
    sq8.train(sample)
    files = []
    for s in m.shards:
        codes_path, ids_path = refine_paths(s.path)
        codes = np.load(index_dir / codes_path, mmap_mode="r")
        out = np.lib.format.open_memmap(
            work / Path(codes_path).name, mode="w+", dtype=np.uint8, shape=(len(codes), fp16.d)
        )
        for lo in range(0, len(codes), 500_000):
            out[lo : lo + 500_000] = sq8.sa_encode(
                fp16.sa_decode(np.asarray(codes[lo : lo + 500_000]))
            )
        out.flush()
        files.append((str(work / Path(codes_path).name), str(index_dir / ids_path)))
    return RefineStore(m.metric, sq8, files, shard_lookup(m.id_codec, m.shards))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a root written by scale_data.py")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--train-sample", type=int, default=None)
    parser.add_argument("--memory-budget", type=int, default=4 * 1000**3)
    parser.add_argument("--factory", default=None, help="[default: choose_factory's pick]")
    parser.add_argument("--reduce", type=int, default=None)
    parser.add_argument("--refine", default=None, help="[default: choose_factory's]")
    parser.add_argument("--nprobes", default="16,32,64,128,256")
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--embeddings-queries", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the built index")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a build left in DATA (its trained quantizer and finished shards kept; "
        "train_seconds then counts only the resumed plan)",
    )
    parser.add_argument(
        "--reuse", action="store_true",
        help="measure the index a --keep run left in DATA (no build: its build figures are "
        "carried from --out's previous report)",
    )  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "build" / "index_scale_bench.json"))
    args = parser.parse_args()

    from tda.attribution.index.build import choose_factory
    from tda.attribution.index.dense import RefineStore
    from tda.attribution.index.reader import IndexReader
    from tda.attribution.stages.index import IndexStage
    from tda.schemas import IndexConfig

    data = Path(args.data).resolve()
    spec = json.loads((data / "data.json").read_text())
    queries = np.load(data / "queries.npy")
    truth = np.load(data / "truth.npy")
    n, dim = spec["n"], spec["dim"]
    stored = args.reduce or dim
    choice = choose_factory(n, stored, args.memory_budget)
    config = IndexConfig(
        root=str(data), factory=args.factory, shards=args.shards, memory_budget=args.memory_budget,
        train_sample=args.train_sample, reduce=args.reduce, refine=args.refine, channels=(),
        overwrite=not args.resume, resume=args.resume,
    )  # fmt: skip
    if args.reuse:
        from tda.schemas import IndexManifest

        manifest = IndexManifest.from_json((data / "index" / "manifest.json").read_text())
        previous = json.loads(Path(args.out).read_text())
        train_s, build_s = previous["train_seconds"], previous["build_seconds"]
        resumed = previous.get("resumed", False)  # the build those figures are of
        refine_codes = (manifest.refine or {}).get("codes", "none")
    else:
        stage = IndexStage()
        started = time.perf_counter()
        plan = stage.plan(config)
        train_s = time.perf_counter() - started
        print(f"planned {plan.factory} refine={plan.refine} in {train_s:.0f} s", flush=True)
        list(stage.fill(plan, stage.units(plan), plan.fill_threads()))
        manifest = stage.finish(plan)
        build_s = time.perf_counter() - started
        print(f"built in {build_s:.0f} s", flush=True)
        refine_codes = plan.refine
        resumed = args.resume

    sizes = {f.path: f.size for f in manifest.files}
    shard_bytes = sum(v for p, v in sizes.items() if p.endswith(".faiss") and "/" in p)
    refine_bytes = sum(v for p, v in sizes.items() if p.endswith(".refine.npy"))
    ids_bytes = sum(v for p, v in sizes.items() if p.endswith(".ids.npy"))
    before = _rss()
    reader = IndexReader.open(str(data), verify=False)
    opened = _rss()
    nprobes = [int(x) for x in args.nprobes.split(",")]
    dense = reader._dense  # the benchmark swaps re-rank stores on one opened index
    sweep = []
    refined = dense.refine if dense is not None else None
    if dense is not None:
        dense.refine = None
        sweep += _sweep(reader, queries, truth, nprobes, args.latency_queries, "none")
        dense.refine = refined
    if refined is not None:
        sweep += _sweep(reader, queries, truth, nprobes, args.latency_queries, refine_codes)
        after = _rss()
        if refine_codes == "fp16":
            work = Path(tempfile.mkdtemp(prefix="sq8-", dir="/tmp/work"))
            try:
                dense.refine = _sq8_store(reader, work)
                sweep += _sweep(reader, queries, truth, nprobes, args.latency_queries, "sq8")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        dense.refine = RefineStore(manifest.metric, vectors=reader.vector, chain=dense.chain)
        few = args.embeddings_queries
        sweep += _sweep(reader, queries[:few], truth[:few], nprobes[2:3], few, "embeddings")
        dense.refine = refined
    else:
        sweep += _sweep(reader, queries, truth, nprobes, args.latency_queries, "none")
        after = _rss()
    report = {
        "data": spec,
        "factory": manifest.factory,
        "choose_factory": choice._asdict(),
        "reduce": manifest.reduce,
        "refine": manifest.refine,
        "shards": len(manifest.shards),
        "train_vectors": manifest.train_vectors,
        "train_seconds": round(train_s, 1),
        "resumed": resumed,
        "build_seconds": round(build_s, 1),
        "fill_vectors_per_s": round(n / max(1e-9, build_s - train_s)),
        "bytes_per_chunk": {
            "all_files": round(sum(sizes.values()) / n, 2),
            "shards_codes_ids": round(shard_bytes / n, 2),
            "refine_codes": round(refine_bytes / n, 2),
            "refine_ids": round(ids_bytes / n, 2),
            "trained_quantizer_once": sizes["trained.faiss"],
        },
        "resident_bytes_per_chunk": {
            "open": round((opened - before) / n, 2),
            "after_queries": round((after - before) / n, 2),
        },
        "sweep": sweep,
        "cores": os.cpu_count(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if not (args.keep or args.reuse):
        shutil.rmtree(data / "index", ignore_errors=True)


if __name__ == "__main__":
    main()
