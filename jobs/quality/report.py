"""Step 6 of the harness, the tables: the typed report (:class:`Tables`, what
docs/quality.md publishes, inside :class:`QualityReport` with the run's settings and
timings), its JSON form (OUT/quality.json), its Markdown (OUT/quality.md) and the
console table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .counterfactual import CounterfactualRow
from .scoring import BestOption, Comparison, MethodRow, Option

__all__ = ["QualityReport", "Tables", "markdown_tables", "print_table"]


@dataclass(frozen=True)
class Tables:
    """The results: one :class:`MethodRow` per method in table order (tda rows, re-ranks
    and hybrids, then the baselines, random last); the best and the default tda option
    and every option against the best (when tda rows were scored); the counterfactual's
    rows (when run)."""

    rows: list[MethodRow]
    best: BestOption | None = None
    default: Option | None = None
    versus_best: list[Comparison] = field(default_factory=list)
    counterfactual: list[CounterfactualRow] | None = None

    @property
    def default_is_best(self) -> bool:
        return (self.default.row, self.default.rerank) == (self.best.row, self.best.rerank)


@dataclass(frozen=True)
class QualityReport:
    """One run of the harness: its settings (seed, facts, copies, paraphrase documents,
    lead, training steps, learning rate, context), the chunk count, how many facts each
    condition probed and reproduced, the :class:`Tables`, per-step ``timings`` (seconds)
    and the run's total ``seconds``."""

    seed: int
    facts: int
    copies: int
    paraphrase_docs: int
    lead: int
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
            "paraphrase_docs": self.paraphrase_docs, "lead": self.lead, "steps": self.steps,
            "lr": self.lr, "max_seq": self.max_seq, "chunks": self.chunks,
            "probed": self.probed, "reproduced": self.reproduced,
            "best_tda": {**asdict(t.best), "label": t.best.label},
            "default_tda": asdict(t.default),
            "default_is_best": t.default_is_best,
            "versus_best": [asdict(c) for c in t.versus_best],
            "results": {r.name: {c: m.to_json() for c, m in r.conditions.items()}
                        for r in t.rows},
            "counterfactual": None if t.counterfactual is None
            else {r.name: r.to_json() for r in t.counterfactual},
            "timings": self.timings,
            "seconds": self.seconds,
        }  # fmt: skip


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _option_label(row: str, rerank: str) -> str:
    return row + (", --rerank concepts" if rerank == "concepts" else "")


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
            f"bootstrap over the scored facts, 95% interval [{mine.lo:+.3f}, "
            f"{mine.hi:+.3f}]): "
            + ("**tied with the best** (the interval holds 0)." if mine.tied else
               "**significantly worse than the best.**")
        )  # fmt: skip
    lines = [
        f"Best tda option by MRR (then recall@1, recall@10) over every scored fact and "
        f"condition: "
        f"**{best.label}** (MRR {best.mrr:.3f}).",
        "",
        f"Default (`tda embed` / `tda index build` / `tda attribute` without options): "
        f"**{_option_label(default.row, default.rerank)}**; {verdict}",
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
                f"| {_option_label(v.row, v.rerank)} | {v.mrr:.3f} | {v.delta:+.3f} "
                f"| [{v.lo:+.3f}, {v.hi:+.3f}] |"
                for v in sorted(tied, key=lambda v: -v.mrr)
            ],
            "",
        ]
    return lines


def markdown_tables(tables: Tables) -> str:
    """The tables as Markdown (the ones docs/quality.md publishes): the best / default
    verdict (when recorded), retrieval (method x condition) and, when run, the
    counterfactual."""
    lines = _verdict(tables) if tables.best and tables.default else []
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
    return "\n".join(lines) + "\n"


def print_table(report: QualityReport) -> None:
    """The run's summary and its tables on the console (fixed-width columns)."""
    print(
        f"\n{report.facts} planted facts x {report.copies} documents, {report.chunks} "
        f"chunks; reproduced: {report.reproduced} of {report.probed}; "
        f"{report.seconds} s {report.timings}"
    )
    head = ("method", "condition", "n", "MRR", "R@1", "R@10", "distr.1st", "cr.MRR", "cr.R@1")
    print(f"{head[0]:<58} {head[1]:<10} {head[2]:>3} " + " ".join(f"{h:>6}" for h in head[3:]))
    for row in report.tables.rows:
        name = row.name
        for condition, m in row.conditions.items():
            if not m.n:
                print(f"{name:<58} {condition:<10} {0:>3} {'-':>6} {'-':>6} {'-':>6} {'-':>9}")
                continue
            cr = m.concept_rerank
            extra = f" {cr.mrr:>6.3f} {cr.recall_at_1:>6.3f}" if cr else ""
            print(f"{name:<58} {condition:<10} {m.n:>3} {m.mrr:>6.3f} {m.recall_at_1:>6.3f} "
                  f"{m.recall_at_10:>6.3f} {m.distractor_first:>9.3f}{extra}")  # fmt: skip
    if report.tables.counterfactual:
        print(f"\n{'retrained without':<48} {'chunks':>6} {'mean dlogp':>10} {'share':>6}")
        for c in report.tables.counterfactual:
            share = "-" if c.share_of_oracle is None else f"{c.share_of_oracle:.3f}"
            print(f"{c.name:<48} {c.chunks_removed:>6} {c.mean_delta_log_prob:>10.3f} "
                  f"{share:>6}")  # fmt: skip
