"""Embed-stage throughput against a bare loop of the same model's forward passes.

    .venv/bin/python benchmarks/bench_embed.py [--out build/bench-embed] [--repeat 2]
        [--window N --context N]   # default: the stage's (each chunk encoded alone)

Corpus: the demo corpus (real text, fetched from the npm registry; see jobs/demo.py),
chunked with a builtin model's tokenizer. Model: a builtin model of the default
``tda model train`` shape (d_model 128, 4 layers, vocabulary 4,096), randomly initialised:
the weights' values do not change the cost of a forward pass.

* baseline: the same windows, cut by the same context policy and packed into the same
  token-budget batches, already tokenized and in memory; only ``encoder.forward`` is timed
  (torch.inference_mode, CPU, all cores). Nothing is pooled or written.
* stage: ``tda embed`` end to end through Beam's DirectRunner in-process (Beam start-up,
  RunInference's model load, read chunks Parquet, rebuild and re-tokenize documents,
  check offsets, forward, pool, float16, write Parquet + markers + manifest); its
  seconds per phase (read / compute / write, summed over files, from the stage runtime's
  timing counters) are reported for the fastest run.

Ratio = stage tokens/s / baseline tokens/s over the same tokens run through the model
(target >= 0.85). Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]


def _random_model(out: Path, corpus: Path, vocab: int) -> str:
    """A default-shaped builtin model directory with random weights (seeded)."""
    import torch

    from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
    from tda.attribution.corpus.tokenizer import load_tokenizer, train_bpe_tokenizer
    from tda.attribution.encoders.builtin.concepts import load_concept_set
    from tda.attribution.encoders.builtin.model import BuiltinConfig, ConceptLM, save_builtin
    from tda.schemas import ReadOptions

    texts = [
        d.text
        for f in resolve_inputs([str(corpus)])
        for d in iter_documents(f, ReadOptions())
        if isinstance(d, Document)
    ]
    train_bpe_tokenizer(iter(texts), vocab, str(out))
    tokenizer_json = (out / "tokenizer.json").read_bytes()
    info = load_tokenizer(str(out)).info
    concepts = load_concept_set()
    torch.manual_seed(0)
    model = ConceptLM(BuiltinConfig(vocab_size=info.vocab_size, n_known=len(concepts)))
    save_builtin(str(out), model, concepts, tokenizer_json, info.fingerprint, {"random": True})
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-embed"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=None, help="[default: the stage's]")
    parser.add_argument("--context", type=int, default=None, help="[default: the stage's]")
    args = parser.parse_args()

    import numpy as np
    import torch

    from tda.attribution.encoders import batch_windows, load_encoder, plan_windows
    from tda.attribution.io.fs import filesystem
    from tda.attribution.stages.embed import iter_chunk_documents, plan_embed_run
    from tda.jobs.demo import build_corpus
    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.schemas import ChunkConfig, EmbedConfig

    out = Path(args.out).resolve()
    corpus = build_corpus(out)
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        _random_model(model_dir, corpus, 4096)
    root = out / "root"
    run_chunk(
        ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=str(model_dir), overwrite=True)
    )
    config = EmbedConfig(
        root=str(root), model=str(model_dir), batch_tokens=args.batch_tokens, overwrite=True,
        window=args.window, context=args.context,
    )  # fmt: skip
    encoder = load_encoder(config.model, "cpu")

    # The baseline's inputs: exactly the stage's windows and batches, prepared untimed.
    plan = plan_embed_run(config, encoder)
    fs, _ = filesystem(str(root))
    tokenizer = encoder.load_tokenizer()
    batches_ids: list[torch.Tensor] = []
    window_tokens = 0
    for f in plan.chunks.files:
        docs = list(iter_chunk_documents(fs, f"{root}/chunks/part-{f.file_index:06d}.parquet"))
        encs = tokenizer.encode_batch([d.text for d in docs])
        windows = []
        for enc, doc in zip(encs, docs, strict=True):
            windows += [(enc.ids, w) for w in plan_windows(doc.spans, enc.n_tokens, plan.context)]
        lengths = [w.length for _, w in windows]
        window_tokens += sum(lengths)
        for batch in batch_windows(lengths, config.batch_tokens, not encoder.pad_safe):
            longest = lengths[batch[0]]
            ids = np.zeros((len(batch), longest), dtype=np.int64)
            for b, i in enumerate(batch):
                doc_ids, w = windows[i]
                ids[b, : w.length] = doc_ids[w.start : w.end]
            batches_ids.append(torch.from_numpy(ids))

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for ids in batches_ids:
                encoder.forward(ids)
        return time.perf_counter() - start

    def stage() -> tuple[float, dict, dict]:
        start = time.perf_counter()
        result = run_embed(config)
        return time.perf_counter() - start, result.manifest.totals.to_dict(), result.timings

    bare_s = min(bare() for _ in range(args.repeat))
    runs = [stage() for _ in range(args.repeat)]
    fastest = min(runs, key=lambda r: r[0])
    stage_s = fastest[0]
    totals = runs[0][1]
    assert totals["window_tokens"] == window_tokens, (totals, window_tokens)
    report = {
        "machine": machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "model": {
            "d_model": encoder.info.hidden_size,
            "layers": encoder.model.cfg.n_layers,
            "vocab": encoder.model.cfg.vocab_size,
            "window": plan.context.window,
            "context": plan.context.context,
            "batch_tokens": config.batch_tokens,
        },
        "chunks": totals["chunks"],
        "chunk_tokens": totals["tokens"],
        "window_tokens": window_tokens,
        "padded_tokens": totals["padded_tokens"],
        "batches": len(batches_ids),
        "baseline_tokens_per_s": round(window_tokens / bare_s),
        "stage_tokens_per_s": round(window_tokens / stage_s),
        "ratio": round(bare_s / stage_s, 3),
        "baseline_seconds": round(bare_s, 2),
        "stage_seconds": round(stage_s, 2),
        "stage_phase_seconds": {k: round(v, 2) for k, v in fastest[2].items()},
    }
    (out / "embed_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    shutil.rmtree(root / "embeddings", ignore_errors=True)


if __name__ == "__main__":
    main()
