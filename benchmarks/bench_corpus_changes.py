"""Cost of changing a root by generations against a full rebuild (issue 23).

Builds a root over a corpus with one file held out, then, back to back in this one
process (so both sides see the same machine load):

1. ``tda add`` of the held-out file (about 10% of the corpus) vs a full rebuild over
   every file (chunk -> embed -> index);
2. ``tda takedown`` of one document vs the same full rebuild (what removing a document
   costs without generations: everything is rebuilt);

and prints time and bytes written for each as a Markdown table (bytes written: the
size of every file created or replaced under the root, generations/ included).

    .venv/bin/python benchmarks/bench_corpus_changes.py --corpus build/demo/corpus \
        --model build/demo/model --hold-out python_docs.jsonl.zst --work /tmp/bench-changes
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _written(before: dict, after: dict) -> int:
    return sum(size for k, (size, t) in after.items() if before.get(k, (None, None))[1] != t)


def _build(inputs: list[str], root: Path, model: str) -> None:
    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig

    run_chunk(ChunkConfig(inputs=tuple(inputs), out=str(root), tokenizer=model))
    run_embed(EmbedConfig(root=str(root), model=model, device="cpu"))
    run_index(IndexConfig(root=str(root)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--hold-out", required=True, help="the corpus file to add later")
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    from tda.attribution.curation.takedown import run_takedown
    from tda.pipeline.add import run_add
    from tda.schemas.changes import AddConfig, TakedownConfig

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    base, extra = work / "corpus", work / "new"
    base.mkdir(parents=True)
    extra.mkdir()
    for f in sorted(Path(args.corpus).iterdir()):
        shutil.copy(f, (extra if f.name == args.hold_out else base) / f.name)
    grown, full = work / "grown", work / "full"
    _build([str(base)], grown, args.model)
    before = _files(grown)
    t = time.perf_counter()
    entry = run_add(AddConfig(root=str(grown), inputs=(str(extra),), device="cpu")).audit
    add_s, add_b = time.perf_counter() - t, _written(before, _files(grown))
    t = time.perf_counter()
    _build([str(base), str(extra)], full, args.model)
    full_s = time.perf_counter() - t
    full_b = sum(size for size, _ in _files(full).values())
    import pyarrow.parquet as pq

    doc = pq.read_table(grown / "chunks" / "part-000000.parquet", columns=["doc_id"])[0][0]
    before = _files(grown)
    t = time.perf_counter()
    run_takedown(TakedownConfig(root=str(grown), reason="benchmark", doc_ids=(str(doc),)))
    down_s, down_b = time.perf_counter() - t, _written(before, _files(grown))
    print(f"machine: {os.cpu_count()} cores, shared with other jobs")
    print(f"added {entry['counts']['chunks_added']} chunks to {entry['vectors']} vectors")
    print("| change | time (s) | bytes written | full rebuild: time (s) | bytes |")
    print("|---|---|---|---|---|")
    print(f"| tda add (held-out file) | {add_s:.1f} | {add_b:,} | {full_s:.1f} | {full_b:,} |")
    print(f"| tda takedown (1 doc) | {down_s:.1f} | {down_b:,} | {full_s:.1f} | {full_b:,} |")


if __name__ == "__main__":
    main()
