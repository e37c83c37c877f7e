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

__all__ = ["COMMANDS", "prune", "scan"]


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
@click.option("--json", "as_json", is_flag=True, help="Print the audit entry as JSON.")
@click.pass_context
def prune_apply(ctx, root, list_path, corpus, corpus_out, out, reason, overwrite,
                as_json) -> None:  # fmt: skip
    """Write the corpus without the pruned data, a new root whose index lacks it, and an
    audit record. ROOT is never modified."""
    from tda.pipeline.prune import run_prune
    from tda.schemas.curation import PruneConfig

    config = PruneConfig(
        root=root, list_path=list_path, corpus=tuple(corpus), corpus_out=corpus_out,
        out=out, reason=reason, overwrite=overwrite,
    )  # fmt: skip
    result = run_prune(config, options=pipeline_options(ctx))
    render.report_prune_apply(result.audit, corpus_out, out, as_json)


COMMANDS = (scan, prune)
