"""How well a built root's concept weights find a concept, per source, against the
taggers (docs/model.md, "Calibrated concepts"): what a `tda scan --concept NAME` ranking
rests on.

    .venv/bin/python benchmarks/scan_sources.py ROOT CONCEPT [CONCEPT ...]

ROOT is a `tda build` root embedded with a builtin model (its chunks stored with text).
Per concept it prints, as text lines:

1. the chunk-level AUROC of the stored weight (the strongest firing of the concept over
   the chunk, as scans read it) against the taggers' chunk labels (the chunk's text holds
   a match of the concept's terms or patterns), and the number of tagged chunks;
2. per source: chunks, the share the taggers mark, the share of chunks whose weight
   reaches 0.5, 0.3 and the model's fitted cut (what `tda scan` hits), and the mean
   calibrated probability.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tda.attribution.encoders.builtin.calibrate import platt_probability
from tda.attribution.encoders.builtin.concepts import load_concept_set
from tda.attribution.encoders.builtin.train import auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", metavar="ROOT")
    parser.add_argument("concepts", nargs="+", metavar="CONCEPT")
    args = parser.parse_args()
    meta = json.loads(Path(args.root, "embeddings", "concepts.json").read_text())
    names, calibration = meta["known"], meta.get("calibration", {})
    tagger = load_concept_set()
    chunks: dict[int, tuple[str, str]] = {}
    for f in sorted(glob.glob(f"{args.root}/chunks/part-*.parquet")):
        t = pq.read_table(f, columns=["chunk_id", "source", "text"]).to_pydict()
        chunks.update(zip(t["chunk_id"], zip(t["source"], t["text"], strict=True), strict=True))
    stored: dict[int, dict[int, float]] = {}
    for f in sorted(glob.glob(f"{args.root}/embeddings/part-*.parquet")):
        t = pq.read_table(f, columns=["chunk_id", "concept_ids", "concept_weights"]).to_pydict()
        for i, ids, ws in zip(t["chunk_id"], t["concept_ids"], t["concept_weights"], strict=True):
            stored[i] = dict(zip(ids, ws, strict=True))
    order = sorted(stored)
    sources = np.array([chunks[i][0] for i in order])
    for name in args.concepts:
        c, t = names.index(name), tagger.names.index(name)
        w = np.array([float(stored[i].get(c, 0.0)) for i in order])
        tagged = np.array([bool(tagger.spans(chunks[i][1] or "")[t]) for i in order])
        cal = calibration.get(name)
        p = platt_probability(w, cal["a"], cal["b"]) if cal else w
        cut = cal["threshold"] if cal else 0.5
        print(f"{name}: chunk AUROC {auroc(w, tagged):.3f} against {int(tagged.sum()):,} "
              f"tagged chunks of {len(w):,}; fitted cut p >= {cut:.3f}")  # fmt: skip
        rows = collections.Counter(sources)
        for source, n in sorted(rows.items(), key=lambda kv: -p[sources == kv[0]].mean()):
            m = sources == source
            print(
                f"  {source:16s} {n:7,d} chunks  tagged {tagged[m].mean():6.2%}  "
                f"w>=0.5 {(w[m] >= 0.5).mean():6.2%}  w>=0.3 {(w[m] >= 0.3).mean():6.2%}  "
                f"hit {(p[m] >= cut).mean():6.2%}  mean p {p[m].mean():.4f}"
            )


if __name__ == "__main__":
    main()
