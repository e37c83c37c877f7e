"""Step 6 of the harness, the tables: the typed report (:class:`Tables`, what
docs/quality.md publishes, inside :class:`QualityReport` with the run's settings and
timings), its JSON form (OUT/quality.json), its Markdown (OUT/quality.md) and the
console table. The Markdown ends with the targets (:func:`targets`: the default tda
option against the issue's goals, met or missed by how much)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .counterfactual import CounterfactualRow
from .outputs import ConditionInfo
from .scoring import BestOption, Comparison, LevelPrecision, MethodRow, Metrics, Option

__all__ = [
    "TARGET_MRR",
    "TARGET_RECALL",
    "TARGET_SHARE",
    "QualityReport",
    "Tables",
    "Target",
    "markdown_tables",
    "print_table",
    "targets",
]

# The goals the default tda option is measured against, per condition and counterfactual.
TARGET_MRR = 0.95
TARGET_RECALL = 0.98  # recall@10; also both copies of a near duplicate in the top 10
TARGET_SHARE = 0.5  # of the oracle's log-probability drop, removing the default's top k


@dataclass(frozen=True)
class Tables:
    """The results: one :class:`MethodRow` per method in table order (tda rows, channel
    rows, re-ranks and hybrids, then the baselines, random last); the best and the
    default tda option and every option against the best (when tda rows were scored);
    the counterfactual's rows (when run); what each condition asked (``conditions``); the
    default's confidence levels against its first hits (``confidence``)."""

    rows: list[MethodRow]
    best: BestOption | None = None
    default: Option | None = None
    versus_best: list[Comparison] = field(default_factory=list)
    counterfactual: list[CounterfactualRow] | None = None
    conditions: list[ConditionInfo] = field(default_factory=list)
    confidence: list[LevelPrecision] = field(default_factory=list)

    @property
    def default_is_best(self) -> bool:
        return (self.default.row, self.default.rerank) == (self.best.row, self.best.rerank)


@dataclass(frozen=True)
class Target:
    """One goal for the default tda option: what it asks (``target``), the figure
    measured (None: not measured), and ``result``: ``met``, ``missed by X`` or why it was
    not measured; ``met`` None when not measured."""

    target: str
    measured: float | None
    result: str
    met: bool | None


def _default_metrics(tables: Tables, condition: str) -> Metrics | None:
    """The default option's metrics under ``condition`` (None: no such row)."""
    row = next((r for r in tables.rows if r.name == tables.default.row), None)
    if row is None or condition not in row.conditions:
        return None
    m = row.conditions[condition]
    return m if tables.default.rerank == row.rerank else m.concept_rerank


def _at_least(target: str, value: float | None, goal: float, missing: str) -> Target:
    if value is None:
        return Target(target, None, f"not measured ({missing})", None)
    if value >= goal:
        return Target(target, value, "met", True)
    return Target(target, value, f"missed by {goal - value:.3f}", False)


def targets(tables: Tables) -> list[Target]:
    """The default tda option against the goals: per condition MRR >=
    :data:`TARGET_MRR` and recall@10 >= :data:`TARGET_RECALL` (and both copies of a near
    duplicate in the top 10 as often); removing its top chunks recovers at least
    :data:`TARGET_SHARE` of the oracle's log-probability drop; its share beats BM25's and
    exact span's. Empty without a default option."""
    if tables.default is None:
        return []
    out = []
    conditions = [c.condition for c in tables.conditions] or list(tables.rows[0].conditions)
    for c in conditions:
        m = _default_metrics(tables, c)
        goals = [("MRR", TARGET_MRR, m and m.mrr),
                 ("recall@10", TARGET_RECALL, m and m.recall_at_10)]  # fmt: skip
        if c == "near duplicate":
            goals.append(("both copies in the top 10", TARGET_RECALL, m and m.both_at_10))
        for what, goal, value in goals:
            out.append(_at_least(f"{c}: {what} >= {goal}", value, goal, "no scored item"))
    cf = {r.method: r for r in tables.counterfactual or [] if r.method is not None}
    mine = cf.get(tables.default.label)
    share = mine.share_of_oracle if mine is not None else None
    why = "counterfactual not run" if tables.counterfactual is None else "default not removed"
    out.append(_at_least(
        f"counterfactual: removing the default's top chunks recovers >= {TARGET_SHARE} of "
        f"the oracle's drop", share, TARGET_SHARE, why,
    ))  # fmt: skip
    for other in ("BM25", "exact span"):
        target = f"counterfactual: the default's share beats {other}'s"
        theirs = cf[other].share_of_oracle if other in cf else None
        if share is None or theirs is None:
            missing = why if share is None else f"{other} not removed"
            out.append(Target(target, share, f"not measured ({missing})", None))
            continue
        gap = share - theirs
        result = (f"met ({gap:+.3f} against {theirs:.3f})" if gap > 0 else
                  f"missed by {-gap:.3f} ({other}: {theirs:.3f})")  # fmt: skip
        out.append(Target(target, share, result, gap > 0))
    return out


@dataclass(frozen=True)
class QualityReport:
    """One run of the harness: its settings (seed, facts, copies, paraphrase documents,
    lead, passages, training steps, learning rate, context), the chunk count, how many
    facts each fact condition probed and reproduced, the :class:`Tables`, per-step
    ``timings`` (seconds) and the run's total ``seconds``."""

    seed: int
    facts: int
    copies: int
    paraphrase_docs: int
    lead: int
    passages: int
    steps: int
    lr: float
    max_seq: int
    chunks: int
    probed: dict[str, int]
    reproduced: dict[str, int]
    tables: Tables
    timings: dict[str, float]
    seconds: int

    def to_json(self) -> dict:
        """OUT/quality.json's object (its keys and their order are the published form)."""
        t = self.tables
        return {
            "seed": self.seed, "facts": self.facts, "copies": self.copies,
            "paraphrase_docs": self.paraphrase_docs, "lead": self.lead,
            "passages": self.passages, "steps": self.steps,
            "lr": self.lr, "max_seq": self.max_seq, "chunks": self.chunks,
            "probed": self.probed, "reproduced": self.reproduced,
            "best_tda": asdict(t.best),
            "default_tda": asdict(t.default),
            "default_is_best": t.default_is_best,
            "versus_best": [asdict(c) for c in t.versus_best],
            "conditions": [asdict(c) for c in t.conditions],
            "results": {r.name: {c: m.to_json() for c, m in r.conditions.items()}
                        for r in t.rows},
            "counterfactual": None if t.counterfactual is None
            else {r.name: r.to_json() for r in t.counterfactual},
            "confidence": [asdict(c) for c in t.confidence],
            "targets": [asdict(x) for x in targets(t)],
            "timings": self.timings,
            "seconds": self.seconds,
        }  # fmt: skip


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _verdict(tables: Tables) -> list[str]:
    """The best and the default tda option, whether the default is the best, tied with
    it or worse, and the options tied with the best."""
    best, default, versus = tables.best, tables.default, tables.versus_best
    mine = next((v for v in versus if (v.row, v.rerank) == (default.row, default.rerank)), None)
    if tables.default_is_best:
        verdict = "it is the best tda option."
    elif mine is None or mine.delta is None:
        verdict = "**it is not the best tda option.**"
    else:
        verdict = (
            f"MRR {mine.mrr:.3f}, {mine.delta:+.3f} against the best (paired "
            f"bootstrap over the scored items, 95% interval [{mine.lo:+.3f}, "
            f"{mine.hi:+.3f}]): "
            + ("**tied with the best** (the interval holds 0)." if mine.tied else
               "**significantly worse than the best.**")
        )  # fmt: skip
    lines = [
        f"Best tda option by MRR (then recall@1, recall@10) over every scored item and "
        f"condition: "
        f"**{best.label}** (MRR {best.mrr:.3f}).",
        "",
        f"Default (`tda embed` / `tda index build` / `tda attribute` without options): "
        f"**{default.label}**; {verdict}",
        "",
    ]
    tied = [v for v in versus if v.tied]
    if tied:
        lines += [
            "tda options tied with the best (95% interval of the MRR difference holds 0):",
            "",
            "| option | MRR | difference | 95% interval |",
            "|---|---:|---:|---|",
            *[
                f"| {v.label} | {v.mrr:.3f} | {v.delta:+.3f} | [{v.lo:+.3f}, {v.hi:+.3f}] |"
                for v in sorted(tied, key=lambda v: -v.mrr)
            ],
            "",
        ]
    return lines


def _conditions(tables: Tables) -> list[str]:
    """The conditions table: what each asked, how much was scored, in tokens."""
    if not tables.conditions:
        return []
    lines = [
        "| condition | prompt | output | asked | scored | items | prompt tokens (mean) "
        "| tokens per item |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for c in tables.conditions:
        mean = "-" if c.prompt_tokens is None else f"{c.prompt_tokens:.1f}"
        span = "-" if c.item_tokens is None else (
            f"{c.item_tokens[0]}" if c.item_tokens[0] == c.item_tokens[1]
            else f"{c.item_tokens[0]} to {c.item_tokens[1]}"
        )  # fmt: skip
        lines.append(f"| {c.condition} | {c.prompt} | {c.output} | {c.probed} | {c.scored} "
                     f"| {c.items} | {mean} | {span} |")  # fmt: skip
    return [*lines, ""]


def _both_copies(tables: Tables) -> list[str]:
    """The near-duplicate table: per method, how often both copies came back."""
    rows = [(r.name, r.conditions["near duplicate"]) for r in tables.rows
            if "near duplicate" in r.conditions and r.conditions["near duplicate"].n]  # fmt: skip
    if not rows:
        return []
    lines = [
        "",
        "| method | near-duplicate items | recall@10 | both copies in the top 10 |",
        "|---|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(f"| {name} | {m.n} | {_num(m.recall_at_10)} | {_num(m.both_at_10)} |")
    return lines


def _confidence(tables: Tables) -> list[str]:
    """The default's confidence levels against its first hits."""
    if not tables.confidence:
        return []
    label = tables.default.label if tables.default else "tda"
    lines = [
        "",
        f"| confidence level ({label}) | scored items | first hit relevant | precision |",
        "|---|---:|---:|---:|",
    ]
    for c in tables.confidence:
        lines.append(f"| {c.level} | {c.items} | {c.first_relevant} | {_num(c.precision)} |")
    return lines


def _targets(tables: Tables) -> list[str]:
    found = targets(tables)
    if not found:
        return []
    lines = ["", f"Targets ({tables.default.label}):", "", "| target | measured | result |",
             "|---|---:|---|"]  # fmt: skip
    for t in found:
        lines.append(f"| {t.target} | {_num(t.measured)} | {t.result} |")
    return lines


def markdown_tables(tables: Tables) -> str:
    """The tables as Markdown (the ones docs/quality.md publishes): the best / default
    verdict (when recorded), the conditions, retrieval (method x condition), both copies
    of the near duplicates, when run the counterfactual, the default's confidence levels,
    and last the targets."""
    lines = _verdict(tables) if tables.best and tables.default else []
    lines += _conditions(tables)
    lines += [
        "| method | condition | n | MRR | recall@1 | recall@10 | distractor first "
        "| MRR, --rerank concepts | recall@1, --rerank concepts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in tables.rows:
        for condition, m in row.conditions.items():
            cr = m.concept_rerank
            lines.append(
                f"| {row.name} | {condition} | {m.n} | {_num(m.mrr)} | {_num(m.recall_at_1)} "
                f"| {_num(m.recall_at_10)} | {_num(m.distractor_first)} "
                f"| {_num(cr and cr.mrr)} | {_num(cr and cr.recall_at_1)} |"
            )
    lines += _both_copies(tables)
    if tables.counterfactual:
        lines += [
            "",
            "| retrained without | chunks removed | facts | mean change in answer log-prob "
            "| facts whose log-prob fell | share of the oracle's change |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for c in tables.counterfactual:
            lines.append(
                f"| {c.name} | {c.chunks_removed} | {c.facts} "
                f"| {c.mean_delta_log_prob:+.3f} | {c.facts_dropped} "
                f"| {_num(c.share_of_oracle)} |"
            )
    lines += _confidence(tables) + _targets(tables)
    return "\n".join(lines) + "\n"


def print_table(report: QualityReport) -> None:
    """The run's summary and its tables on the console (fixed-width columns)."""
    print(
        f"\n{report.facts} planted facts x {report.copies} documents, {report.chunks} "
        f"chunks; reproduced: {report.reproduced} of {report.probed}; "
        f"{report.seconds} s {report.timings}"
    )
    head = ("method", "condition", "n", "MRR", "R@1", "R@10", "distr.1st", "cr.MRR", "cr.R@1")
    print(f"{head[0]:<58} {head[1]:<14} {head[2]:>3} " + " ".join(f"{h:>6}" for h in head[3:]))
    for row in report.tables.rows:
        name = row.name
        for condition, m in row.conditions.items():
            if not m.n:
                print(f"{name:<58} {condition:<14} {0:>3} {'-':>6} {'-':>6} {'-':>6} {'-':>9}")
                continue
            cr = m.concept_rerank
            extra = f" {cr.mrr:>6.3f} {cr.recall_at_1:>6.3f}" if cr and cr.n else ""
            print(f"{name:<58} {condition:<14} {m.n:>3} {m.mrr:>6.3f} {m.recall_at_1:>6.3f} "
                  f"{m.recall_at_10:>6.3f} {_num(m.distractor_first):>9}{extra}")  # fmt: skip
    if report.tables.counterfactual:
        print(f"\n{'retrained without':<58} {'chunks':>6} {'mean dlogp':>10} {'share':>6}")
        for c in report.tables.counterfactual:
            share = "-" if c.share_of_oracle is None else f"{c.share_of_oracle:.3f}"
            print(f"{c.name:<58} {c.chunks_removed:>6} {c.mean_delta_log_prob:>10.3f} "
                  f"{share:>6}")  # fmt: skip
    tables = report.tables
    for section in (_both_copies(tables), _confidence(tables), _targets(tables)):
        if section:
            print("\n".join(section))
