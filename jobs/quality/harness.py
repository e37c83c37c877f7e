"""``make eval`` / ``tda eval``: how often do tda's top chunks hold the planted source of
what the model said, and does removing them change what the model says?

1. **Corpus** (real text, offline): Python's documentation topics as background, plus
   planted facts: ``{entity} was founded in {place}.``, entities and places made of
   ordinary words. Each fact is stated in ``--copies`` documents (source ``facts``), after
   ``--lead`` background sentences (so mid-document); every entity also gets distractor
   documents (``... is known for its copper bells.``); the even-numbered facts get
   ``--paraphrase-docs`` more documents in the paraphrase's wording (``The place where
   ... was founded is {place}.``).
2. **Model**: ``tda model train`` (pinned ``--threads``: same seed, same weights);
   **outputs**: greedy generation after the verbatim prompt (every fact), after it
   preceded by background sentences (long prompt) and after the paraphrase
   (odd-numbered facts only, never seen in that wording); a fact counts as reproduced
   when the output starts with its place. Only reproduced facts are scored.
3. **Index**: chunks cut once; one build root per representation (:class:`Variant`, all
   product options: ``--pooling``, ``--whiten`` or a ``--factory`` such as PCA centring,
   embed ``--window`` / ``--context``), ``--jobs`` stages at once.
4. **Scoring**: each method ranks training chunks; relevant = the fact's own chunks that
   contain the place. MRR, recall@1 / @10, and how often a distractor outranks every
   source. Methods: tda through ``Attributor.attribute`` (each variant with both
   ``--query-span`` values, with and without ``--rerank concepts``), hybrids on the best
   tda option's candidates (``--rerank span``, and a BM25 re-rank), BM25 (``rank-bm25``),
   exact span (OLMoTrace-style, our own 3-gram index), Grad-Cos on the last block, TRAK
   (dattri, when importable) and random. Every tda option is compared with the best by
   a seeded paired bootstrap over the facts; the report says whether the product's
   defaults are the best option, tied with it, or worse.
5. **Counterfactual**: retrain without (a) the best tda variant's top-k chunks per
   reproduced fact, BM25's top-k, (b) the true sources, (c) as many random chunks, cut
   out of the corpus with ``tda prune apply`` at chunk level; (d) nothing = the original
   model (training is deterministic). Reports the mean change in the answer's
   log-probability after the verbatim prompt and its share of the oracle's change.

Results go to OUT/quality.json and OUT/quality.md (the tables docs/quality.md publishes).

:func:`main` runs these steps, one function each: build the corpus (:func:`build_corpus`),
train (:func:`train`, then :func:`probe_outputs`), index the variants
(:func:`index_variants`), rank (:func:`rank_tda`, :func:`rank_hybrids`,
:func:`rank_baselines`, :func:`rank_gradients`; every method a
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
from .gradients import GradCosRanker, TRAKRanker, dattri_available
from .outputs import Outputs, probe_outputs
from .rankers import (
    BM25Ranker,
    BM25Rerank,
    ExactSpanRanker,
    Prefetch,
    RandomRanker,
    Ranker,
    Rankings,
    TdaRanker,
    rank_all,
)
from .report import QualityReport, Tables, markdown_tables, print_table
from .scoring import MethodRow, best_option, compare_to_best, default_option, score
from .variants import Variant, build_roots, cut_chunks, make_variants

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
    parser.add_argument("--candidates", type=int, default=100, help="tda hits re-ranked.")
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
        default=3,
        help="Retrain without each method's top-k chunks per reproduced fact (0: skip).",
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
    return Options(**vars(parser.parse_args(argv)))


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
    tda: Tda, options: Options, corpus: Path, model: Path, out: Path
) -> tuple[list[Variant], dict[Variant, Path], ChunkTable]:
    """Step 3: the variants under test, the build root of each, and the chunk table
    (chunks cut once, shared by every root)."""
    base = cut_chunks(tda, corpus, model, out)
    variants = make_variants(
        options.pooling or POOLINGS,
        not options.no_variants,
        (options.max_seq, options.max_seq // 4),
    )
    roots = build_roots(tda, base, model, out, variants, options.jobs)
    return variants, roots, ChunkTable(base)


@dataclass(frozen=True)
class TdaRun:
    """One variant attributed: its root's attributor, its dense candidates (the top
    ``--candidates`` per output, kept for the hybrids) and its top-10 rankings by re-rank
    (``none``, ``concepts``)."""

    attributor: Attributor
    dense: Prefetch
    ranked: dict[str, Rankings]


def rank_tda(
    variants: list[Variant], roots: dict[Variant, Path], outputs: Outputs, table: ChunkTable,
    candidates: int,
) -> tuple[list[MethodRow], dict[Variant, TdaRun]]:  # fmt: skip
    """Step 4, tda's rows: every variant through ``tda attribute``'s own options, without
    a re-rank and with ``--rerank concepts`` (the row's ``concept_rerank`` metrics);
    variants on one root share its attributor."""
    from tda.attribution.attributor import Attributor

    attributors: dict[Path, Attributor] = {}
    rows, runs = [], {}
    for v in variants:
        root = roots[v]
        attributor = attributors.setdefault(root, Attributor.from_root(str(root), device="cpu"))
        dense = Prefetch(TdaRanker(attributor, v.query_span), candidates)
        concepts = TdaRanker(attributor, v.query_span, "concepts", candidates)
        ranked = {"none": rank_all(dense, outputs), "concepts": rank_all(concepts, outputs)}
        runs[v] = TdaRun(attributor, dense, ranked)
        plain = score(v.name, ranked["none"], outputs, table)
        reranked = score(v.name, ranked["concepts"], outputs, table)
        rows.append(MethodRow(v.name, {
            c: replace(m, concept_rerank=reranked.conditions[c])
            for c, m in plain.conditions.items()
        }))  # fmt: skip
    return rows, runs


def rank_hybrids(
    best: Variant, run: TdaRun, bm25: BM25Ranker, outputs: Outputs, table: ChunkTable,
    candidates: int,
) -> list[MethodRow]:  # fmt: skip
    """Step 4, the hybrids on the best option's dense candidates (``run``): ``tda
    attribute --rerank span`` (the product's lexical hybrid) and a BM25 re-rank (harness
    only: it needs corpus-wide statistics)."""
    span = TdaRanker(run.attributor, best.query_span, "span", candidates)
    hybrids: dict[str, Ranker] = {
        f"hybrid: {best.name}, --rerank span (top {candidates})": span,
        f"hybrid: {best.name} top {candidates}, BM25 re-rank": BM25Rerank(run.dense, bm25),
    }
    return [score(name, rank_all(r, outputs), outputs, table) for name, r in hybrids.items()]


def rank_baselines(
    rankers: dict[str, Ranker], outputs: Outputs, table: ChunkTable
) -> tuple[list[MethodRow], dict[str, Rankings]]:
    """Step 4, the baselines: each ranker's row, and its rankings (the counterfactual
    removes BM25's)."""
    ranked = {name: rank_all(r, outputs) for name, r in rankers.items()}
    return [score(name, ranked[name], outputs, table) for name in rankers], ranked


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
    return [
        score(name, rank_all(build(), outputs), outputs, table) for name, build in builders.items()
    ]


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

    torch.set_num_threads(options.threads)
    started = time.time()
    timings: dict[str, float] = {}
    out = Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(options.facts, options.seed)
    corpus = build_corpus(
        out, facts, options.copies, options.seed, options.paraphrase_docs, options.lead
    )
    tda = Tda(options.threads, Training(options.steps, options.seed, options.lr, options.max_seq))
    with timed(timings, "train"):
        model = train(tda, corpus, out)

    encoder = load_encoder(str(model), "cpu")
    outputs = probe_outputs(encoder, facts, options.paraphrase_docs, options.seed)
    print(f"facts reproduced: {outputs.reproduced} of {outputs.probed}", flush=True)
    with timed(timings, "index"):
        variants, roots, table = index_variants(tda, options, corpus, model, out)
    with timed(timings, "tda"):
        rows, runs = rank_tda(variants, roots, outputs, table, options.candidates)
    best = best_option(variants, rows)
    default = default_option(variants)
    versus = compare_to_best(variants, rows, best, options.seed)
    best_variant = next(v for v in variants if v.name == best.row)
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
            removed = {best.label: runs[best_variant].ranked[best.rerank], "BM25": ranked["BM25"]}
            counterfactual = background.submit(
                run_counterfactual, tda, options.counterfactual_k, options.seed, options.jobs,
                verbatim, removed, table, encoder, roots[variants[0]], corpus, out,
            )  # fmt: skip
        rows += rank_gradients(options, table, encoder, outputs)
    with timed(timings, "counterfactual_wait"):
        if counterfactual is not None:
            counterfactual = counterfactual.result()
        background.shutdown()
    # table order: tda rows, re-ranks and hybrids, then the baselines, random last
    rows.sort(key=lambda r: r.name == "random")
    report = QualityReport(
        seed=options.seed, facts=len(facts), copies=options.copies,
        paraphrase_docs=options.paraphrase_docs, lead=options.lead, steps=options.steps,
        lr=options.lr, max_seq=options.max_seq, chunks=len(table.ids), probed=outputs.probed,
        reproduced=outputs.reproduced,
        tables=Tables(rows, best, default, versus, counterfactual),
        timings=timings, seconds=round(time.time() - started),
    )  # fmt: skip
    write_tables(out, report)
    return report
