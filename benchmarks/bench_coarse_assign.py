"""Coarse assignment at add time: an index's HNSW coarse quantizer at several efSearch
against an exact product with its centroids, one core, on a kept bench_index_scale
index (ms per vector and the share placed in the exact nearest list).

    nice -n 5 .venv/bin/python benchmarks/bench_coarse_assign.py --data /tmp/work/scale-256

(the index that ``bench_index_scale.py --keep`` left in DATA; vectors: its queries,
repeated to ``--n``.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="a scale_data.py root with a kept index")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--ef", default="16,64,128")
    args = parser.parse_args()

    import faiss

    from tda.attribution.index.dense import apply_chain, split_trained

    faiss.omp_set_num_threads(1)
    data = Path(args.data)
    whole = faiss.read_index(str(data / "index" / "trained.faiss"))  # owns what split returns
    chain, ivf = split_trained(whole)
    queries = np.load(data / "queries.npy").astype(np.float32)
    x = apply_chain(chain, np.resize(queries, (args.n, queries.shape[1])))
    hnsw = faiss.downcast_index(ivf.quantizer)
    exact = faiss.IndexFlat(x.shape[1], hnsw.metric_type)
    exact.add(hnsw.storage.reconstruct_n(0, hnsw.ntotal))
    started = time.perf_counter()
    _, nearest = exact.search(x, 1)
    seconds = time.perf_counter() - started
    print(f"{hnsw.ntotal:,} centroids x {x.shape[1]} dims, {len(x):,} vectors, 1 thread")
    print(f"exact product: {seconds / len(x) * 1e3:.3f} ms a vector")
    for ef in (int(v) for v in args.ef.split(",")):
        hnsw.hnsw.efSearch = ef
        started = time.perf_counter()
        _, got = hnsw.search(x, 1)
        seconds = time.perf_counter() - started
        placed = float(np.mean(got[:, 0] == nearest[:, 0]))
        print(f"HNSW efSearch {ef}: {seconds / len(x) * 1e3:.3f} ms a vector, {placed:.1%} exact")


if __name__ == "__main__":
    main()
