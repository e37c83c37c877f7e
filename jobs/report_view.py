"""The terminal rendering of an :class:`~tda.schemas.AttributionReport` with rich: the
output with its chunk boundaries, then per chunk its confidence, its check (when
checked), its training chunks (the
channels that found each, the words it shares with the output chunk highlighted on both
sides), its concepts, its prompt tokens and its sources. ``tda attribute`` prints it
(:func:`tda.jobs.render.report_attribution`).
"""

from __future__ import annotations

from tda.schemas import AttributionReport, ChunkCheck, OutputChunk

__all__ = ["check_line", "render_report"]

# Alternating backgrounds so adjacent output chunks are told apart.
CHUNK_STYLES = ("on grey23", "on dark_blue")
BAR_WIDTH = 24


def _bar(value: float, largest: float) -> str:
    if largest <= 0:
        return ""
    n = round(BAR_WIDTH * abs(value) / largest)
    return ("█" * n) if value >= 0 else ("░" * n)


def visible_breaks(text: str) -> str:
    """``text`` with each run of 3 or more line breaks shown as one ``↵×N`` mark and a
    break (as the viewer does), so a generated run of newlines is not a tall empty box."""
    import re

    return re.sub(r"\n{3,}", lambda m: f"↵×{len(m.group())}\n", text)


def _excerpt(text: str | None, limit: int = 220) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# How each confidence level is shown: the level is what a reader must see first.
CONFIDENCE_STYLES = {"verbatim": "bold green", "lexical": "green", "weak": "yellow",
                     "none": "bold red"}  # fmt: skip


def _marked(text: str | None, start: int | None, end: int | None, limit: int = 220):
    """``text`` as a rich Text of at most about ``limit`` characters around the match
    [start, end), the match alone highlighted (the whole text dim-free when no match)."""
    from rich.text import Text

    text = (text or "").replace("\n", " ")
    if start is None or end is None or start >= end:
        return Text(_excerpt(text, limit))
    # a window around the match: some left context, then as much of it as fits
    lo = max(0, start - max(0, (limit - (end - start)) // 3))
    hi = min(len(text), max(end, lo + limit))
    out = Text("…" if lo > 0 else "")
    out.append(text[lo:start])
    out.append(text[start:end], style="bold black on yellow")
    out.append(text[end:hi])
    if hi < len(text):
        out.append("…")
    return out


def score_text(score: float, fused: float | None, digits: int) -> str:
    """A hit's score cell: the dense score alone, or, when channels were fused, the fused
    score (what orders the hits) over the dense cosine (``digits`` decimals), which can be
    low or negative for a verbatim source the span channel found."""
    return f"{score:.{digits}f}" if fused is None else f"fused {fused:.4f}\ncos {score:.{digits}f}"


def _found_by(hit) -> str:
    """Which channels found a hit and its rank in each: 'span #1, lexical #2'."""
    return "\n".join(f"{name} #{c.rank}" for name, c in hit.channels.items()) or "dense"


def _prompt_text(chunk: OutputChunk):
    """The prompt with each token coloured by its score: green pushes the chunk's
    log-probability up, red down; brighter is stronger."""
    from rich.text import Text

    text = Text()
    largest = max((abs(t.score) for t in chunk.prompt_tokens), default=0.0)
    for t in chunk.prompt_tokens:
        strength = abs(t.score) / largest if largest > 0 else 0.0
        if strength < 0.15:
            style = "dim"
        elif t.score > 0:
            style = "bold green" if strength > 0.6 else "green"
        else:
            style = "bold red" if strength > 0.6 else "red"
        text.append(t.token, style=style)
    return text


# The check's verdicts as the terminal colours them.
CHECK_STYLES = {"supported": "bold green", "weak": "yellow", "not supported": "bold red"}


def check_line(check: ChunkCheck) -> str:
    """One output chunk's counterfactual check in words (the terminal and the demo)."""
    bm25 = "-" if check.bm25_drop is None else f"{check.bm25_drop:.3f}"
    z = "-" if check.z is None else f"{check.z:.1f}"
    return (
        f"unlearning its {check.chunks} hits lowers its log p by {check.attributed_drop:.3f} "
        f"(BM25's {check.chunks}: {bm25}; random: {check.random_mean:.3f} ± "
        f"{check.random_std:.3f} over {len(check.random_drops)} draws; z {z}, p "
        f"{check.p_value:.3f})"
    )


def render_report(report: AttributionReport, console) -> None:
    """Print ``report`` to a rich ``console``."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    s = report.settings
    t = report.timings
    head = Text()
    head.append("index ", style="bold")
    head.append(f"{report.index_root}  (manifest {report.index_manifest_id[:16]})\n")
    head.append("model ", style="bold")
    head.append(f"{s.model}  ({report.encoder_fingerprint[:19]})")
    head.append("  FORCED\n" if s.forced else "\n", style="bold red" if s.forced else "")
    head.append("settings ", style="bold")
    head.append(
        f"k={s.k} nprobe={s.nprobe} chunk={s.chunk_size} tokens, pooling {s.pooling}, "
        f"input attribution {s.input_attribution}"
        + (
            f" ({s.ig_steps} steps, {s.ig_baseline} baseline)"
            if s.input_attribution == "ig"
            else ""
        )
        + f", query span {s.query_span}"
        + (f", re-rank {s.rerank} of {s.candidates}" if s.rerank != "none" else "")
        + f"\nchannels {', '.join(s.channels)}"
        + (
            f" (fused by reciprocal rank, k={s.fusion.get('k')}, top {s.candidates} each)"
            if s.fusion
            else ""
        )
        + "\n"
    )
    head.append("time ", style="bold")
    head.append(
        (f"generate {t.generate:.0f} ms, " if t.generate else "")
        + f"forward {t.forward:.0f} ms, backward {t.backward:.0f} ms, search {t.search:.1f} ms, "
        f"metadata {t.metadata:.1f} ms, total {t.total:.0f} ms"
    )
    if report.check is not None:
        k = report.check
        head.append("\ncheck ", style="bold")
        how = {"project": " keeping the evidence left in the index",
               "forget": " until random text's loss",
               "unique": " of what its BM25 neighbours do not teach"}.get(k.method, "")  # fmt: skip
        less = f", less the loss rise of {k.control} random chunks" if k.control else ""
        head.append(f"gradient ascent{how} on a copy of the model, {k.steps} steps of {k.lr} x "
                    f"the weights' norm ({k.scope}){less}, {k.draws} random draws, seed "
                    f"{k.seed}: {k.seconds:.1f} s")  # fmt: skip
    console.print(Panel(head, title="tda attribute", title_align="left"))
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")

    body = Text()
    body.append(report.prompt, style="dim")
    for c in report.chunks:
        body.append(f"[{c.index}]", style="bold cyan")
        body.append(visible_breaks(c.text), style=CHUNK_STYLES[c.index % 2])
    console.print(
        Panel(
            body,
            title=f"prompt ({report.prompt_token_count} tokens, dim) + output "
            f"({report.output_token_count} tokens in {len(report.chunks)} chunks)",
            title_align="left",
        )
    )

    for c in report.chunks:
        console.rule(
            f"[bold cyan]chunk {c.index}[/]  tokens {c.token_start}..{c.token_end}  "
            f"log p = {c.totals.log_prob:.2f}"
        )
        first = c.hits[0].match if c.hits else None
        chunk_text = _marked(
            c.text, first and first.output_start, first and first.output_end, limit=400
        )
        chunk_text.stylize(CHUNK_STYLES[c.index % 2])
        console.print(chunk_text)
        if c.confidence is not None:
            conf = c.confidence
            console.print(
                Text.assemble(
                    ("confidence ", "bold"),
                    (conf.level, CONFIDENCE_STYLES.get(conf.level, "")),
                    f" ({conf.score:.2f}): {conf.reason}",
                )
            )
        if c.check is not None:
            console.print(Text.assemble(("check ", "bold"), (c.check.verdict, CHECK_STYLES.get(
                c.check.verdict, "")), f": {check_line(c.check)}"))  # fmt: skip
        hits = Table(
            title="training chunks (highlighted: the words shared with the output chunk)",
            header_style="bold", show_lines=True, expand=True,
        )  # fmt: skip
        hits.add_column("#", justify="right", no_wrap=True)
        hits.add_column("score", justify="right", no_wrap=True)
        hits.add_column("found by", no_wrap=True)
        hits.add_column("source / document", overflow="fold", ratio=2)
        hits.add_column("text", overflow="fold", ratio=6)
        hits.add_column("shared concepts", overflow="fold", ratio=2)
        for h in c.hits:
            shared = ", ".join(x.name for x in h.shared_concepts[:5]) or "-"
            m = h.match
            score = score_text(h.score, h.fused_score, 3)
            run = "" if m is None else f"\n{m.words} words" + (
                f", {m.tokens} tokens exact" if m.tokens else ""
            )  # fmt: skip
            hits.add_row(
                str(h.rank),
                score,
                _found_by(h) + run,
                f"{h.source}\n{h.doc_id}\nchars {h.char_start}..{h.char_end}\nid {h.chunk_id}",
                _marked(h.text, m and m.chunk_start, m and m.chunk_end),
                shared,
            )
        console.print(hits)

        concepts = Table(title="concepts (contribution to the chunk's token logits)",
                         header_style="bold")  # fmt: skip
        concepts.add_column("concept", overflow="fold")
        concepts.add_column("kind", no_wrap=True)
        concepts.add_column("tokens", justify="right", no_wrap=True)
        concepts.add_column("contribution", justify="right", no_wrap=True)
        concepts.add_column("", no_wrap=True)
        largest = max((abs(x.contribution) for x in c.concepts), default=0.0)
        for x in c.concepts:
            concepts.add_row(
                f"{x.name} “{x.label}”" if x.label else x.name,
                x.kind,
                str(x.tokens),
                f"{x.contribution:+.3f}",
                _bar(x.contribution, largest),
            )
        tot = c.totals
        concepts.caption = (
            f"logit {tot.logit:.3f} = known {tot.known_total:.3f} + unknown "
            f"{tot.unknown_total:.3f} + residual {tot.residual:.3f}"
        )
        console.print(concepts)

        if c.prompt_tokens:
            title = "prompt tokens (green raises the chunk's log-probability, red lowers it)"
            if c.completeness:
                title += (
                    f"; IG sum {c.completeness['sum']:.3f} vs log-prob change "
                    f"{c.completeness['delta']:.3f}"
                )
            console.print(Panel(_prompt_text(c), title=title, title_align="left"))
        sources = "  ".join(f"{src} {share:.0%}" for src, share in c.sources.items())
        console.print(Text.assemble(("sources  ", "bold"), sources or "-"))
