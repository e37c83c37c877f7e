"""Attribution latency against one forward pass of the same text.

    .venv/bin/python benchmarks/bench_attribute.py [--out build/bench-attribute] [--n 20]
        [--window N --context N]   # the index's context policy (default: the embed stage's)

Index: Python's own documentation topics (real text, ~0.5 MB, shipped with CPython) chunked,
embedded and indexed with a builtin model of the default ``tda model train`` shape
(d_model 128, 4 layers, vocabulary 4,096; random weights: they do not change the cost).

For ``--n`` (prompt, output) pairs cut from the corpus (prompt 64 tokens, output 128
tokens = 2 chunks of 64), timed after a warm-up:

* forward: ``encoder.forward(prompt + output ids, with_logits=True)`` alone
  (torch.inference_mode), the cost of one forward pass of the same text;
* attribute: ``Attributor.attribute(prompt_ids, output_ids)`` end to end: with every
  default, then per ``--input-attribution`` (none, grad, ig with 32 steps) with no
  re-rank, and ``none`` with each ``--rerank`` over 100 candidates, each with its own
  breakdown (forward incl. pooling and the logit split, backward, search, metadata).

Ratio = attribute median / forward median (target <= 1.5x, plus <= 50 ms for search and
metadata). Writes build/attribute_bench.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def build_index(out: Path, window: int | None = None, context: int | None = None) -> Path:
    """The benchmark's index: documentation topics, default-shaped random builtin model."""
    import json as _json
    from pydoc_data.topics import topics

    from bench_embed import _random_model

    from tda.pipeline.chunk import run_chunk
    from tda.pipeline.embed import run_embed
    from tda.pipeline.index import run_index
    from tda.schemas import ChunkConfig, EmbedConfig, IndexConfig

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    corpus = out / "topics.jsonl"
    corpus.write_text(
        "".join(_json.dumps({"id": k, "text": v}) + "\n" for k, v in sorted(topics.items()))
    )
    model = _random_model(out / "model", corpus, 4096)
    root = out / "root"
    run_chunk(ChunkConfig(inputs=(str(corpus),), out=str(root), tokenizer=model))
    run_embed(EmbedConfig(root=str(root), model=model, window=window, context=context))
    run_index(IndexConfig(root=str(root)))
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-attribute"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--window", type=int, default=None, help="[default: the embed stage's]")
    parser.add_argument("--context", type=int, default=None, help="[default: the embed stage's]")
    args = parser.parse_args()

    from pydoc_data.topics import topics

    import torch

    from tda.attribution.attributor import Attributor

    out = Path(args.out)
    root = build_index(out, args.window, args.context)

    attributor = Attributor.from_root(str(root), device="cpu")
    encoder = attributor.encoder
    tokenizer = attributor.tokenizer
    texts = [v for _, v in sorted(topics.items())]
    pairs = []
    for text in texts:
        (enc,) = tokenizer.encode_batch([text])
        ids = enc.ids.tolist()
        if len(ids) >= 400:
            pairs.append((ids[200:264], ids[264:392]))
    pairs = pairs[: args.n]

    def forward(prompt, output) -> float:
        ids = torch.tensor([prompt + output])
        start = time.perf_counter()
        with torch.inference_mode():
            encoder.forward(ids, with_logits=True)
        return (time.perf_counter() - start) * 1000

    modes = {
        "defaults": {},
        "none": {"input_attribution": "none", "rerank": "none"},
        "grad": {"input_attribution": "grad", "rerank": "none"},
        "ig": {"input_attribution": "ig", "ig_steps": 32, "rerank": "none"},
        "none, --rerank concepts": {"input_attribution": "none", "rerank": "concepts"},
        "none, --rerank span": {"input_attribution": "none", "rerank": "span"},
    }
    for prompt, output in pairs[:3]:  # warm up
        forward(prompt, output)
        for kw in modes.values():
            attributor.attribute(prompt, output, **kw)
    forwards = [forward(p, o) for p, o in pairs]
    results = {}
    for mode, kw in modes.items():
        reports = [attributor.attribute(p, o, **kw) for p, o in pairs]
        timing = {
            name: statistics.median(getattr(r.timings, name) for r in reports)
            for name in ("forward", "backward", "search", "metadata", "total")
        }
        timing["search_plus_metadata"] = statistics.median(
            r.timings.search + r.timings.metadata for r in reports
        )
        timing["ratio_to_forward"] = timing["total"] / statistics.median(forwards)
        results[mode] = {k: round(v, 3) for k, v in timing.items()}
        results[mode]["settings"] = {
            "input_attribution": reports[0].settings.input_attribution,
            "query_span": reports[0].settings.query_span,
            "rerank": reports[0].settings.rerank,
            "candidates": reports[0].settings.candidates,
        }
    report = {
        "machine": machine(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "index_vectors": attributor.manifest.vectors,
        "factory": attributor.manifest.factory,
        "context": {
            "window": attributor.manifest.context.window,
            "context": attributor.manifest.context.context,
        },
        "pairs": len(pairs),
        "prompt_tokens": 64,
        "output_tokens": 128,
        "output_chunks": 2,
        "forward_ms_median": round(statistics.median(forwards), 3),
        "attribute_ms": results,
    }
    (out.parent / "attribute_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
