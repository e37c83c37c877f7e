"""The span and lexical channels: build throughput, bytes on disk, open time, query latency.

    .venv/bin/python benchmarks/bench_channels.py [--out build/bench-channels]
        [--tokens 3000000] [--files 8] [--queries 200] [--repeat 3]

Corpus: Python's documentation topics (real text, ~0.5 MB, ``pydoc_data.topics``) repeated
until ``--tokens`` tokens: copy 0 as shipped, every other copy with each topic's paragraphs
shuffled and 10% of its words replaced by words drawn from the topics' own words (seeded).
Why varied and not repeated: an exact copy would make every passage occur once per copy,
which real (deduplicated) corpora do not, and the suffix sort compares repeated passages
to their full length (see ``attribution/index/spans.py``); with 10% of the words replaced
two copies of a passage agree for ~10 words at a time, as near-duplicates do. Written as
``--files`` JSON Lines files (so the index can have 4 shards), chunked (64 tokens) with a
BPE tokenizer of 4,096 ids trained on the topics and embedded with a default-shaped random
builtin model (bench_embed.py ``_random_model``), in-process (tests/helpers.py).

* build, one core: a child process pinned to one CPU (``sched_setaffinity``; Rayon,
  OpenMP and tokenizers threads 1) over the whole corpus as one shard, best of
  ``--repeat``: ``channels.segments`` (join each document's chunks, re-tokenize) and
  ``build_span_shard`` (token stream, chunk table, suffix sort) on rows already read;
  ``build_lexical_shard`` on chunk ids and texts already read; and the index stage's own
  ``build_shard_channels`` per channel and for both (reads the chunk Parquet, re-tokenizes,
  builds, copies + hashes into ROOT/index). Tokens/s and words/s (``\\w+`` words).
* size: each channel's files (from the index manifest) / corpus tokens, beside the dense
  FAISS shards', for the index built by ``tda index build`` (``run_index``) at 1 shard and
  at 4 shards of the same corpus.
* open: per channel, its shards' files opened (``SpanShard.open`` + ``SpanIndex``,
  ``LexicalShard.open`` + ``LexicalIndex``; tokengrams checks the table is sorted), and
  ``open_channels`` with and without sha256 verification; median of 5, files in the page
  cache.
* query, per query p50/p99 over ``--queries`` queries of each kind at 1 and 4 shards:
  a query is 128 tokens, the region being attributed is the last 64, after 64 tokens of
  context (the attributor's span query for a 64-token output chunk); ``verbatim`` queries
  are cut from the corpus, ``shuffled`` ones are its words in random order (they match
  little). Span: ``SpanIndex.search(tokens, (64, 128), k=100)`` with the retriever's
  min_len / max_count; lexical: ``LexicalIndex.search(text, k=100)``, text = the region
  with the attributor's ``LEXICAL_CONTEXT`` tokens before it; fused:
  ``Retriever.retrieve`` of one ``ChunkQuery`` (the region's search vector, encoded like
  the attributor's, + the same tokens and text) on dense + span + lexical, 100 candidates
  per channel; dense alone for reference. Ten queries of warm-up first.
* projection: bytes per token (4-shard index) x 1.35e12 tokens, one-core build hours at
  the measured rate, and the hours opening every span shard takes. A LINEAR projection: the
  suffix sort is O(n log n) comparisons per shard (slower on repeated passages), the
  tokengrams open check and BM25 postings grow with the shard, term dictionaries repeat
  per shard.

Prints a table and writes build/bench_channels.json (the folder above ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine  # benchmarks/machine.py (this folder is sys.path[0])

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.helpers chunks and embeds the root in-process

PROJECTED_TOKENS = 1.35e12
REGION = (64, 128)  # the attributed output chunk inside a 128-token span query
CANDIDATES = 100
VARY_RATE = 0.10  # the share of words replaced in every copy after the first
_WORD = re.compile(r"\w+")
# One core for the build child: Rayon (tokengrams' sort, tokenizers), OpenMP, BLAS.
_ONE_THREAD = {
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# --------------------------------------------------------------------------------------
# corpus and root


def _vary(text: str, rng: random.Random, pool: list[str]) -> str:
    """``text`` with its paragraphs shuffled and ``VARY_RATE`` of its words replaced by
    words drawn from ``pool`` (the topics' words, with their frequencies)."""
    paragraphs = text.split("\n\n")
    rng.shuffle(paragraphs)
    return _WORD.sub(
        lambda m: pool[rng.randrange(len(pool))] if rng.random() < VARY_RATE else m.group(0),
        "\n\n".join(paragraphs),
    )


def build_root(out: Path, tokens: int, files: int) -> tuple[Path, dict]:
    """Corpus files, model, chunks and embeddings under ``out`` -> (root, corpus facts)."""
    from pydoc_data.topics import topics

    from bench_embed import _random_model

    from tda.attribution.corpus.tokenizer import load_tokenizer
    from tda.schemas import EmbedConfig
    from tests.helpers import chunk_root, embed_root

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    items = sorted(topics.items())
    original = out / "topics.jsonl"  # the tokenizer's training text (as bench_attribute)
    original.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in items))
    model = _random_model(out / "model", original, 4096)
    tokenizer = load_tokenizer(model)
    per_copy = sum(e.n_tokens for e in tokenizer.encode_batch([v for _, v in items]))
    copies = max(1, -(-tokens // per_copy))
    pool = [w for _, v in items for w in _WORD.findall(v)]
    corpus = out / "corpus"
    corpus.mkdir()
    with contextlib.ExitStack() as stack:
        handles = [
            stack.enter_context(open(corpus / f"part-{i:03d}.jsonl", "w")) for i in range(files)
        ]
        n = 0
        for copy in range(copies):
            rng = random.Random(copy)
            for name, text in items:
                doc = text if copy == 0 else _vary(text, rng, pool)
                line = json.dumps({"id": f"{copy:03d}-{name}", "text": doc}) + "\n"
                handles[n % files].write(line)  # round robin: files of even size
                n += 1
    root = out / "root"
    chunk_root(root, sorted(corpus.glob("*.jsonl")), model)
    embed_root(EmbedConfig(root=str(root), model=model))
    return root, {"copies": copies, "documents": copies * len(items), "files": files}


def _corpus_counts(root: Path) -> tuple[int, int, int]:
    """(chunks, tokens, words) of the chunked corpus (chunks tile their documents)."""
    import pyarrow.parquet as pq

    from tda.attribution.index.lexical import words

    chunks = tokens = n_words = 0
    for part in sorted((root / "chunks").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["token_start", "token_end", "text"])
        chunks += table.num_rows
        starts = table["token_start"].to_numpy()
        ends = table["token_end"].to_numpy()
        tokens += int((ends - starts).sum())
        n_words += sum(len(words(t)) for t in table["text"].to_pylist())
    return chunks, tokens, n_words


# --------------------------------------------------------------------------------------
# build throughput (the child process, one core)


def _pin_one_core() -> int | None:
    """Pin this process (and the threads it starts later) to one CPU; None if it cannot."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def measure_build(root: Path, scratch: Path, repeat: int) -> dict:
    """One-core build timings of both channels over shard 0 of ``root`` (best of
    ``repeat``); ``scratch`` is a build root whose chunks/ is ``root``'s, so the stage's
    ``build_shard_channels`` writes there, not into ``root``'s index."""
    import numpy as np

    from tda.attribution.index.channels import (
        _shard_rows,  # the stage's own chunk reader: the same rows as a build
        build_shard_channels,
        channel_tokenizer,
        segments,
    )
    from tda.attribution.index.lexical import build_lexical_shard, words
    from tda.attribution.index.spans import build_span_shard
    from tda.attribution.io.fs import build_root as fs_root
    from tda.schemas import IndexManifest

    fs, built = fs_root(str(root))
    manifest = IndexManifest.from_json((root / "index" / "manifest.json").read_text())
    tokenizer = channel_tokenizer(manifest.tokenizer)
    files = [f for s in manifest.shards for f in s.embed_files]
    rows = list(_shard_rows(fs, built, files))
    chunk_ids = np.concatenate([np.asarray(r["chunk_id"], np.int64) for r in rows])
    texts = [t for r in rows for t in r["text"]]
    n_words = sum(len(words(t)) for t in texts)

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / "chunks").symlink_to((root / "chunks").resolve(), target_is_directory=True)
    sfs, sroot = fs_root(str(scratch))
    vocab = tokenizer.info.vocab_size

    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    n_tokens = 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmp:
            t = time.perf_counter()
            segs = [s for r in rows for s in segments(r, tokenizer)]
            keep("span: segments", time.perf_counter() - t)
            n_tokens = sum(len(s.ids) for s in segs)
            t = time.perf_counter()
            build_span_shard(iter(segs), vocab, tmp, "shard-00000")
            keep("span: build_span_shard", time.perf_counter() - t)
            del segs
            t = time.perf_counter()
            build_lexical_shard(chunk_ids, texts, tmp, "shard-00000")
            keep("lexical: build_lexical_shard", time.perf_counter() - t)
        for name, channels in (
            ("span", ("span",)),
            ("lexical", ("lexical",)),
            ("span + lexical", ("span", "lexical")),
        ):
            shutil.rmtree(scratch / "index", ignore_errors=True)
            t = time.perf_counter()
            build_shard_channels(sfs, sroot, 0, files, channels, tokenizer)
            keep(f"build_shard_channels: {name}", time.perf_counter() - t)
    best["span: segments + build_span_shard"] = (
        best["span: segments"] + best["span: build_span_shard"]
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "tokens": n_tokens,
        "words": n_words,
        "chunks": len(chunk_ids),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "tokens_per_s": {k: round(n_tokens / v) for k, v in best.items()},
        "words_per_s": {k: round(n_words / v) for k, v in best.items()},
    }


def _build_in_child(root: Path, scratch: Path, repeat: int) -> dict:
    """:func:`measure_build` in a fresh process pinned to one core."""
    result = scratch.parent / "build_child.json"
    env = {**os.environ, **_ONE_THREAD}
    subprocess.run(
        [
            sys.executable, __file__, "--child-build", str(root), "--child-scratch",
            str(scratch), "--repeat", str(repeat), "--child-result", str(result),
        ],
        env=env,
        check=True,
    )  # fmt: skip
    return json.loads(result.read_text())


# --------------------------------------------------------------------------------------
# queries


def make_queries(root: Path, n: int, seed: int = 0) -> dict[str, list]:
    """``n`` verbatim and ``n`` shuffled-word queries of 128 token ids (int64 arrays)."""
    import numpy as np

    from tda.attribution.index.channels import _shard_rows, channel_tokenizer, segments
    from tda.attribution.io.fs import build_root as fs_root
    from tda.schemas import IndexManifest

    fs, built = fs_root(str(root))
    manifest = IndexManifest.from_json((root / "index" / "manifest.json").read_text())
    tokenizer = channel_tokenizer(manifest.tokenizer)
    files = [f for s in manifest.shards for f in s.embed_files]
    long = [
        s.ids
        for rows in _shard_rows(fs, built, files)
        for s in segments(rows, tokenizer)
        if len(s.ids) >= 512
    ]
    rng = random.Random(seed)
    length = REGION[1]
    verbatim, shuffled = [], []
    while len(verbatim) < n or len(shuffled) < n:
        ids = long[rng.randrange(len(long))]
        at = rng.randrange(len(ids) - 2 * length + 1)
        if len(verbatim) < n:
            verbatim.append(np.asarray(ids[at : at + length], dtype=np.int64))
        if len(shuffled) < n:
            # twice the tokens' words, shuffled: enough words for 128 tokens after re-tokenizing
            passage = tokenizer.decode(np.asarray(ids[at : at + 2 * length]).tolist()).split()
            rng.shuffle(passage)
            (enc,) = tokenizer.encode_batch([" ".join(passage)])
            if enc.n_tokens >= length:
                shuffled.append(np.asarray(enc.ids[:length], dtype=np.int64))
    return {"verbatim": verbatim, "shuffled": shuffled}


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def _timed(fn, items, warm: int = 10) -> tuple[list[float], list]:
    """Milliseconds of ``fn(item)`` per item after ``warm`` untimed calls, and the results."""
    for item in items[:warm]:
        fn(item)
    ms, results = [], []
    for item in items:
        t = time.perf_counter()
        results.append(fn(item))
        ms.append((time.perf_counter() - t) * 1000)
    return ms, results


def _median_seconds(fn, times: int = 5) -> float:
    runs = []
    for _ in range(times):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return round(statistics.median(runs), 4)


def measure_index(root: Path, queries: dict[str, list], corpus_tokens: int) -> dict:
    """Sizes, open times and query latencies of the index built in ``root``."""
    import numpy as np

    from tda.attribution.attributor import LEXICAL_CONTEXT
    from tda.attribution.encoders import DocumentTokens, encode_whole, load_encoder
    from tda.attribution.index.channels import open_channels
    from tda.attribution.index.lexical import LexicalIndex, LexicalShard
    from tda.attribution.index.reader import IndexReader
    from tda.attribution.index.retrieval import (
        SPAN_MAX_COUNT,
        SPAN_MIN_TOKENS,
        ChunkQuery,
        Retriever,
    )
    from tda.attribution.index.spans import SpanIndex, SpanShard
    from tda.attribution.io.fs import build_root as fs_root
    from tda.schemas import IndexManifest

    fs, built = fs_root(str(root))
    manifest = IndexManifest.from_json((root / "index" / "manifest.json").read_text())
    index_dir = root / "index"

    # size: every file the manifest lists, by what it belongs to
    size = {"dense": 0, "span": 0, "lexical": 0}
    owner = {r: c.name for c in manifest.channels for s in c.shards for r in s.values()}
    for f in manifest.files:
        if f.path in owner:
            size[owner[f.path]] += f.size
        elif f.path.startswith("shards/"):
            size["dense"] += f.size
    sizes = {
        name: {"bytes": b, "bytes_per_token": round(b / corpus_tokens, 3)}
        for name, b in size.items()
    }

    # open
    channel = {c.name: c for c in manifest.channels}
    vocab = int(channel["span"].settings["vocab_size"])

    def open_span() -> SpanIndex:
        return SpanIndex(
            [
                SpanShard.open(
                    str(index_dir / r["tokens"]),
                    str(index_dir / r["table"]),
                    str(index_dir / r["chunks"]),
                    vocab,
                )
                for r in channel["span"].shards
            ]
        )

    def open_lexical() -> LexicalIndex:
        shards = [
            LexicalShard.open({role: str(index_dir / p) for role, p in r.items()})
            for r in channel["lexical"].shards
        ]
        return LexicalIndex(shards)

    opens = {
        "span": _median_seconds(open_span),
        "lexical": _median_seconds(open_lexical),
        "open_channels": _median_seconds(lambda: open_channels(fs, built, manifest, False)),
        "open_channels, verify": _median_seconds(lambda: open_channels(fs, built, manifest, True)),
    }

    # queries
    reader = IndexReader.open(str(root), verify=False)
    retriever = Retriever(reader)
    span, lexical = reader.channels.span, reader.channels.lexical
    encoder = load_encoder(manifest.encoder.spec, "cpu")
    tokenizer = encoder.load_tokenizer()
    a, b = REGION
    latency: dict[str, dict] = {}
    hits: dict[str, dict] = {}
    for kind, qs in queries.items():
        # The attributor's search vector for a full output chunk: the chunk encoded alone
        # in the index's window (encode_whole), untimed here.
        docs = [DocumentTokens(ids=q[a:b], spans=np.array([[0, b - a]])) for q in qs]
        vectors = encode_whole(
            encoder, docs, manifest.pooling, manifest.context.window, manifest.context.align
        ).vectors
        texts = [tokenizer.decode(q[a - LEXICAL_CONTEXT : b].tolist()) for q in qs]
        chunk_queries = [
            ChunkQuery(vector=v, tokens=q, region=REGION, text=t)
            for v, q, t in zip(vectors, qs, texts, strict=True)
        ]
        ms, found = _timed(
            lambda q: span.search(
                q, REGION, CANDIDATES, min_len=SPAN_MIN_TOKENS, max_count=SPAN_MAX_COUNT
            ),
            qs,
        )
        latency[f"span, {kind}"] = _percentiles(ms)
        hits[f"span, {kind}"] = statistics.median(len(h) for h in found)
        ms, found = _timed(lambda t: lexical.search(t, CANDIDATES), texts)
        latency[f"lexical, {kind}"] = _percentiles(ms)
        hits[f"lexical, {kind}"] = statistics.median(len(h) for h in found)
        for name, channels in (
            ("fused dense+span+lexical", ("dense", "span", "lexical")),
            ("dense alone", ("dense",)),
        ):
            ms, found = _timed(
                lambda q, channels=channels: retriever.retrieve([q], channels, CANDIDATES),
                chunk_queries,
            )
            latency[f"{name}, {kind}"] = _percentiles(ms)
            hits[f"{name}, {kind}"] = statistics.median(len(r[0].fused) for r in found)
    return {
        "shards": len(manifest.shards),
        "vectors": manifest.vectors,
        "nprobe": manifest.nprobe,
        "factory": manifest.factory,
        "lexical_threads": lexical.threads,
        "span_threads": span.threads,
        "size": sizes,
        "open_s": opens,
        "latency": latency,
        "median_candidates": hits,
    }


# --------------------------------------------------------------------------------------
# report


def _projection(build: dict, index: dict, tokens: int) -> dict:
    """Bytes, one-core build hours and open hours at :data:`PROJECTED_TOKENS` (linear), from
    the one-core ``build`` rates and an ``index``'s sizes and open times over ``tokens``."""
    rate = build["tokens_per_s"]
    sizes = index["size"]
    return {
        "note": (
            "linear projection of this run's bytes per token (4-shard index) and one-core "
            "build rate to 1.35e12 tokens: the suffix sort is O(n log n) per shard and "
            "slower on repeated passages, so treat core-hours as a lower bound"
        ),
        "tokens": PROJECTED_TOKENS,
        "terabytes": {
            name: round(s["bytes_per_token"] * PROJECTED_TOKENS / 1e12, 2)
            for name, s in sizes.items()
        },
        "build_core_hours": {
            "span (build_shard_channels)": round(
                PROJECTED_TOKENS / rate["build_shard_channels: span"] / 3600
            ),
            "lexical (build_shard_channels)": round(
                PROJECTED_TOKENS / rate["build_shard_channels: lexical"] / 3600
            ),
            "span + lexical (build_shard_channels)": round(
                PROJECTED_TOKENS / rate["build_shard_channels: span + lexical"] / 3600
            ),
        },
        # opening a span shard is a pass over its table (tokengrams' sortedness check), so
        # linear in tokens: summed over all shards, whichever processes open them. (A
        # lexical shard's open is a few memory maps, about constant per shard.)
        "open_hours": {
            "span": round(index["open_s"]["span"] / tokens * PROJECTED_TOKENS / 3600, 1)
        },
    }


def _table(report: dict) -> str:
    build = report["build_one_core"]
    lines = [
        f"corpus: {report['corpus']['tokens']:,} tokens, {report['corpus']['words']:,} words, "
        f"{report['corpus']['chunks']:,} chunks ({report['corpus']['copies']} copies of the "
        f"topics)",
        "",
        f"{'build, one core':<44} {'s':>8} {'tokens/s':>12} {'words/s':>12}",
    ]
    for name, seconds in build["seconds"].items():
        lines.append(
            f"{name:<44} {seconds:>8.2f} {build['tokens_per_s'][name]:>12,} "
            f"{build['words_per_s'][name]:>12,}"
        )
    for shards in report["indexes"]:
        lines += [
            "",
            f"index, {shards['shards']} shard(s): bytes per token "
            + ", ".join(f"{k} {v['bytes_per_token']}" for k, v in shards["size"].items())
            + "; open (s) "
            + ", ".join(f"{k} {v}" for k, v in shards["open_s"].items()),
            f"{'query (one at a time)':<44} {'p50 ms':>8} {'p99 ms':>8} {'cands':>6}",
        ]
        for name, lat in shards["latency"].items():
            lines.append(
                f"{name:<44} {lat['p50_ms']:>8.2f} {lat['p99_ms']:>8.2f} "
                f"{shards['median_candidates'][name]:>6}"
            )
    proj = report["projection"]
    lines += [
        "",
        f"projection to {proj['tokens']:.3g} tokens (linear): TB "
        + ", ".join(f"{k} {v}" for k, v in proj["terabytes"].items())
        + "; one-core build hours "
        + ", ".join(f"{k} {v:,}" for k, v in proj["build_core_hours"].items())
        + "; open hours (all shards) "
        + ", ".join(f"{k} {v:,}" for k, v in proj["open_hours"].items()),
    ]
    return "\n".join(lines)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "build" / "bench-channels"))
    parser.add_argument("--tokens", type=int, default=3_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child-build", help=argparse.SUPPRESS)
    parser.add_argument("--child-scratch", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_build:
        cpu = _pin_one_core()
        result = measure_build(Path(args.child_build), Path(args.child_scratch), args.repeat)
        result["pinned_cpu"] = cpu
        Path(args.child_result).write_text(json.dumps(result))
        return
    if args.files < 4:
        parser.error("--files must be at least 4 (the 4-shard index needs 4 input files)")

    import torch

    from tda.pipeline.index import run_index
    from tda.schemas import IndexConfig

    out = Path(args.out).resolve()
    root, corpus = build_root(out, args.tokens, args.files)
    chunks, tokens, n_words = _corpus_counts(root)
    corpus.update(chunks=chunks, tokens=tokens, words=n_words)

    indexes = []
    build = None
    queries = None
    for shards in (1, 4):
        run_index(IndexConfig(root=str(root), shards=shards, overwrite=True))
        if build is None:  # the whole corpus as one shard
            build = _build_in_child(root, out / "scratch-root", args.repeat)
            queries = make_queries(root, args.queries)
        indexes.append(measure_index(root, queries, tokens))

    report = {
        "machine": machine(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            tokengrams=_version("tokengrams"),
            tokenizers=_version("tokenizers"),
            faiss=_version("faiss-cpu") or _version("faiss-gpu"),
        ),
        "corpus": corpus,
        "query": {
            "tokens": REGION[1],
            "region": list(REGION),
            "candidates": CANDIDATES,
            "per_kind": args.queries,
        },
        "build_one_core": build,
        "indexes": indexes,
        "projection": _projection(build, indexes[-1], tokens),
    }
    (out.parent / "bench_channels.json").write_text(json.dumps(report, indent=2) + "\n")
    print(_table(report))


if __name__ == "__main__":
    main()
