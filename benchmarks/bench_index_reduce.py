"""What ``tda index build --reduce DIM`` costs in retrieval on real embeddings: recall@10 of
exact search after the index's uncentred PCA (fitted on 20,000 evenly spaced vectors)
against exact search on the full vectors, for 500 stored vectors as queries (themselves
left out).

    .venv/bin/python benchmarks/bench_index_reduce.py [--root build/demo/root] [--dims 96,64,32,16]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(REPO / "build" / "demo" / "root"))
    parser.add_argument("--dims", default="96,64,32,16")
    args = parser.parse_args()
    import faiss
    import pyarrow.parquet as pq

    from tda.attribution.index.dense import fit_reduction
    from tda.schemas import EmbedManifest, vectors_from_arrow

    root = Path(args.root)
    dim = EmbedManifest.from_json((root / "embeddings" / "manifest.json").read_text()).dim
    x = np.concatenate([
        vectors_from_arrow(pq.read_table(p, columns=["vector"]).column(0).combine_chunks(), dim)
        for p in sorted(glob.glob(str(root / "embeddings" / "part-*.parquet")))
    ]).astype(np.float32)  # fmt: skip
    queries = x[np.random.default_rng(0).choice(len(x), 500, replace=False)]

    def knn(base: np.ndarray, q: np.ndarray) -> np.ndarray:
        index = faiss.IndexFlatIP(base.shape[1])
        index.add(base)
        return index.search(q, 11)[1][:, 1:]  # the query itself left out

    truth = knn(x, queries)
    sample = x[np.linspace(0, len(x) - 1, min(len(x), 20_000)).astype(int)]
    report = {"vectors": len(x), "dim": dim, "recall_at_10": {}}
    for d in (int(v) for v in args.dims.split(",")):
        pca = fit_reduction(sample, d)
        got = knn(pca.apply(x), pca.apply(queries))
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)])
        report["recall_at_10"][d] = round(float(recall), 4)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
