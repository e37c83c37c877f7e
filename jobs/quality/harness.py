"""``make eval`` / ``tda eval``: how often do tda's top chunks hold the planted source of
what the model said, and does removing them change what the model says?

1. **Corpus** (real text, offline): Python's documentation topics as background, plus
   planted facts: ``{entity} was founded in {place}.``, entities and places made of
   ordinary words. Each fact is stated in ``--copies`` documents (source ``facts``), after
   ``--lead`` background sentences (so mid-document); every entity also gets distractor
   documents (``... is known for its copper bells.``); the even-numbered facts get
   ``--paraphrase-docs`` more documents in the paraphrase's wording (``The place where
   ... was founded is {place}.``). ``--passages`` long documents of documentation text
   found nowhere else in the corpus (source ``passages``), the odd-numbered ones copied
   into a second source (``mirror``).
2. **Model**: ``tda model train`` (pinned ``--threads``: same seed, same weights);
   **outputs**: greedy generation after the verbatim prompt (every fact), after it
   preceded by background sentences (long prompt, 6-token outputs), the place alone
   after at least 50 tokens (short output) and after the paraphrase (odd-numbered facts
   only, never seen in that wording); a fact counts as reproduced when the output starts
   with its place. Only reproduced facts are scored. Passage outputs are given, not
   generated: 216 tokens of a passage as stored, 17 tokens into a training chunk, after
   the document before them (long output; near duplicate for a mirrored passage), each
   output chunk one scored item.
3. **Index**: chunks cut once; one build root per representation (:class:`Variant`, all
   product options: ``--pooling``, ``--whiten`` or a ``--factory`` such as PCA centring,
   embed ``--window`` / ``--context``), ``--jobs`` stages at once; the default
   representation's index also holds the span and lexical channels (``tda index
   build``'s default), every other one the dense channel only.
4. **Scoring**: each method ranks training chunks; relevant = the fact's own chunks that
   contain the place, or the chunks whose characters overlap a passage output chunk's in
   every copy of the passage. MRR, recall@1 / @10, how often a distractor outranks every
   source, and for near duplicates how often both copies come back. Methods: tda
   through ``Attributor.attribute`` (each variant, dense channel, with both
   ``--query-span`` values, with and without ``--rerank concepts``; on the default
   index every channel alone, each fusion, and the default fusion with ``--rerank
   concepts``, ``--rerank span`` and ``--rerank evidence``), hybrids on the best dense
   option's candidates (``--rerank span``, and a BM25 re-rank), BM25 (``rank-bm25``), exact span
   (OLMoTrace-style, our own 3-gram index), Grad-Cos on the last block, TRAK (dattri,
   when importable) and random. Every tda option is compared with the best by a seeded
   paired bootstrap over the scored items; the report says whether the product's
   defaults are the best option, tied with it, or worse, and how often the default's
   confidence levels hold a relevant first hit.
5. **Counterfactual**: retrain without (a) the top-k chunks per reproduced fact of the
   default tda option, the best one (when another), BM25 and exact span, (b) the true
   sources, (c) as many random chunks as (a)'s first, cut out of the corpus with ``tda
   prune apply`` at chunk level; (d) nothing = the original model (training is
   deterministic). Reports the mean change in the answer's log-probability after the
   verbatim prompt and its share of the oracle's change.

Results go to OUT/quality.json and OUT/quality.md (the tables docs/quality.md publishes,
ending with the default's targets).

:func:`main` runs these steps, one function each: build the corpus (:func:`build_corpus`),
train (:func:`train`, then :func:`probe_outputs`), index the variants
(:func:`index_variants`, then :func:`make_probes` on its chunks), rank (:func:`rank_tda`,
:func:`rank_channels`, :func:`rank_hybrids`, :func:`rank_baselines`,
:func:`rank_gradients`; every method a
:class:`~tda.jobs.quality.rankers.Ranker`), the counterfactual
(:func:`run_counterfactual`, retraining in the background while the gradients compute)
and :func:`write_tables`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .chunks import ChunkTable
from .commands import Tda, Training
from .counterfactual import run_counterfactual
from .facts import build_corpus, make_facts
from .gradients import GradCosRanker, TRAKRanker, chunk_pairs, dattri_available
from .outputs import Outputs, describe_conditions, probe_outputs
from .passages import make_passages, make_probes
from .rankers import (
    BM25Ranker,
    BM25Rerank,
    ChunkRankings,
    ExactSpanRanker,
    Prefetch,
    RandomRanker,
    Ranker,
    Rankings,
    TdaRanker,
    rank_all,
    rank_probes,
)
from .report import QualityReport, Tables, markdown_tables, print_table
from .scoring import (
    MethodRow,
    Option,
    best_option,
    compare_to_best,
    confidence_precision,
    default_option,
    score,
    variant_options,
)
from .variants import (
    CHANNEL_RERANKS,
    CHANNEL_SETS,
    DEFAULT_CHANNELS,
    Variant,
    build_roots,
    channel_row,
    cut_chunks,
    default_variant,
    make_variants,
)

if TYPE_CHECKING:
    from tda.attribution.attributor import Attributor

__all__ = ["Options", "main", "parse_options"]

# Every pooling ``tda embed`` offers: the tda rows when --pooling is not given.
POOLINGS = ["mean:concepts", "max:concepts", "mean:hidden", "max:hidden", "last:hidden", "weights"]


@dataclass(frozen=True)
class Options:
    """The harness's command line (``--help`` says what each option does)."""

    out: str
    facts: int
    copies: int
    paraphrase_docs: int
    lead: int
    passages: int
    steps: int
    max_seq: int
    lr: float
    pooling: list[str] | None
    no_variants: bool
    candidates: int
    gradients: str
    trak_dim: int
    counterfactual_k: int
    jobs: int
    threads: int
    seed: int


def parse_options(argv: list[str] | None = None, prog: str | None = None) -> Options:
    """``argv`` (default: the process's arguments) -> :class:`Options`; ``--help`` prints
    the options and exits."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/eval")
    parser.add_argument("--facts", type=int, default=48)
    parser.add_argument("--copies", type=int, default=3, help="Documents stating each fact.")
    parser.add_argument(
        "--paraphrase-docs",
        type=int,
        default=2,
        help="Extra documents in the paraphrase's wording for every even-numbered fact.",
    )
    # 1,200 steps of 16 x 128 tokens reproduced 48 of 48 facts (lr 0.003; 0.006: 47); 600
    # steps of 16 x 256 tokens, the same cost, only 9 (13 at lr 0.006).
    parser.add_argument(
        "--lead",
        type=int,
        default=3,
        help="Background sentences before every planted statement, so sources sit "
        "mid-document with left context (0: statements open their documents).",
    )
    parser.add_argument(
        "--passages",
        type=int,
        default=4,
        help="Long passage documents for the long-output (even-numbered) and near-duplicate "
        "(odd-numbered, copied into a second source) conditions (0: neither condition).",
    )
    parser.add_argument("--steps", type=int, default=1200, help="Builtin model training steps.")
    parser.add_argument("--max-seq", type=int, default=128, help="Builtin model context.")
    parser.add_argument("--lr", type=float, default=0.003, help="Training learning rate.")
    parser.add_argument(
        "--pooling",
        action="append",
        default=None,
        help="Representations to test (repeatable; default: the embed stage's options).",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="Only the poolings: no centred / whitened / left-context variants.",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=100,
        help="tda candidates per channel that fusion and a re-rank order.",
    )
    parser.add_argument(
        "--gradients",
        choices=("auto", "gradcos", "none"),
        default="auto",
        help="Gradient baselines: auto = Grad-Cos, plus dattri's TRAK when importable.",
    )
    parser.add_argument("--trak-dim", type=int, default=512, help="TRAK projection size.")
    parser.add_argument(
        "--counterfactual-k",
        type=int,
        default=10,
        help="Retrain without each method's top-k chunks per reproduced fact (0: skip); "
        "one retraining each for the default tda option, the best one when it differs, "
        "BM25, exact span, the true sources and random chunks.",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="tda commands run at once (embeds, index builds, counterfactual trainings).",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="Torch / OpenMP threads per process (pinned)."
    )
    parser.add_argument("--seed", type=int, default=0)
    options = Options(**vars(parser.parse_args(argv)))
    for name in ("passages", "counterfactual_k"):
        if getattr(options, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more")
    from tda.schemas import Pooling

    if options.pooling and Pooling().name not in options.pooling:
        parser.error(
            f"--pooling must include the default pooling {Pooling().name}: the default row "
            f"and the channel rows are attributed on its index"
        )
    return options


@contextlib.contextmanager
def timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the block's wall time in seconds (one decimal) as ``timings[step]``."""
    t = time.time()
    yield
    timings[step] = round(time.time() - t, 1)


def train(tda: Tda, corpus: Path, out: Path) -> Path:
    """Step 2: the builtin model trained on ``corpus``, in OUT/model."""
    model = out / "model"
    tda.train(corpus, model)
    return model


def index_variants(
    tda: Tda, variants: list[Variant], options: Options, corpus: Path, model: Path, out: Path
) -> tuple[dict[Variant, Path], ChunkTable]:
    """Step 3: the build root of each variant (the default one's with the default
    channels) and the chunk table (chunks cut once, shared by every root)."""
    base = cut_chunks(tda, corpus, model, out)
    roots = build_roots(tda, base, model, out, variants, options.jobs,
                        channels=default_variant(variants))  # fmt: skip
    return roots, ChunkTable(base)


@dataclass(frozen=True)
class TdaRun:
    """One variant attributed: its root's attributor, its dense candidates (the top
    ``--candidates`` per output and per passage output chunk, kept for the hybrids) and
    its top-10 rankings by re-rank (``none``, ``concepts``)."""

    attributor: Attributor
    dense: Prefetch
    ranked: dict[str, Rankings]
    probed: dict[str, ChunkRankings]


def rank_tda(
    variants: list[Variant], roots: dict[Variant, Path], outputs: Outputs, table: ChunkTable,
    candidates: int,
) -> tuple[list[MethodRow], dict[Variant, TdaRun]]:  # fmt: skip
    """Step 4, tda's rows: every variant through ``tda attribute``'s own options on the
    dense channel (``--channels dense``: what these rows have always measured), without a
    re-rank and with ``--rerank concepts`` (the row's ``concept_rerank`` metrics);
    variants on one root share its attributor."""
    from tda.attribution.attributor import Attributor

    attributors: dict[Path, Attributor] = {}
    rows, runs = [], {}
    for v in variants:
        root = roots[v]
        attributor = attributors.setdefault(root, Attributor.from_root(str(root), device="cpu"))
        dense = Prefetch(TdaRanker(attributor, v.query_span, "none", candidates), candidates)
        concepts = TdaRanker(attributor, v.query_span, "concepts", candidates)
        ranked = {"none": rank_all(dense, outputs), "concepts": rank_all(concepts, outputs)}
        probed = {"none": rank_probes(dense, outputs), "concepts": rank_probes(concepts, outputs)}
        runs[v] = TdaRun(attributor, dense, ranked, probed)
        plain = score(v.name, ranked["none"], outputs, table, probed["none"])
        reranked = score(v.name, ranked["concepts"], outputs, table, probed["concepts"])
        rows.append(MethodRow(v.name, {
            c: replace(m, concept_rerank=reranked.conditions[c])
            for c, m in plain.conditions.items()
        }))  # fmt: skip
    return rows, runs


@dataclass(frozen=True)
class ChannelRun:
    """The channel rows: each row, its rankings of the reproduced outputs by row name
    (the counterfactual removes the default's), and each row's confidence levels per
    attributed output (:attr:`TdaRanker.levels`)."""

    rows: list[MethodRow]
    ranked: dict[str, Rankings]
    levels: dict[str, dict[tuple[str, str], tuple[str, ...]]]


def rank_channels(
    attributor: Attributor, outputs: Outputs, table: ChunkTable, candidates: int
) -> ChannelRun:
    """Step 4, the channel rows on the default index (``attributor``; query span output):
    ``tda attribute --channels`` with every channel alone and each fusion
    (:data:`CHANNEL_SETS`; the default fusion is the product's default row), then the
    default fusion with each of :data:`CHANNEL_RERANKS`."""
    from tda.schemas import DEFAULT_QUERY_SPAN

    configs = [(c, "none") for c in CHANNEL_SETS] + [(DEFAULT_CHANNELS, r) for r in
                                                      CHANNEL_RERANKS]  # fmt: skip
    rows, ranked, levels = [], {}, {}
    for channels, rerank in configs:
        name = channel_row(channels, rerank)
        ranker = TdaRanker(attributor, DEFAULT_QUERY_SPAN, rerank, candidates, channels)
        ranked[name] = rank_all(ranker, outputs)
        probed = rank_probes(ranker, outputs)
        rows.append(score(name, ranked[name], outputs, table, probed, rerank))
        levels[name] = ranker.levels
    return ChannelRun(rows, ranked, levels)


def rank_hybrids(
    best: Variant, run: TdaRun, bm25: BM25Ranker, outputs: Outputs, table: ChunkTable,
    candidates: int,
) -> list[MethodRow]:  # fmt: skip
    """Step 4, the hybrids on the best dense option's candidates (``run``): ``tda
    attribute --rerank span`` (the product's lexical hybrid) and a BM25 re-rank (harness
    only: it needs corpus-wide statistics)."""
    span = TdaRanker(run.attributor, best.query_span, "span", candidates)
    hybrids: dict[str, Ranker] = {
        f"hybrid: {best.name}, --rerank span (top {candidates})": span,
        f"hybrid: {best.name} top {candidates}, BM25 re-rank": BM25Rerank(run.dense, bm25),
    }
    return [rank_and_score(name, r, outputs, table) for name, r in hybrids.items()]


def rank_and_score(name: str, ranker: Ranker, outputs: Outputs, table: ChunkTable) -> MethodRow:
    """One method's row: ``ranker`` over every reproduced output, then every passage
    output's chunks."""
    return score(name, rank_all(ranker, outputs), outputs, table, rank_probes(ranker, outputs))


def rank_baselines(
    rankers: dict[str, Ranker], outputs: Outputs, table: ChunkTable
) -> tuple[list[MethodRow], dict[str, Rankings]]:
    """Step 4, the baselines: each ranker's row, and its rankings of the reproduced
    outputs (the counterfactual removes BM25's and exact span's)."""
    rows, ranked = [], {}
    for name, r in rankers.items():
        ranked[name] = rank_all(r, outputs)
        rows.append(score(name, ranked[name], outputs, table, rank_probes(r, outputs)))
    return rows, ranked


def rank_gradients(
    options: Options, table: ChunkTable, encoder, outputs: Outputs
) -> list[MethodRow]:
    """Step 4, the gradient baselines ``--gradients`` asks for (Grad-Cos; TRAK with
    ``auto`` when dattri is importable), built one at a time: each holds every chunk's
    gradient."""
    builders: dict[str, Callable[[], Ranker]] = {}
    if options.gradients != "none":
        builders["Grad-Cos (last block)"] = lambda: GradCosRanker(table, encoder, options.seed)
    if options.gradients == "auto" and dattri_available():
        builders["TRAK (dattri, last block)"] = lambda: TRAKRanker(
            table, encoder, options.seed, proj_dim=options.trak_dim
        )
    rows = []
    for name, build in builders.items():
        ranker = build()
        if isinstance(ranker, TRAKRanker):  # every output scored in batches, then ranked
            chunks = [pair for p in outputs.all_probes()
                      for pair in chunk_pairs(p.prompt, p.output, p.spans)]  # fmt: skip
            ranker.prepare([(q.prompt, q.output) for q in outputs] + chunks)
        rows.append(rank_and_score(name, ranker, outputs, table))
    return rows


def write_tables(out: Path, report: QualityReport) -> None:
    """OUT/quality.json and OUT/quality.md, then the table on the console."""
    (out / "quality.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out / "quality.md").write_text(markdown_tables(report.tables))
    print_table(report)


def main(argv: list[str] | None = None, prog: str | None = None) -> QualityReport:
    """Run the harness (``argv``: its command line, see :func:`parse_options`; ``prog``:
    the name its usage line shows) and return its report."""
    options = parse_options(argv, prog)
    import torch

    from tda.attribution.encoders import load_encoder

    variants = make_variants(
        options.pooling or POOLINGS,
        not options.no_variants,
        (options.max_seq, options.max_seq // 4),
    )
    torch.set_num_threads(options.threads)
    started = time.time()
    timings: dict[str, float] = {}
    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(options.facts, options.seed)
    passages = make_passages(options.passages, options.seed)
    corpus = build_corpus(out, facts, options.copies, options.seed, options.paraphrase_docs,
                          options.lead, passages)  # fmt: skip
    tda = Tda(options.threads, Training(options.steps, options.seed, options.lr, options.max_seq))
    with timed(timings, "train"):
        model = train(tda, corpus, out)

    encoder = load_encoder(str(model), "cpu")
    outputs = probe_outputs(encoder, facts, options.paraphrase_docs, options.seed)
    print(f"facts reproduced: {outputs.reproduced} of {outputs.probed}", flush=True)
    with timed(timings, "index"):
        roots, table = index_variants(tda, variants, options, corpus, model, out)
    tokenizer = encoder.load_tokenizer()
    outputs = replace(outputs, probes=make_probes(passages, table, tokenizer, table.chunk_size))
    conditions = describe_conditions(outputs, tokenizer)
    with timed(timings, "tda"):
        rows, runs = rank_tda(variants, roots, outputs, table, options.candidates)
    dv = default_variant(variants)
    with timed(timings, "channels"):
        channels = rank_channels(runs[dv].attributor, outputs, table, options.candidates)
    rows += channels.rows
    # every tda option: each variant with and without --rerank concepts, each channel row
    tda_options = variant_options(variants) + [
        Option(r.name, r.rerank, r.name) for r in channels.rows
    ]
    rankings = {o.label: runs[v].ranked[o.rerank] for v in variants
                for o in variant_options([v])}  # fmt: skip
    rankings.update(channels.ranked)
    best = best_option(tda_options, rows)
    default = default_option(variants, rows)
    versus = compare_to_best(tda_options, rows, best, options.seed)
    # the hybrids re-rank the best dense option's candidates
    best_dense = best_option(variant_options(variants), rows)
    best_variant = next(v for v in variants if v.name == best_dense.row)
    bm25 = BM25Ranker(table)
    rows += rank_hybrids(best_variant, runs[best_variant], bm25, outputs, table,
                         options.candidates)  # fmt: skip

    # lexical and random baselines (cheap), then the counterfactual trainings run in the
    # background while the gradient baselines compute
    with timed(timings, "baselines"):
        lexical = {"BM25": bm25, "exact span": ExactSpanRanker(table),
                   "random": RandomRanker(table, options.seed)}  # fmt: skip
        more, ranked = rank_baselines(lexical, outputs, table)
        rows += more
        background = ThreadPoolExecutor(1)
        counterfactual = None
        verbatim = outputs.queries["verbatim"]
        if options.counterfactual_k > 0 and verbatim:
            removed = {default.label: rankings[default.label]}
            if best.label != default.label:
                removed[best.label] = rankings[best.label]
            removed |= {"BM25": ranked["BM25"], "exact span": ranked["exact span"]}
            counterfactual = background.submit(
                run_counterfactual, tda, options.counterfactual_k, options.seed, options.jobs,
                verbatim, removed, table, encoder, roots[variants[0]], corpus, out, model,
            )  # fmt: skip
        rows += rank_gradients(options, table, encoder, outputs)
    with timed(timings, "counterfactual_wait"):
        if counterfactual is not None:
            counterfactual = counterfactual.result()
        background.shutdown()
    # the default's confidence levels against its first hits
    default_row = next(r for r in rows if r.name == default.row)
    if default.row in channels.levels:
        levels = channels.levels[default.row]
    else:
        levels = runs[dv].dense.ranker.levels
    confidence = confidence_precision(levels, default_row, outputs)
    # table order: tda rows, channel rows, re-ranks and hybrids, then the baselines,
    # random last
    rows.sort(key=lambda r: r.name == "random")
    report = QualityReport(
        seed=options.seed, facts=len(facts), copies=options.copies,
        paraphrase_docs=options.paraphrase_docs, lead=options.lead,
        passages=options.passages, steps=options.steps,
        lr=options.lr, max_seq=options.max_seq, chunks=len(table.ids), probed=outputs.probed,
        reproduced=outputs.reproduced,
        tables=Tables(rows, best, default, versus, counterfactual, conditions, confidence),
        timings=timings, seconds=round(time.time() - started),
    )  # fmt: skip
    write_tables(out, report)
    return report
