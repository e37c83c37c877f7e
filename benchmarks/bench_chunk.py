"""Chunk-stage throughput against a bare ``tokenizers`` batch-encode of the same text.

    .venv/bin/python benchmarks/bench_chunk.py [--out build/bench] [--repeat 3] [--copies 2]

Corpus: the demo corpus (real text: Moby-Dick, State of the Union addresses, Python docs;
fetched from the npm registry, see jobs/demo.py), written ``--copies`` times so the run is
long enough that Beam's start-up does not dominate. Tokenizer: the demo's byte-level BPE.

* baseline: ``Tokenizer.encode_batch`` with the texts already in memory, all cores (the
  Rust thread pool), no chunking, nothing written; the faster of one call over all texts
  and calls over the stage's own batch size.
* stage: ``tda chunk`` end to end through Beam's DirectRunner (read and decompress files,
  parse JSON/Parquet, tokenize, cut chunks, write Parquet + markers + manifest), both
  in-process and multi-process (one worker per core).

Ratio = stage tokens/s / baseline tokens/s (target >= 0.6). Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()

    from apache_beam.options.pipeline_options import PipelineOptions
    from tokenizers import Tokenizer

    from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
    from tda.attribution.corpus.tokenizer import train_bpe_tokenizer
    from tda.attribution.stages.chunk import BATCH_CHARS
    from tda.jobs.demo import build_corpus
    from tda.pipeline.chunk import run_chunk
    from tda.schemas import ChunkConfig, ReadOptions

    out = Path(args.out).resolve()
    corpus = build_corpus(out)
    for k in range(1, args.copies):  # more of the same real text, as separate files
        for f in sorted(corpus.glob("*.*")):
            if f.is_file() and not f.name.startswith("copy"):
                shutil.copy(f, corpus / f"copy{k}_{f.name}")
    read = ReadOptions()
    texts = [
        d.text
        for f in resolve_inputs([str(corpus)])
        for d in iter_documents(f, read)
        if isinstance(d, Document)
    ]
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_bpe_tokenizer(iter(texts[:400]), 8192, str(tok_dir))
    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    n_tokens = sum(len(e) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    # Two bare baselines, the faster one counts: everything in one call, and the same
    # BATCH_CHARS batches the stage uses (one huge call allocates every encoding at once).
    batches, current, size = [], [], 0
    for text in texts:
        current.append(text)
        size += len(text)
        if size >= BATCH_CHARS:
            batches.append(current)
            current, size = [], 0
    batches.append(current)
    one_call = best(lambda: tokenizer.encode_batch(texts, add_special_tokens=False))
    batched = best(lambda: [tokenizer.encode_batch(b, add_special_tokens=False) for b in batches])
    baseline = min(one_call, batched)

    def stage(extra: list[str]) -> None:
        config = ChunkConfig(
            inputs=(str(corpus),), out=str(out / "root"), tokenizer=str(tok_dir), overwrite=True
        )
        result = run_chunk(config, PipelineOptions(extra))
        assert result.manifest.totals.tokens == n_tokens, "stage and baseline saw other text"

    cores = os.cpu_count() or 1
    in_process = best(lambda: stage([]))
    multi = best(
        lambda: stage(["--direct_running_mode=multi_processing", f"--direct_num_workers={cores}"])
    )
    results = {
        "cores": cores,
        "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "documents": len(texts),
        "tokens": n_tokens,
        "text_mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
        "baseline_one_call_tokens_per_s": round(n_tokens / one_call),
        "baseline_batched_tokens_per_s": round(n_tokens / batched),
        "baseline_tokens_per_s": round(n_tokens / baseline),
        "stage_in_process_tokens_per_s": round(n_tokens / in_process),
        "stage_multi_process_tokens_per_s": round(n_tokens / multi),
        "ratio_in_process": round(baseline / in_process, 3),
        "ratio_multi_process": round(baseline / multi, 3),
        "target_ratio": 0.6,
    }
    (out / "chunk_bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ok = max(results["ratio_in_process"], results["ratio_multi_process"]) >= 0.6
    print(
        f"chunk stage / bare tokenizer: {results['ratio_in_process']:.2f} in-process, "
        f"{results['ratio_multi_process']:.2f} multi-process (target >= 0.6): "
        f"{'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
