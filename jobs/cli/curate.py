"""The data team's commands: ``scan`` (where a harmful concept fires, or what resembles
known-bad texts), ``prune list`` (a scan -> a prune list) and ``prune apply`` (a pruned
corpus and root, audited).

What a command prints is in :mod:`tda.jobs.render`.
"""

from __future__ import annotations

import click

from .. import render
from ..beam_args import BeamCommand
from .options import device_option, pipeline_options, stage_type

__all__ = ["COMMANDS", "add", "prune", "retrain", "scan", "takedown"]


@click.command(cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@click.option(
    "--concept", "concepts", multiple=True, metavar="NAME",
    help="A known concept to scan for (repeat for several).",
)  # fmt: skip
@click.option(
    "--like", default=None, metavar="FILE",
    help="Exemplar texts (one per line, or JSONL with 'text') to search for.",
)  # fmt: skip
@click.option(
    "--min-weight", type=stage_type("--min-weight"), default=None,
    help="--concept: a chunk's pooled concept weight must reach this (overrides the "
    "model's calibrated threshold per concept; 0.5 for a model without one).",
)  # fmt: skip
@click.option(
    "--top", type=stage_type("--top"), default=1000, show_default=True,
    help="--like: nearest chunks searched per exemplar.",
)  # fmt: skip
@click.option(
    "--min-score",
    type=stage_type("--min-score"),
    default=None,
    help="--like: keep hits at least this similar.",
)
@click.option(
    "--channels", default=None, metavar="LIST",
    help="--like: retrieval channels searched and fused (dense, span, lexical) "
    "[default: every channel the index has].",
)  # fmt: skip
@click.option("--out", required=True, metavar="DIR", help="Scan directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier scan in DIR.")
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the scan summary as JSON.")
@click.pass_context
def scan(ctx, root, concepts, like, min_weight, top, min_score, channels, out, overwrite,
         device, as_json) -> None:  # fmt: skip
    """Find where a harmful concept fires (--concept, a Beam job over ROOT/embeddings) or
    what resembles known-bad texts (--like, searched in the index); aggregate per source
    and document into DIR (hits / by_document / by_source Parquet, scan.json, a chart)."""
    from tda.pipeline.scan import run_scan
    from tda.schemas.curation import ScanConfig
    from tda.schemas.request import parse_channels

    config = ScanConfig(
        root=root, out=out, concepts=tuple(concepts), like=like, min_weight=min_weight,
        top=top, min_score=min_score, overwrite=overwrite, device=device,
        channels=parse_channels(channels),
    )  # fmt: skip
    result = run_scan(config, options=pipeline_options(ctx))
    what = ", ".join(concepts) if concepts else f"exemplars in {like}"
    render.report_scan(result.summary, root, what, out, as_json)


@click.group()
def prune() -> None:
    """Prune lists from scans; pruned corpus, chunks, embeddings and index, audited."""


@prune.command("list")
@click.argument("scan_dir", metavar="SCAN_DIR")
@click.option(
    "--level", type=click.Choice(["chunk", "document", "source"]), default="document",
    show_default=True,
)  # fmt: skip
@click.option("--min-share", type=stage_type("--min-share"), default=0.0, show_default=True,
              help="document / source: share of its chunks hit.")  # fmt: skip
@click.option(
    "--min-score",
    type=stage_type("--min-score"),
    default=None,
    help="Score a hit (or max) must reach.",
)
@click.option("--out", required=True, metavar="FILE", help="prune.parquet to write.")
@click.option("--csv", "as_csv", is_flag=True, help="Also write FILE as CSV (editable).")
def prune_list(scan_dir, level, min_share, min_score, out, as_csv) -> None:
    """Turn a scan into a prune list: ids plus the reason for each."""
    from tda.attribution.curation.prune import make_prune_list

    table = make_prune_list(scan_dir, out, level, min_share, min_score, as_csv)
    render.report_prune_list(table, level, out, as_csv)


@prune.command("apply", cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@click.option("--list", "list_path", required=True, metavar="FILE",
              help="prune.parquet (or its edited CSV).")  # fmt: skip
@click.option("--corpus", multiple=True, required=True, metavar="INPUT",
              help="The corpus ROOT was built from (repeat for several inputs).")  # fmt: skip
@click.option("--corpus-out", required=True, metavar="DIR", help="Pruned corpus to write.")
@click.option("--out", required=True, metavar="NEW_ROOT", help="Pruned build root to write.")
@click.option("--reason", required=True, help="Why: recorded in the manifest and audit log.")
@click.option("--overwrite", is_flag=True, help="Replace earlier output in DIR / NEW_ROOT.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted prune; the files it finished are kept.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the audit entry as JSON.")
@click.pass_context
def prune_apply(ctx, root, list_path, corpus, corpus_out, out, reason, overwrite, resume,
                as_json) -> None:  # fmt: skip
    """Write the corpus without the pruned data, a new root whose index lacks it, and an
    audit record. ROOT is never modified."""
    from tda.pipeline.prune import run_prune
    from tda.schemas.curation import PruneConfig

    config = PruneConfig(
        root=root, list_path=list_path, corpus=tuple(corpus), corpus_out=corpus_out,
        out=out, reason=reason, overwrite=overwrite, resume=resume,
    )  # fmt: skip
    result = run_prune(config, options=pipeline_options(ctx))
    render.report_prune_apply(result.audit, corpus_out, out, as_json)


@click.command("add", cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "--model",
    default=None,
    metavar="SPEC",
    help="ROOT's encoder at another path (refused unless its weights are ROOT's).",
)
@click.option(
    "--tokenizer",
    default=None,
    metavar="SPEC",
    help="ROOT's tokenizer at another path (refused unless it is ROOT's).",
)
@device_option()
@click.option("--by", default=None, help="Who, for the audit log [default: login name].")
@click.option("--resume", is_flag=True, help="Continue an interrupted add; finished files kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the audit entry as JSON.")
@click.pass_context
def add(ctx, root, inputs, model, tokenizer, device, by, resume, as_json) -> None:  # fmt: skip
    """Grow ROOT by new input files, as a new generation: chunked with ROOT's tokenizer
    and settings (file indices after ROOT's), embedded with ROOT's encoder, indexed as
    new shards with ROOT's trained quantizer. Nothing ROOT held is rewritten; warns when
    the new vectors drift from what the quantizer was trained on."""
    from tda.pipeline.add import run_add
    from tda.schemas.changes import AddConfig

    config = AddConfig(
        root=root, inputs=tuple(inputs), model=model, tokenizer=tokenizer, device=device,
        by=by, resume=resume,
    )  # fmt: skip
    result = run_add(config, options=pipeline_options(ctx))
    _report_change(result.audit, as_json)
    drift = result.audit.get("drift")
    if drift and drift.get("drifted"):
        from tda.attribution.curation.drift import Drift

        click.echo(
            f"Warning: quantizer drift: {Drift(**drift).line()}; consider "
            f"`tda index retrain {root}`",
            err=True,
        )


@click.command("takedown")
@click.argument("root", metavar="ROOT")
@click.option("--doc-id", "doc_ids", multiple=True, metavar="ID",
              help="A document id to take down (repeat for several).")  # fmt: skip
@click.option("--source", "sources", multiple=True, metavar="NAME",
              help="Take down every document of a source (repeat for several).")  # fmt: skip
@click.option("--list", "list_path", default=None, metavar="FILE",
              help="Document ids, one per line (or a document/source prune list).")  # fmt: skip
@click.option("--reason", required=True, help="Why: recorded in the manifest and audit log.")
@click.option("--by", default=None, help="Who, for the audit log [default: login name].")
@click.option("--corpus", multiple=True, metavar="INPUT",
              help="The corpus ROOT was built from (checked; with --corpus-out).")  # fmt: skip
@click.option("--corpus-out", default=None, metavar="DIR",
              help="Write the affected corpus files here without the documents.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the audit entry as JSON.")
def takedown(root, doc_ids, sources, list_path, reason, by, corpus, corpus_out,
             as_json) -> None:  # fmt: skip
    """Take documents out of ROOT as a new generation: only the parts and shards that
    hold them are rewritten (the old ones are kept under ROOT/generations/), and
    ROOT/audit.jsonl records who, why, what and how much."""
    from tda.attribution.curation.takedown import run_takedown
    from tda.schemas.changes import TakedownConfig

    config = TakedownConfig(
        root=root, reason=reason, doc_ids=tuple(doc_ids), sources=tuple(sources),
        list_path=list_path, by=by, corpus=tuple(corpus), corpus_out=corpus_out,
    )  # fmt: skip
    _report_change(run_takedown(config), as_json)


@click.command("retrain")
@click.argument("root", metavar="ROOT")
@click.option("--by", default=None, help="Who, for the audit log [default: login name].")
@click.option("--json", "as_json", is_flag=True, help="Print the audit entry as JSON.")
def retrain(root, by, as_json) -> None:
    """Train a new quantizer on a sample of all of ROOT's vectors and refill every
    shard, as a new generation (after `tda add` warned of drift)."""
    from tda.attribution.curation.retrain import run_retrain
    from tda.schemas.changes import RetrainConfig

    _report_change(run_retrain(RetrainConfig(root=root, by=by)), as_json)


def _report_change(entry: dict, as_json: bool) -> None:
    """A change's audit entry: JSON, or a few lines (what changed, both manifest ids)."""
    import json

    if as_json:
        click.echo(json.dumps(entry, indent=2, sort_keys=True))
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(entry.get("counts", {}).items()))
    click.echo(f"{entry['change']}: {counts or 'done'}")
    if entry.get("not_found"):
        click.echo(f"not in the root (already removed?): {', '.join(entry['not_found'][:10])}")
    parent, child = entry["parent_manifest_id"][:16], entry["child_manifest_id"][:16]
    click.echo(f"manifest {parent}... -> {child}... (the old generation is kept)")


COMMANDS = (scan, prune, add, takedown)
