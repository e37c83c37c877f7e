"""Step 4's scores, as typed results: where a method put each scored fact's sources
(:class:`FactRank`), a method's metrics per condition (:class:`Metrics`, one
:class:`MethodRow` per method), and the tda options compared (:class:`Option`,
:class:`BestOption`, :class:`Comparison` with a seeded paired bootstrap).

Relevant = the fact's own chunks that contain its place; MRR and recall@1 / @10 over the
top 10; "distractor first": a chunk of the fact's distractor documents outranks every
source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .chunks import ChunkTable
from .outputs import Outputs, Query
from .variants import Variant

__all__ = [
    "BestOption",
    "Comparison",
    "FactRank",
    "MethodRow",
    "Metrics",
    "Option",
    "best_option",
    "compare_to_best",
    "default_option",
    "paired_bootstrap",
    "pooled_ranks",
    "score",
]

RERANKS = ("none", "concepts")  # every tda variant is attributed both ways


@dataclass(frozen=True)
class FactRank:
    """One method on one scored fact: ``rank`` (1-based) of the first source in its top
    10 (None: no source there), and whether a distractor came before every source."""

    fact: int
    rank: int | None
    distractor_first: bool

    @classmethod
    def of(cls, fact: int, ranked: list[int], good: set[int], bad: set[int]) -> FactRank:
        """``ranked`` chunk ids against the fact's sources ``good`` and distractors ``bad``."""
        rank = next((i + 1 for i, h in enumerate(ranked) if h in good), None)
        first_bad = next((i + 1 for i, h in enumerate(ranked) if h in bad), None)
        return cls(fact, rank, first_bad is not None and (rank is None or first_bad < rank))


@dataclass(frozen=True)
class Metrics:
    """A method's retrieval metrics under one condition (rounded to 4 places; None when no
    fact was scored): ``ranks`` per scored fact in fact order, and for a tda variant the
    same metrics with ``--rerank concepts`` (``concept_rerank``)."""

    n: int
    mrr: float | None
    recall_at_1: float | None
    recall_at_10: float | None
    distractor_first: float | None = None
    ranks: tuple[int | None, ...] = ()
    concept_rerank: Metrics | None = None

    @classmethod
    def of(cls, facts: Sequence[FactRank]) -> Metrics:
        ranks = tuple(f.rank for f in facts)
        n = len(ranks)
        if n == 0:
            return cls(0, None, None, None, None, ranks)
        return cls(
            n=n,
            mrr=round(sum(1 / r for r in ranks if r) / n, 4),
            recall_at_1=round(sum(1 for r in ranks if r == 1) / n, 4),
            recall_at_10=round(sum(1 for r in ranks if r and r <= 10) / n, 4),
            distractor_first=round(sum(f.distractor_first for f in facts) / n, 4),
            ranks=ranks,
        )

    def to_json(self) -> dict:
        """The report's form: ``recall@1`` / ``recall@10`` keys, ``ranks`` a list,
        ``concept_rerank`` only when there is one."""
        data = {"n": self.n, "mrr": self.mrr, "recall@1": self.recall_at_1,
                "recall@10": self.recall_at_10, "distractor_first": self.distractor_first,
                "ranks": list(self.ranks)}  # fmt: skip
        if self.concept_rerank is not None:
            data["concept_rerank"] = self.concept_rerank.to_json()
        return data


@dataclass(frozen=True)
class MethodRow:
    """One method of the table: its :class:`Metrics` per condition, in table order."""

    name: str
    conditions: dict[str, Metrics]


def score(
    name: str, ranked: dict[Query, list[int]], outputs: Outputs, table: ChunkTable
) -> MethodRow:
    """A method's row from its ranking of every reproduced output (``ranked``, as
    :func:`~tda.jobs.quality.rankers.rank_all` returns it)."""
    conditions = {}
    for condition, queries in outputs.queries.items():
        facts = [
            FactRank.of(q.fact.index, ranked[q], table.relevant(q.fact), table.distractors(q.fact))
            for q in queries
        ]
        conditions[condition] = Metrics.of(facts)
    return MethodRow(name, conditions)


@dataclass(frozen=True)
class Option:
    """One tda option: a variant's row, attributed without a re-rank or with ``--rerank
    concepts``."""

    row: str
    rerank: str


@dataclass(frozen=True)
class BestOption(Option):
    """The best tda option and its MRR over every scored (condition, fact)."""

    mrr: float

    @property
    def label(self) -> str:
        """How the report and the counterfactual name it."""
        return self.row + (", re-rank concepts" if self.rerank == "concepts" else "")


@dataclass(frozen=True)
class Comparison:
    """One tda option against the best: its pooled MRR, the MRR difference and its
    paired-bootstrap 95% interval (None without scored facts); ``tied``: it holds 0."""

    row: str
    rerank: str
    mrr: float
    delta: float | None
    lo: float | None
    hi: float | None
    tied: bool


def pooled_ranks(row: MethodRow, rerank: str) -> list[int | None]:
    """One tda option's ranks over every scored (condition, fact), conditions in table
    order: what the best option and the bootstrap compare."""
    ranks: list[int | None] = []
    for metrics in row.conditions.values():
        m = metrics if rerank == "none" else metrics.concept_rerank
        ranks += list(m.ranks) if m is not None else []
    return ranks


def best_option(variants: list[Variant], rows: list[MethodRow]) -> BestOption:
    """The best tda option by (MRR, recall@1, recall@10) over every scored (condition,
    fact); ties go to the first listed, without a re-rank before with one."""
    by_name = {r.name: r for r in rows}
    options = []
    for v in variants:
        for rr in RERANKS:
            ranks = pooled_ranks(by_name[v.name], rr)
            m = Metrics.of([FactRank(i, r, False) for i, r in enumerate(ranks)])
            key = tuple(x or 0 for x in (m.mrr, m.recall_at_1, m.recall_at_10))
            options.append((v.name, rr, key))
    name, rr, key = min(options, key=lambda o: tuple(-x for x in o[2]))  # first on ties
    return BestOption(name, rr, key[0])


def default_option(variants: list[Variant]) -> Option:
    """The row that ``tda embed`` / ``tda index build`` / ``tda attribute`` build and query
    with their defaults."""
    from tda.schemas import DEFAULT_QUERY_SPAN, DEFAULT_RERANK, IndexConfig, Pooling

    pooling, whiten = Pooling().name, IndexConfig(root="-").whiten
    for v in variants:
        if (v.pooling, v.factory, v.whiten, v.window, v.context, v.query_span) == (
            pooling, None, whiten, None, None, DEFAULT_QUERY_SPAN
        ):  # fmt: skip
            return Option(v.name, DEFAULT_RERANK)
    raise ValueError(f"no variant is the default ({pooling}, query span {DEFAULT_QUERY_SPAN})")


def _reciprocal(ranks: list[int | None]):
    """(n,) float array of 1 / rank, 0 where no source was in the top 10."""
    import numpy as np

    return np.array([1 / r if r else 0.0 for r in ranks])


def paired_bootstrap(a: list, b: list, seed: int, resamples: int = 10_000) -> tuple:
    """Per-fact ranks of two methods on the same facts -> (MRR(a) - MRR(b), 2.5th and
    97.5th percentile of that difference over ``resamples`` resamplings of the facts with
    replacement; seeded, so the same inputs give the same interval)."""
    import numpy as np

    ra, rb = _reciprocal(a), _reciprocal(b)
    if len(ra) == 0:
        return None, None, None
    picks = np.random.default_rng(seed).integers(0, len(ra), (resamples, len(ra)))
    diffs = (ra[picks] - rb[picks]).mean(axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return round(float(ra.mean() - rb.mean()), 4), round(float(lo), 4), round(float(hi), 4)


def compare_to_best(
    variants: list[Variant], rows: list[MethodRow], best: Option, seed: int
) -> list[Comparison]:
    """Every tda option (row x re-rank) against the best one over every scored
    (condition, fact): MRR difference with its paired-bootstrap 95% interval."""
    by_name = {r.name: r for r in rows}
    top = pooled_ranks(by_name[best.row], best.rerank)
    compared = []
    for v in variants:
        for rr in RERANKS:
            mine = pooled_ranks(by_name[v.name], rr)
            delta, lo, hi = paired_bootstrap(mine, top, seed)
            # no scored fact: NaN, the mean of nothing, as the report has always written it
            # (without numpy's warning about an empty mean)
            mrr = round(float(_reciprocal(mine).mean()), 4) if mine else math.nan
            compared.append(Comparison(v.name, rr, mrr, delta, lo, hi, hi is not None and hi >= 0))
    return compared
