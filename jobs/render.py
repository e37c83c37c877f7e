"""What the commands print: one reporter per command result, and the terminal rendering of
an :class:`~tda.schemas.AttributionReport` with rich (the output with its chunk
boundaries, then per chunk its training chunks, concepts, prompt tokens and sources).

Every reporter takes what its command computed and prints it, as JSON with ``--json``
(``as_json``), else as text or a rich table (a fixed 100, 120 or 140 columns when
stdout is not a terminal, so piped output does not depend on the terminal's width).
"""

from __future__ import annotations

import json
import sys

import click

from tda.schemas import AttributionReport, OutputChunk

__all__ = [
    "render_report",
    "report_attribution",
    "report_build",
    "report_chunk",
    "report_embed",
    "report_index",
    "report_index_merge",
    "report_index_verify",
    "report_model_info",
    "report_model_train",
    "report_prune_apply",
    "report_prune_list",
    "report_scan",
    "report_search",
    "report_tokenizer",
]

# Alternating backgrounds so adjacent output chunks are told apart.
CHUNK_STYLES = ("on grey23", "on dark_blue")
BAR_WIDTH = 24


def _bar(value: float, largest: float) -> str:
    if largest <= 0:
        return ""
    n = round(BAR_WIDTH * abs(value) / largest)
    return ("█" * n) if value >= 0 else ("░" * n)


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
    console.print(Panel(head, title="tda attribute", title_align="left"))
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")

    body = Text()
    body.append(report.prompt, style="dim")
    for c in report.chunks:
        body.append(f"[{c.index}]", style="bold cyan")
        body.append(c.text, style=CHUNK_STYLES[c.index % 2])
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
            score = f"{h.score:.3f}" + (
                f"\nfused {h.fused_score:.4f}" if h.fused_score is not None else ""
            )
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
                x.name,
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


def _console(width: int):
    """A rich console on stdout: the terminal's width, or ``width`` columns when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else width)


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def report_attribution(report: AttributionReport, as_json: bool) -> None:
    """``tda attribute``: the report as JSON, or rendered by :func:`render_report`."""
    if as_json:
        click.echo(report.to_json())
        return
    render_report(report, _console(140))


def report_chunk(result, out: str, as_json: bool) -> None:
    """``tda chunk``: a ``ChunkRunResult`` (manifest + Beam counters) written into ``out``."""
    totals = result.manifest.totals
    if as_json:
        _echo_json(
            {
                "root": out,
                "files": len(result.manifest.inputs),
                "totals": totals.to_dict(),
                "counters": result.counters,
            }
        )
        return
    from rich.table import Table

    console = _console(100)
    table = Table(title=f"tda chunk -> {out}", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("count", justify="right")
    skipped = result.counters.get("files_skipped", 0)
    table.add_row(
        "input files",
        f"{len(result.manifest.inputs):,}"
        + (f" ({skipped:,} skipped: already done)" if skipped else ""),
    )
    table.add_row("records read", f"{totals.records:,}")
    table.add_row("documents chunked", f"{totals.documents:,}")
    table.add_row("chunks written", f"{totals.chunks:,}")
    table.add_row("tokens", f"{totals.tokens:,}")
    table.add_row("dead letters", f"{totals.deadlettered:,}")
    for reason, n in totals.deadletters.items():
        table.add_row(f"  {reason}", f"{n:,}")
    console.print(table)
    ok = totals.reconciles()
    console.print(
        f"records = documents + dead letters: {totals.records:,} = {totals.documents:,} + "
        f"{totals.deadlettered:,} " + ("[green]ok[/green]" if ok else "[red]MISMATCH[/red]")
    )
    if result.counters:
        shown = ", ".join(f"{k}={v:,}" for k, v in result.counters.items())
        console.print(f"[dim]Beam counters (this run): {shown}[/dim]")


def report_embed(result, root: str, as_json: bool) -> None:
    """``tda embed``: an ``EmbedRunResult`` (manifest + Beam counters) for ``root``."""
    m = result.manifest
    totals = m.totals
    if as_json:
        _echo_json(
            {
                "root": root,
                "encoder": m.encoder.name,
                "fingerprint": m.encoder.fingerprint,
                "pooling": m.pooling.name,
                "dim": m.dim,
                "context": {"window": m.context.window, "context": m.context.context},
                "totals": totals.to_dict(),
                "padding_share": round(totals.padding_share, 6),
                "counters": result.counters,
            }
        )
        return
    from rich.table import Table

    console = _console(100)
    table = Table(title=f"tda embed -> {root}/embeddings", header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    skipped = result.counters.get("files_skipped", 0)
    table.add_row(
        "files", f"{len(m.files):,}" + (f" ({skipped:,} skipped: already done)" if skipped else "")
    )
    table.add_row("chunks embedded", f"{totals.chunks:,}")
    table.add_row("chunk tokens", f"{totals.tokens:,}")
    table.add_row("tokens run (with context)", f"{totals.window_tokens:,}")
    table.add_row("windows / batches", f"{totals.windows:,} / {totals.batches:,}")
    table.add_row("padding share", f"{totals.padding_share:.2%}")
    table.add_row("vector", f"{m.pooling.name}, D={m.dim}, float16, unit length")
    if totals.zero_vectors:
        table.add_row("zero vectors (no concept active)", f"{totals.zero_vectors:,}")
    table.add_row("encoder", f"{m.encoder.name} {m.encoder.fingerprint[:19]}")
    table.add_row("window / context", f"{m.context.window} / {m.context.context} tokens")
    console.print(table)


def report_index(m, root: str, as_json: bool, counters: dict | None = None) -> None:
    """``tda index build`` / ``index info``: an ``IndexManifest`` (+ the build's Beam
    counters) as ``key: value`` lines or JSON."""
    total = sum(f.size for f in m.files)
    summary = {
        "root": root,
        "factory": m.factory,
        "metric": m.metric,
        "dim": m.dim,
        "nprobe": m.nprobe,
        "vectors": m.vectors,
        "shards": len(m.shards),
        "train_vectors": m.train_vectors,
        "bytes": total,
        "bytes_per_chunk": round(total / max(1, m.vectors), 1),
        # each channel's files: what the span and lexical channels add to the dense index
        "channels": {
            "dense": sum(
                f.size for f in m.files if "/" not in f.path or f.path.startswith("shards/")
            ),
            **{
                c.name: sum(
                    f.size
                    for f in m.files
                    if f.path in set().union(*(set(r.values()) for r in c.shards))
                )
                for c in m.channels
            },
        },
        "encoder": m.encoder.spec,
        "fingerprint": m.encoder.fingerprint,
        "pooling": m.pooling.name,
    }
    if counters is not None:
        summary["counters"] = counters
    if as_json:
        _echo_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key:>15}: {value}")


def report_index_verify(problems: list[str], root: str) -> None:
    """``tda index verify``: one ``FAIL`` line per mismatching file, or ``ok``."""
    for p in problems:
        click.echo(f"FAIL {p}")
    if not problems:
        click.echo(f"ok: every file of {root}/index matches its manifest sha256")


def report_index_merge(record: dict, root: str) -> None:
    """``tda index merge``: the merged variant's record (vectors, files with sizes)."""
    size = sum(f["size"] for f in record["files"])
    click.echo(
        f"merged {record['vectors']:,} vectors into {root}/index/merged ({size:,} bytes); "
        f"search it with `tda search {root} --merged`"
    )


def report_build(result, out: str, as_json: bool) -> None:
    """``tda build``: a ``BuildResult`` (the three stages' results and seconds)."""
    chunk_totals, embed_m, index_m = (
        result.chunk.manifest.totals,
        result.embed.manifest,
        result.index.manifest,
    )
    index_bytes = sum(f.size for f in index_m.files)
    summary = {
        "root": out,
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "chunk": {"files": len(result.chunk.manifest.inputs), **chunk_totals.to_dict()},
        "embed": {
            "encoder": embed_m.encoder.spec,
            "fingerprint": embed_m.encoder.fingerprint,
            "pooling": embed_m.pooling.name,
            "dim": embed_m.dim,
            **embed_m.totals.to_dict(),
        },
        "index": {
            "factory": index_m.factory,
            "vectors": index_m.vectors,
            "shards": len(index_m.shards),
            "bytes": index_bytes,
        },
        "counters": {
            "chunk": result.chunk.counters,
            "embed": result.embed.counters,
            "index": result.index.counters,
        },
    }
    if as_json:
        _echo_json(summary)
        return
    from rich.table import Table

    console = _console(100)
    table = Table(title=f"tda build -> {out}", header_style="bold")
    for name in ("stage", "result", "seconds"):
        table.add_column(name, justify="left" if name != "seconds" else "right")
    secs = result.seconds
    table.add_row(
        "chunk",
        f"{chunk_totals.documents:,} documents -> {chunk_totals.chunks:,} chunks, "
        f"{chunk_totals.tokens:,} tokens, {chunk_totals.deadlettered:,} dead letters",
        f"{secs['chunk']:.1f}",
    )
    table.add_row(
        "embed",
        f"{embed_m.totals.chunks:,} vectors, {embed_m.pooling.name} D={embed_m.dim}, "
        f"{embed_m.totals.window_tokens / max(secs['embed'], 1e-9):,.0f} tokens/s",
        f"{secs['embed']:.1f}",
    )
    table.add_row(
        "index",
        f"{index_m.vectors:,} vectors in {len(index_m.shards)} "
        f"shard{'s' if len(index_m.shards) != 1 else ''} ({index_m.factory}), "
        f"{index_bytes / max(1, index_m.vectors):.0f} bytes/chunk",
        f"{secs['index']:.1f}",
    )
    console.print(table)


def report_search(hits, manifest_id: str, root: str, as_json: bool) -> None:
    """``tda search``: the hits (score + chunk record) of one query, best first."""
    if as_json:
        rows = [
            {
                "score": h.score,
                **h.chunk.__dict__,
                **(
                    {
                        "channels": {
                            n: {"rank": r, "score": v} for n, (r, v) in h.channels.items()
                        },
                        "fused_score": h.fused_score,
                    }
                    if h.channels
                    else {}
                ),
            }
            for h in hits
        ]
        click.echo(json.dumps({"manifest_id": manifest_id, "hits": rows}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"tda search {root}", header_style="bold", show_lines=True)
    for col in ("score", "found by", "chunk id", "source / document", "chars", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        c = h.chunk
        table.add_row(
            f"{h.score:.4f}",
            "\n".join(f"{n} #{r}" for n, (r, _) in h.channels.items()) or "dense",
            str(c.chunk_id),
            f"{c.source}\n{c.doc_id}",
            f"{c.char_start}..{c.char_end}",
            (c.text or "")[:200],
        )
    _console(120).print(table)


def report_scan(summary: dict, root: str, what: str, out: str, as_json: bool) -> None:
    """``tda scan``: the scan summary (hits per source, the 30 largest shares shown) of
    ``what`` was scanned for."""
    if as_json:
        _echo_json(summary)
        return
    from rich.table import Table

    table = Table(
        title=f"tda scan {root}: {what}", header_style="bold",
        caption=f"{summary['chunks_hit']:,} chunks in {summary['documents_hit']:,} documents "
        f"hit; written to {out} (hits.parquet, by_document.parquet, by_source.parquet, "
        f"prevalence.png)",
    )  # fmt: skip
    for col in ("source", "chunks hit", "of chunks", "share", "documents hit", "max score", ""):
        table.add_column(col, justify="left" if col in ("source", "") else "right")
    largest = max((r["share"] for r in summary["by_source"]), default=0.0) or 1.0
    for r in summary["by_source"][:30]:
        table.add_row(
            r["source"], f"{r['chunks_hit']:,}", f"{r['chunks']:,}", f"{r['share']:.2%}",
            f"{r['documents_hit']:,} / {r['documents']:,}", f"{r['max_score']:.3f}",
            "█" * round(20 * r["share"] / largest),
        )  # fmt: skip
    _console(120).print(table)


def report_prune_list(table, level: str, out: str, as_csv: bool) -> None:
    """``tda prune list``: the prune list written (a pyarrow Table), counted per source."""
    per_source: dict[str, int] = {}
    for src in table["source"].to_pylist():
        per_source[src] = per_source.get(src, 0) + 1
    click.echo(
        f"{table.num_rows:,} {level} entries written to {out}"
        + (" (+ CSV)" if as_csv else "")
        + "".join(f"\n  {src}: {n:,}" for src, n in sorted(per_source.items()))
    )


def report_prune_apply(audit: dict, corpus_out: str, out: str, as_json: bool) -> None:
    """``tda prune apply``: the audit entry (what was removed, where it was written)."""
    if as_json:
        _echo_json(audit)
        return
    c = audit["counts"]
    lines = [
        f"pruned {c['chunks_removed']:,} chunks ({c['documents_removed']:,} documents removed, "
        f"{c['documents_edited']:,} edited) at {audit['level']} level: {audit['reason']}",
        f"corpus:  {corpus_out} ({c['records_out']:,} of {c['records_in']:,} records kept)",
        f"index:   {out} ({audit['vectors']:,} vectors; {c['shards_refilled']} shards refilled, "
        f"{c['shards_copied']} copied), manifest {audit['child_manifest_id'][:19]}",
        f"audit:   {out}/audit.jsonl (parent {audit['parent_manifest_id'][:19]})",
    ]
    for src, n in audit["removed_per_source"].items():
        lines.append(f"  {src}: {n['chunks']:,} chunks, {n['documents']:,} documents")
    click.echo("\n".join(lines))


def report_tokenizer(path: str, info, documents: int, skipped: int) -> None:
    """``tda tokenizer train``: the tokenizer written (its ``TokenizerInfo``) and the
    documents it was trained on."""
    click.echo(
        f"wrote {path}: vocab {info.vocab_size}, {documents:,} documents "
        f"({skipped:,} unusable records skipped), {info.fingerprint}"
    )


def report_model_train(result, out: str, as_json: bool) -> None:
    """``tda model train``: the fingerprint, first -> last losses and held-out scores."""
    if as_json:
        click.echo(json.dumps({"out": out, "fingerprint": result.fingerprint, **result.report}))
        return
    report, held = result.report, result.report["heldout"]
    click.echo(
        f"wrote {out}: {result.fingerprint}\n"
        f"loss {report['loss_first']:.3f} -> {report['loss_last']:.3f} "
        f"(LM {report['lm_loss_first']:.3f} -> {report['lm_loss_last']:.3f})"
    )
    if held.get("tokens"):
        click.echo(
            f"held-out ({held['tokens']:,} tokens): LM loss {held['lm_loss']:.3f}, known-concept "
            f"AUROC {held['concept_auroc_mean']:.3f} over {held['concepts_scored']} concepts "
            f"(0.5 = chance)"
        )


def report_model_info(encoder, as_json: bool) -> None:
    """``tda model info``: an encoder's identity (``EncoderInfo``) and known concepts (the
    first 60 shown, harmful ones marked)."""
    from dataclasses import asdict

    info = {
        **asdict(encoder.info),
        "concepts": list(encoder.concept_names),
        "harmful": sorted(encoder.harmful_concepts),
    }
    if as_json:
        _echo_json(info)
        return
    for key, value in asdict(encoder.info).items():
        click.echo(f"{key:>22}: {value}")
    shown = ", ".join(
        n + (" (harmful)" if n in encoder.harmful_concepts else "")
        for n in encoder.concept_names[:60]
    )
    more = len(encoder.concept_names) - 60
    click.echo(f"{'known concepts':>22}: {shown}" + (f", ... {more:,} more" if more > 0 else ""))
