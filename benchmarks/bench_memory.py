"""Peak memory of each stage (chunk, embed, index build) as the corpus grows 10x.

    .venv/bin/python benchmarks/bench_memory.py [--out build/bench-memory-stages] [--base-docs 120]

The corpus is real text (Python's documentation topics, repeated) as JSONL.gz, at 1x and
10x, grown two ways:

* ``files``: 10x as many input files of the same size (how pretraining corpora grow);
* ``file``: one input file 10x larger (streaming inside a file), starting from a file
  past the stage's warm-up.

Each stage runs alone in a fresh process (``run_chunk`` / ``run_embed`` / ``run_index``,
in-process DirectRunner) and reports its peak RSS (``VmHWM``), beside the peak of a
process that only imports torch, faiss and the pipelines (the floor every stage starts
on). The model is a small builtin one trained here for a few steps (memory does not
depend on what it learned).
The index is built with a fixed ``--shard-size`` (shards never split an embeddings part,
so the ``file`` growth is not measured for it: one part is one shard, filled in memory,
bounded by ``--memory-budget``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
stage, corpus, root, model = sys.argv[1:5]
if sys.argv[6] == "bound":  # what GPU embed workers do (tda.attribution.io.fs.bound_heap)
    from tda.attribution.io.fs import bound_heap
    bound_heap()
started = time.time()
if stage == "chunk":
    from tda.pipeline.chunk import run_chunk
    from tda.schemas import ChunkConfig
    r = run_chunk(ChunkConfig(inputs=(corpus,), out=root, tokenizer=model, overwrite=True))
    units = r.manifest.totals.tokens
elif stage == "baseline":  # imports only: what every stage's process holds before work
    import faiss, torch
    import tda.pipeline.chunk, tda.pipeline.embed, tda.pipeline.index
    units = 0
elif stage == "embed":
    from tda.pipeline.embed import run_embed
    from tda.schemas import EmbedConfig
    r = run_embed(EmbedConfig(root=root, model=model, device="cpu", overwrite=True))
    units = r.manifest.totals.chunks
else:
    from tda.pipeline.index import run_index
    from tda.schemas import IndexConfig
    r = run_index(IndexConfig(root=root, shard_size=int(sys.argv[5]), threads=1,
                              factory="IVF256,SQfp16", overwrite=True))
    units = r.manifest.vectors
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked parent across exec
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
print(json.dumps({"units": units, "seconds": round(time.time() - started, 1),
                  "peak_rss_mb": round(peak, 1)}))
"""

UNITS = {"chunk": "tokens", "embed": "chunks", "index": "vectors"}


def write_corpus(folder: Path, docs, copies: int, files: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for n in range(files):
        with gzip.open(folder / f"part-{n:03d}.jsonl.gz", "wt", compresslevel=1) as f:
            for copy in range(copies):
                for doc_id, text in docs:
                    f.write(json.dumps({"id": f"{n}-{copy}-{doc_id}", "text": text}) + "\n")


def run_stage(
    stage: str, corpus: Path, root: Path, model: Path, shard_size: int, heap: str = "default"
) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, stage, str(corpus), str(root), str(model),
         str(shard_size), heap],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-memory-stages"))
    parser.add_argument("--base-docs", type=int, default=120, help="Documents per 1x file.")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--chunk-base", type=int, default=10, help="Copies in the chunk 1x file.")
    parser.add_argument("--embed-base", type=int, default=3, help="Copies in the embed 1x file.")
    parser.add_argument(
        "--bound-heap",
        dest="heap",
        action="store_const",
        const="bound",
        default="default",
        help="Fixed glibc malloc thresholds in every stage process, as GPU embed workers use.",
    )
    args = parser.parse_args()
    from pydoc_data.topics import topics

    from tda.attribution.encoders.builtin.train import train_builtin
    from tda.schemas import TrainConfig

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs = sorted(topics.items())[: args.base_docs]
    model = out / "model"
    if not (model / "config.json").exists():
        seed_corpus = out / "seed"
        write_corpus(seed_corpus, docs, 1, 1)
        train_builtin(
            TrainConfig(inputs=(str(seed_corpus),), out=str(model), steps=20, vocab_size=2048,
                        d_model=64, n_layers=2, n_heads=2, max_seq=512, batch_size=8)
        )  # fmt: skip
    rows = []
    started = time.time()
    baseline = run_stage("baseline", out, out, model, args.shard_size)["peak_rss_mb"]
    print(f"baseline (imports only): {baseline} MB", flush=True)
    # (growth, copies of the documents in the 1x file, stages). Single files start past
    # each stage's warm-up: the embed stage encodes groups of up to 262,144 tokens (3
    # copies = 1.5 groups), the chunk stage fills row groups and tokenizer batches.
    plan = (
        ("files", 1, ("chunk", "embed", "index")),
        ("file", args.embed_base, ("chunk", "embed")),
        ("file", args.chunk_base, ("chunk",)),
    )
    for growth, base, stages in plan:
        label = growth if base == 1 else f"{growth}x{base}"
        for scale in (1, 10):
            files, copies = (scale, base) if growth == "files" else (1, base * scale)
            corpus, root = out / f"corpus-{label}-x{scale}", out / f"root-{label}-x{scale}"
            write_corpus(corpus, docs, copies, files)
            for stage in stages:
                row = run_stage(stage, corpus, root, model, args.shard_size, args.heap)
                row = {"growth": label, "scale": scale, "stage": stage, **row}
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(corpus)
    summary = []
    for growth, stage in sorted({(r["growth"], r["stage"]) for r in rows}):
        small, big = (
            next(r for r in rows if (r["growth"], r["stage"], r["scale"]) == (growth, stage, s))
            for s in (1, 10)
        )
        summary.append(
            {
                "growth": growth,
                "stage": stage,
                "units_1x": small["units"],
                "units_10x": big["units"],
                "unit": UNITS[stage],
                "peak_rss_mb_1x": small["peak_rss_mb"],
                "peak_rss_mb_10x": big["peak_rss_mb"],
                "ratio": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
            }
        )
    print(f"\n{'growth':<8} {'stage':<6} {'1x':>12} {'10x':>12} {'RSS 1x':>9} {'RSS 10x':>9} ratio")
    for s in summary:
        rss = f"{s['peak_rss_mb_1x']:>8.0f}M {s['peak_rss_mb_10x']:>8.0f}M {s['ratio']:.2f}"
        print(f"{s['growth']:<8} {s['stage']:<6} {s['units_1x']:>12,} {s['units_10x']:>12,} {rss}")
    (out / f"memory-{args.heap}.json").write_text(
        json.dumps({"heap": args.heap, "baseline_rss_mb": baseline, "rows": rows,
                    "summary": summary, "seconds": round(time.time() - started)},
                   indent=2) + "\n"
    )  # fmt: skip


if __name__ == "__main__":
    main()
