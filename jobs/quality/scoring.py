"""Step 4's scores, as typed results: where a method put each scored item's sources
(:class:`FactRank`), a method's metrics per condition (:class:`Metrics`, one
:class:`MethodRow` per method), the tda options compared (:class:`Option`,
:class:`BestOption`, :class:`Comparison` with a seeded paired bootstrap), and how often
the default's confidence levels hold a relevant first hit (:class:`LevelPrecision`).

A scored item is a reproduced fact (fact conditions) or one output chunk of a passage
output (passage conditions). Relevant = the fact's own chunks that contain its place, or
the chunks whose characters overlap the output chunk's in the passage's document, in
every copy of it. MRR and recall@1 / @10 over the top 10; "distractor first": a chunk of
the fact's distractor documents outranks every source; for a passage stored twice, "both
copies": every copy has a relevant chunk in the top 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .chunks import ChunkTable
from .outputs import Outputs, Query
from .passages import Probe
from .variants import Variant, channel_row, default_variant

__all__ = [
    "LEVELS",
    "BestOption",
    "Comparison",
    "FactRank",
    "LevelPrecision",
    "MethodRow",
    "Metrics",
    "Option",
    "best_option",
    "compare_to_best",
    "confidence_precision",
    "default_option",
    "paired_bootstrap",
    "pooled_ranks",
    "score",
    "variant_options",
]

RERANKS = ("none", "concepts")  # every tda variant is attributed both ways
LEVELS = ("verbatim", "lexical", "weak", "none")  # the report's confidence levels, best first


@dataclass(frozen=True)
class FactRank:
    """One method on one scored item (``fact``: the fact's index, or the item's number in
    its passage condition): ``rank`` (1-based) of the first source in its top 10 (None:
    no source there), whether a distractor came before every source, and for a passage
    stored more than once whether every copy had a source in the top 10 (``both``; None
    otherwise)."""

    fact: int
    rank: int | None
    distractor_first: bool
    both: bool | None = None

    @classmethod
    def of(
        cls, fact: int, ranked: list[int], good: set[int], bad: set[int],
        copies: Sequence[set[int]] | None = None,
    ) -> FactRank:  # fmt: skip
        """``ranked`` chunk ids against the item's sources ``good`` and distractors
        ``bad``; ``copies``: the sources per copy of a passage stored more than once."""
        rank = next((i + 1 for i, h in enumerate(ranked) if h in good), None)
        first_bad = next((i + 1 for i, h in enumerate(ranked) if h in bad), None)
        both = None
        if copies is not None:
            top = set(ranked[:10])
            both = all(top & c for c in copies)
        return cls(fact, rank, first_bad is not None and (rank is None or first_bad < rank),
                   both)  # fmt: skip


@dataclass(frozen=True)
class Metrics:
    """A method's retrieval metrics under one condition (rounded to 4 places; None when no
    item was scored): ``ranks`` per scored item in order, for a tda variant the same
    metrics with ``--rerank concepts`` (``concept_rerank``), and for passages stored more
    than once the share of items with every copy in the top 10 (``both_at_10``)."""

    n: int
    mrr: float | None
    recall_at_1: float | None
    recall_at_10: float | None
    distractor_first: float | None = None
    ranks: tuple[int | None, ...] = ()
    concept_rerank: Metrics | None = None
    both_at_10: float | None = None

    @classmethod
    def of(cls, facts: Sequence[FactRank]) -> Metrics:
        ranks = tuple(f.rank for f in facts)
        n = len(ranks)
        if n == 0:
            return cls(0, None, None, None, None, ranks)
        both = [f.both for f in facts if f.both is not None]
        return cls(
            n=n,
            mrr=round(sum(1 / r for r in ranks if r) / n, 4),
            recall_at_1=round(sum(1 for r in ranks if r == 1) / n, 4),
            recall_at_10=round(sum(1 for r in ranks if r and r <= 10) / n, 4),
            distractor_first=round(sum(f.distractor_first for f in facts) / n, 4),
            ranks=ranks,
            both_at_10=round(sum(both) / len(both), 4) if both else None,
        )

    def to_json(self) -> dict:
        """The report's form: ``recall@1`` / ``recall@10`` keys, ``ranks`` a list,
        ``concept_rerank`` and ``both@10`` only when there is one."""
        data = {"n": self.n, "mrr": self.mrr, "recall@1": self.recall_at_1,
                "recall@10": self.recall_at_10, "distractor_first": self.distractor_first,
                "ranks": list(self.ranks)}  # fmt: skip
        if self.both_at_10 is not None:
            data["both@10"] = self.both_at_10
        if self.concept_rerank is not None:
            data["concept_rerank"] = self.concept_rerank.to_json()
        return data


@dataclass(frozen=True)
class MethodRow:
    """One method of the table: its :class:`Metrics` per condition, in table order, and
    for a tda row the re-rank those metrics were attributed with (``rerank``; a variant's
    ``--rerank concepts`` metrics ride along in each :attr:`Metrics.concept_rerank`)."""

    name: str
    conditions: dict[str, Metrics]
    rerank: str = "none"


def _probe_items(probe: Probe, ranked: list[list[int]], table: ChunkTable, first: int):
    """One passage output's items: per output chunk, its rank against the chunks its
    characters overlap in every copy of the passage (numbered from ``first``)."""
    items = []
    for i, (a, b) in enumerate(probe.spans):
        sources = table.span_sources(probe.copies, probe.offset + a, probe.offset + b)
        good = set().union(*sources.values())
        copies = [sources[d] for d in probe.copies] if len(probe.copies) > 1 else None
        items.append(FactRank.of(first + i, ranked[i], good, set(), copies))
    return items


def score(
    name: str, ranked: dict[Query, list[int]], outputs: Outputs, table: ChunkTable,
    probes: dict[Probe, list[list[int]]] | None = None, rerank: str = "none",
) -> MethodRow:  # fmt: skip
    """A method's row from its ranking of every reproduced output (``ranked``, as
    :func:`~tda.jobs.quality.rankers.rank_all` returns it) and of every passage output's
    chunks (``probes``, as :func:`~tda.jobs.quality.rankers.rank_probes` returns it; None:
    not ranked, no item scored); ``rerank``: the re-rank a tda row was attributed with."""
    conditions = {}
    for condition in outputs.conditions:
        if condition in outputs.queries:
            items = [
                FactRank.of(q.fact.index, ranked[q], table.relevant(q.fact),
                            table.distractors(q.fact))
                for q in outputs.queries[condition]
            ]  # fmt: skip
        else:
            items = []
            for probe in outputs.probes[condition] if probes is not None else []:
                items += _probe_items(probe, probes[probe], table, len(items))
            # a passage has no distractor documents: the column does not apply
            conditions[condition] = replace(Metrics.of(items), distractor_first=None)
            continue
        conditions[condition] = Metrics.of(items)
    return MethodRow(name, conditions, rerank)


@dataclass(frozen=True)
class Option:
    """One tda option: a row, read in its own metrics (``rerank`` = the row's
    :attr:`MethodRow.rerank`) or, for a variant, in its ``--rerank concepts`` metrics
    (``rerank`` = ``concepts``); ``label``: how the report and the counterfactual name it
    (default: the row, plus ", --rerank concepts" for a variant's concept re-rank)."""

    row: str
    rerank: str
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            suffix = ", --rerank concepts" if self.rerank == "concepts" else ""
            object.__setattr__(self, "label", self.row + suffix)


@dataclass(frozen=True)
class BestOption(Option):
    """The best tda option and its MRR over every scored (condition, item)."""

    mrr: float = 0.0


@dataclass(frozen=True)
class Comparison:
    """One tda option against the best: its pooled MRR, the MRR difference and its
    paired-bootstrap 95% interval (None without scored items); ``tied``: it holds 0."""

    row: str
    rerank: str
    mrr: float
    delta: float | None
    lo: float | None
    hi: float | None
    tied: bool
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", Option(self.row, self.rerank).label)


def pooled_ranks(row: MethodRow, rerank: str) -> list[int | None]:
    """One tda option's ranks over every scored (condition, item), conditions in table
    order: what the best option and the bootstrap compare. ``rerank``: the row's own
    (its metrics) or ``concepts`` (a variant's concept re-rank metrics)."""
    ranks: list[int | None] = []
    for metrics in row.conditions.values():
        if rerank == row.rerank:
            m = metrics
        elif rerank == "concepts" and row.rerank == "none":  # a variant's concept column
            m = metrics.concept_rerank
        else:
            raise ValueError(f"row {row.name!r} was not attributed with --rerank {rerank}")
        ranks += list(m.ranks) if m is not None else []
    return ranks


def variant_options(variants: list[Variant]) -> list[Option]:
    """Every variant row without a re-rank and with ``--rerank concepts``."""
    return [Option(v.name, rr) for v in variants for rr in RERANKS]


def best_option(options: list[Option], rows: list[MethodRow]) -> BestOption:
    """The best of ``options`` by (MRR, recall@1, recall@10) over every scored (condition,
    item); ties go to the first listed."""
    by_name = {r.name: r for r in rows}
    keyed = []
    for o in options:
        ranks = pooled_ranks(by_name[o.row], o.rerank)
        m = Metrics.of([FactRank(i, r, False) for i, r in enumerate(ranks)])
        keyed.append((o, tuple(x or 0 for x in (m.mrr, m.recall_at_1, m.recall_at_10))))
    o, key = min(keyed, key=lambda ok: tuple(-x for x in ok[1]))  # first on ties
    return BestOption(o.row, o.rerank, o.label, key[0])


def default_option(variants: list[Variant], rows: Sequence[MethodRow] = ()) -> Option:
    """What ``tda embed`` / ``tda index build`` / ``tda attribute`` build and query with
    their defaults: the channel row of the default channels on the default variant's
    index when ``rows`` hold it, else the default variant's row."""
    from tda.schemas import DEFAULT_RERANK

    fused = channel_row(rerank=DEFAULT_RERANK)
    if any(r.name == fused for r in rows):
        return Option(fused, DEFAULT_RERANK, fused)
    return Option(default_variant(variants).name, DEFAULT_RERANK)


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
    options: list[Option], rows: list[MethodRow], best: Option, seed: int
) -> list[Comparison]:
    """Every tda option against the best one over every scored (condition, item): MRR
    difference with its paired-bootstrap 95% interval."""
    by_name = {r.name: r for r in rows}
    top = pooled_ranks(by_name[best.row], best.rerank)
    compared = []
    for o in options:
        mine = pooled_ranks(by_name[o.row], o.rerank)
        delta, lo, hi = paired_bootstrap(mine, top, seed)
        # no scored item: NaN, the mean of nothing, as the report has always written it
        # (without numpy's warning about an empty mean)
        mrr = round(float(_reciprocal(mine).mean()), 4) if mine else math.nan
        compared.append(Comparison(o.row, o.rerank, mrr, delta, lo, hi,
                                   hi is not None and hi >= 0, o.label))  # fmt: skip
    return compared


@dataclass(frozen=True)
class LevelPrecision:
    """One confidence level of a tda row: how many scored ``items`` had it, in how many
    the first hit was relevant (``first_relevant``), and that share (``precision``;
    None without items)."""

    level: str
    items: int
    first_relevant: int
    precision: float | None


def confidence_precision(
    levels: dict[tuple[str, str], tuple[str, ...]], row: MethodRow, outputs: Outputs
) -> list[LevelPrecision]:
    """Per confidence level (:data:`LEVELS`), the items of ``row`` (a tda row, scored by
    :func:`score`) that had it and how often their first hit was relevant; ``levels``:
    per attributed (prompt, output), each output chunk's level (the ranker's
    :attr:`~tda.jobs.quality.rankers.TdaRanker.levels`)."""
    counts = {level: [0, 0] for level in LEVELS}
    for condition in outputs.conditions:
        if condition in outputs.queries:
            keys = [(q.prompt, q.output, 0) for q in outputs.queries[condition]]
        else:
            keys = [(p.prompt, p.output, i) for p in outputs.probes[condition]
                    for i in range(len(p.spans))]  # fmt: skip
        ranks = row.conditions[condition].ranks
        for (prompt, output, i), rank in zip(keys, ranks, strict=True):
            level = levels[(prompt, output)][i]
            counts.setdefault(level, [0, 0])
            counts[level][0] += 1
            counts[level][1] += rank == 1
    return [
        LevelPrecision(level, n, hit, round(hit / n, 4) if n else None)
        for level, (n, hit) in counts.items()
    ]
