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

from tda.schemas import AttributionReport

from .report_view import render_report, score_text

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
    "report_verify",
]


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


def report_verify(result, root: str, as_json: bool) -> None:
    """``tda verify``: a :class:`~tda.attribution.io.verify.RootCheck` as one line per
    problem (``ERROR`` / ``WARNING``, the file, what is wrong, the fix) and a summary
    line, or as JSON."""
    from tda.attribution.io.sizes import format_size

    if as_json:
        _echo_json(result.to_dict())
        return
    for problem in result.problems:
        click.echo(problem.line)
    checked = "sha256 and size" if result.hashed else "size"
    stages = ", ".join(result.stages) or "no stage"
    warned = f"; {result.warnings} warning(s)" if result.warnings else ""
    if result.ok:
        click.echo(
            f"ok: {result.files} files ({format_size(result.bytes)}) of {root} match their "
            f"manifests' {checked} ({stages}){warned}"
        )
    else:
        click.echo(
            f"FAILED: {result.errors} problem(s) in {root} ({result.files} files of {stages} "
            f"checked){warned}"
        )


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
            score_text(h.score, h.fused_score, 4),
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
    for col in ("source", "chunks hit", "of chunks", "share", "share ≥ (95%)", "documents hit",
                "max score", ""):  # fmt: skip
        table.add_column(col, justify="left" if col in ("source", "") else "right")
    largest = max((r["share"] for r in summary["by_source"]), default=0.0) or 1.0
    for r in summary["by_source"][:30]:
        table.add_row(
            r["source"], f"{r['chunks_hit']:,}", f"{r['chunks']:,}", f"{r['share']:.2%}",
            f"{r['share_lower']:.2%}", f"{r['documents_hit']:,} / {r['documents']:,}",
            f"{r['max_score']:.3f}", "█" * round(20 * r["share"] / largest),
        )  # fmt: skip
    _console(120).print(table)
    settings = summary["settings"]
    if settings.get("mode") == "concept":
        cuts = ", ".join(
            f"{name} {'p' if cal else 'weight'} ≥ {cut:.3f}"
            for name, cut, cal in zip(
                settings["concepts"], settings["thresholds"], settings["calibrated"], strict=True
            )
        )
        scale = (
            "calibrated probability, the model's fitted threshold"
            if all(settings["calibrated"])
            else "raw pooled weight where p is not shown"
        )
        click.echo(f"hit: {cuts} ({scale}); sources ranked by the 95% lower bound of their share")


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
            f"held-out ({held['tokens']:,} tokens): LM loss {held['lm_loss']:.3f}; known-concept "
            f"AUROC (0.5 = chance) where a match ends {_num(held['concept_auroc_mean'])} over "
            f"{held['concepts_scored']} concepts, lowest with >= 50 positives "
            f"{_num(held['auroc_min'])}; on every token of a match "
            f"{_num(held.get('concept_auroc_overlap_mean'))}, lowest "
            f"{_num(held.get('auroc_overlap_min'))} (head trained on "
            f"{held.get('labels', 'overlap')} labels)"
        )
    share = held.get("logit_share")
    if share:
        click.echo(
            f"logit of the actual next tokens, per {share['chunks']:,} held-out chunks: known "
            f"concepts {share['known']:.1%}, unknown {share['unknown']:.1%}, residual "
            f"{share['residual']:.1%} (|sum over a chunk| of each part, added over chunks)"
        )
        for target, met in held["targets"].items():
            click.echo(f"  {'met   ' if met else 'MISSED'} {target}")
        for key, where in (
            ("auroc_below_0.9", "where a match ends"),
            ("auroc_overlap_below_0.9", "on every token of a match"),
        ):
            below = sorted(held.get(key, {}).items(), key=lambda kv: kv[1])
            if below:
                worst = ", ".join(f"{name} {value:.3f}" for name, value in below[:5])
                click.echo(
                    f"         {len(below)} concepts below AUROC 0.9 {where}; lowest: {worst} "
                    f"(training.json lists every concept's)"
                )


def _num(value) -> str:
    """A held-out figure, or "n/a" when there was none to compute."""
    return "n/a" if value is None else f"{value:.3f}"


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
