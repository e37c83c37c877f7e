"""The researcher's commands on a finished root: ``search``, ``attribute``, ``check`` (the
counterfactual check of a report), ``serve``, and ``eval`` (attribution quality against
baselines, the harness in :mod:`tda.jobs.quality`).

What a command prints is in :mod:`tda.jobs.render`.
"""

from __future__ import annotations

import os
import sys

import click

from tda.schemas import (
    CHECK_METHODS,
    CHECK_RANGES,
    CHECK_SCOPES,
    IG_BASELINES,
    INPUT_ATTRIBUTIONS,
    QUERY_SPANS,
    RERANKS,
    AttributionReport,
    AttributionRequest,
    CheckSettings,
)
from tda.schemas.request import parse_channels

from .. import render
from .options import device_option, ranged, request_type, size_type, stage_type

__all__ = ["COMMANDS", "attribute", "check", "eval_quality", "search", "serve"]

# The attribute command's defaults are the request's own (one place: schemas/request.py).
ASK = AttributionRequest.defaults()


@click.command()
@click.argument("root", metavar="ROOT")
@click.option(
    "--text", default=None, help="Search for this text (encoded with the index's encoder)."
)
@click.option(
    "--chunk-id",
    type=stage_type("--chunk-id"),
    default=None,
    help="Search with a stored chunk's vector.",
)
@click.option("-k", "k", type=request_type("k"), default=10, show_default=True)
@click.option(
    "--nprobe",
    type=request_type("nprobe"),
    default=None,
    help="Override the index's default nprobe.",
)
@device_option()
@click.option("--merged", is_flag=True, help="Search the merged on-disk variant (tda index merge).")
@click.option(
    "--channels",
    default=None,
    metavar="LIST",
    help="--text: retrieval channels searched and fused (dense, span, lexical) [default: "
    "every channel the index has]; --chunk-id searches the dense channel.",
)
@click.option("--json", "as_json", is_flag=True)
def search(root, text, chunk_id, k, nprobe, device, merged, channels, as_json) -> None:
    """Nearest training chunks to a text (every channel of the index, fused) or to a stored
    chunk (its vector)."""
    if (text is None) == (chunk_id is None):
        raise click.UsageError("give exactly one of --text or --chunk-id")
    from tda.attribution.index.reader import IndexReader
    from tda.attribution.query import search_text

    reader = IndexReader.open(root, merged=merged)
    if text is None:
        hits = reader.hits(reader.vector(chunk_id)[None], k, nprobe)[0]
    else:
        hits = search_text(reader, text, k, parse_channels(channels), device, nprobe)
    render.report_search(hits, reader.manifest_id, root, as_json)


@click.command()
@click.argument("root", metavar="ROOT")
@click.option("--prompt", required=True, help="The prompt text (may be empty).")
@click.option("--output", default=None, help="The output text to attribute.")
@click.option(
    "--generate",
    type=request_type("generate"),
    default=None,
    metavar="N",
    help="Instead of --output: let the model write N tokens after the prompt.",
)
@click.option(
    "--temperature",
    type=request_type("temperature"),
    default=ASK["temperature"],
    show_default=True,
    help="For --generate: 0 is greedy, above 0 samples.",
)
@click.option(
    "--top-p",
    type=request_type("top_p"),
    default=None,
    help="For sampled --generate: nucleus mass [default: the model's, 0.9 for builtin].",
)
@click.option(
    "--repetition-penalty",
    type=request_type("repetition_penalty"),
    default=None,
    help="For --generate: divide the logits of tokens already in the sequence by this "
    "[default: the model's, 1.3 for builtin; 1 is off].",
)
@click.option(
    "--seed",
    type=request_type("seed"),
    default=ASK["seed"],
    show_default=True,
    help="For sampled --generate.",
)
@click.option(
    "--model", default=None, metavar="SPEC", help="Encoder [default: the one the index names]."
)
@click.option("--force", is_flag=True, help="Use --model even if it is not the index's encoder.")
@click.option(
    "-k",
    "k",
    type=request_type("k"),
    default=ASK["k"],
    show_default=True,
    help="Training chunks per chunk.",
)
@click.option(
    "--nprobe",
    type=request_type("nprobe"),
    default=None,
    help="Override the index's default nprobe.",
)
@click.option(
    "--chunk-size",
    type=request_type("chunk_size"),
    default=None,
    help="Output chunk tokens [default: the index's].",
)
@click.option(
    "--input-attribution",
    type=click.Choice(INPUT_ATTRIBUTIONS),
    default=ASK["input_attribution"],
    show_default=True,
    help="Prompt-token scores: gradient x input, integrated gradients, or none.",
)
@click.option(
    "--ig-steps", type=request_type("ig_steps"), default=ASK["ig_steps"], show_default=True
)
@click.option(
    "--ig-baseline",
    type=click.Choice(IG_BASELINES),
    default=ASK["ig_baseline"],
    show_default=True,
)
@click.option(
    "--top-concepts",
    type=request_type("top_concepts"),
    default=ASK["top_concepts"],
    show_default=True,
)
@click.option(
    "--query-span",
    type=click.Choice(QUERY_SPANS),
    default=ASK["query_span"],
    show_default=True,
    help="What each output chunk's search vector pools: 'chunk' = the index's chunk size "
    "in tokens ending at the chunk's end (a short chunk borrows the prompt's last tokens), "
    "'output' = the chunk's own tokens.",
)
@click.option(
    "--rerank",
    type=click.Choice(RERANKS),
    default=ASK["rerank"],
    show_default=True,
    help="Order the first --candidates fused chunks before keeping -k: by shared concepts "
    "('concepts'), by the longest word run shared with the query text ('span'), or by the "
    "model's own evidence ('evidence': each output token's predicting hidden state against "
    "the candidate's states where the same token followed).",
)
@click.option(
    "--candidates",
    type=request_type("candidates"),
    default=ASK["candidates"],
    show_default=True,
    help="Candidates per retrieval channel that fusion (and a --rerank) orders.",
)
@click.option(
    "--channels",
    default=None,
    metavar="LIST",
    help="Retrieval channels to search and fuse, comma-separated: dense (concept space), "
    "span (exact token spans), lexical (BM25) [default: every channel the index has].",
)
@click.option(
    "--check",
    "check_hits",
    is_flag=True,
    help="Also check the hits: per output chunk, the drop in its log-probability when a "
    "copy of the model unlearns them, against BM25's and random chunks (tda check's "
    "defaults; tda check REPORT.json sets them).",
)
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def attribute(root, prompt, output, generate, temperature, top_p, repetition_penalty, seed,
              model, force, k, nprobe,
              chunk_size, input_attribution, ig_steps, ig_baseline, top_concepts, query_span,
              rerank, candidates, channels, check_hits, device, as_json) -> None:  # fmt: skip
    """Attribute a model output to training chunks, concepts, prompt tokens and sources.

    One forward pass over prompt + output with the index's encoder; each output chunk
    searches with the index's pooling over at most the index's window of tokens ending at
    its end. Per output chunk: the top-k training chunks (provenance, text, shared concepts), the
    concepts behind its token logits (exact split + residual), prompt-token scores and
    the spread of its hits over sources.
    """
    if (output is None) == (generate is None):
        raise click.UsageError("give exactly one of --output or --generate N")
    from tda.attribution.attributor import Attributor

    request = AttributionRequest(
        prompt=prompt,
        output=output,
        generate=generate,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        k=k,
        nprobe=nprobe,
        input_attribution=input_attribution,
        ig_steps=ig_steps,
        ig_baseline=ig_baseline,
        top_concepts=top_concepts,
        chunk_size=chunk_size,
        query_span=query_span,
        rerank=rerank,
        candidates=candidates,
        channels=channels,
    )  # validated here, before the model loads
    attributor = Attributor.from_root(root, model=model, device=device, force=force)
    # checked inside attribute: on the tokens attributed, which a generated output's
    # text need not tokenize back to
    render.report_attribution(attributor.attribute(request, check=check_hits), as_json)


_CHECK = CheckSettings()


@click.command()
@click.argument("report_path", metavar="REPORT.json", type=click.Path(dir_okay=False))
@click.option(
    "--root", default=None, help="The index the report was made on [default: the report's]."
)
@click.option(
    "--model", default=None, metavar="SPEC", help="Encoder [default: the one the index names]."
)
@click.option(
    "--steps", type=ranged(CHECK_RANGES["steps"]), default=_CHECK.steps, show_default=True,
    help="Gradient-ascent steps per unlearned set.",
)  # fmt: skip
@click.option(
    "--lr", type=ranged(CHECK_RANGES["lr"]), default=_CHECK.lr, show_default=True,
    help="Each step's length as a share of the moved weights' norm.",
)  # fmt: skip
@click.option(
    "--draws", type=ranged(CHECK_RANGES["draws"]), default=_CHECK.draws, show_default=True,
    help="Random sets per output chunk (the p-value's floor is 1 / (draws + 1)).",
)  # fmt: skip
@click.option(
    "--seed", type=ranged(CHECK_RANGES["seed"]), default=_CHECK.seed, show_default=True,
    help="Seeds the random sets.",
)  # fmt: skip
@click.option(
    "--control", type=ranged(CHECK_RANGES["control"]), default=_CHECK.control,
    show_default=True,
    help="Random chunks whose loss rise is taken off every drop: a set's damage to all "
    "text (0: none).",
)  # fmt: skip
@click.option(
    "--scope", type=click.Choice(CHECK_SCOPES), default=_CHECK.scope, show_default=True,
    help="Weights the ascent moves: all, or the last block and those outside the blocks.",
)  # fmt: skip
@click.option(
    "--method", type=click.Choice(CHECK_METHODS), default=_CHECK.method, show_default=True,
    help="ascent: unlearn the set alone; project: keep what the rest of the evidence the "
    "index finds for the output teaches (its gradient projected out of each step); forget: "
    "unlearn each set until its loss reaches random training text's (--steps caps it); "
    "unique: unlearn only what the set teaches and its nearest chunks (BM25) do not.",
)  # fmt: skip
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the checked report as JSON.")
def check(
    report_path, root, model, steps, lr, draws, seed, control, scope, method, device, as_json
):
    """Check an attribution report (tda attribute --json > REPORT.json): per output chunk,
    how far its log-probability drops when a copy of the model unlearns the chunk's hits
    by a few steps of gradient ascent, against the same for BM25's chunks and for random
    chunks of the same lengths (z-score, p-value). The model's own weights are never
    changed. Evidence that the hits drove the output, not proof: see the README."""
    from tda.attribution.attributor import Attributor

    settings = CheckSettings(
        steps=steps, lr=lr, draws=draws, seed=seed, scope=scope, method=method, control=control
    )
    try:
        with open(report_path, encoding="utf-8") as f:
            report = AttributionReport.from_json(f.read())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"cannot read {report_path}: {exc}", param_hint="REPORT.json"
        ) from None
    attributor = Attributor.from_root(root or report.index_root, model=model, device=device)
    render.report_attribution(attributor.check(report, settings), as_json)


@click.command()
@click.argument("root", metavar="ROOT")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=stage_type("--port"), default=8080, show_default=True)
@click.option(
    "--model", default=None, metavar="SPEC", help="Encoder [default: the one the index names]."
)
@click.option("--force", is_flag=True, help="Use --model even if it is not the index's encoder.")
@click.option(
    "--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
    help="A host name clients may use besides 127.0.0.1, localhost and ::1 (repeat; "
    "--host's own name is added). Other Host headers are refused (DNS rebinding).",
)  # fmt: skip
@click.option(
    "--max-request-bytes", type=size_type("--max-request-bytes"), default="1MiB",
    show_default=True,
    help="Largest request body (1KiB..1GiB); a larger one gets HTTP 413 unread.",
)  # fmt: skip
@device_option()
def serve(root, host, port, model, force, allowed_hosts, max_request_bytes, device) -> None:
    """Serve the attribution API and the web viewer for ROOT's index (localhost only by
    default): open http://HOST:PORT/ and click an output chunk."""
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"tda serve needs the serve extra ({exc}): pip install 'tda[serve]'"
        ) from None
    allowed = (*allowed_hosts, *(() if host in ("0.0.0.0", "::") else (host,)))
    app = create_app(
        root, model=model, device=device, force=force, allowed_hosts=allowed,
        max_request_bytes=max_request_bytes,
    )  # fmt: skip
    click.echo(f"tda serve: http://{host}:{port}/ (index {root}); Ctrl-C to stop")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command("eval", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_quality(args) -> None:
    """Attribution quality on planted facts: tda representations and hybrids against
    BM25, exact-span, gradient (Grad-Cos, TRAK) and random baselines, plus counterfactual
    retraining. Options: tda eval --help-harness."""
    from ..quality import main as run_quality

    # argparse names the harness after sys.argv[0]: `tda` for the console script; under
    # `python -m tda.jobs.cli` that is now cli/__main__.py, where the usage line has always
    # said "cli.py" (the command line was one module of that name).
    prog = os.path.basename(sys.argv[0])
    run_quality(
        ["--help" if a == "--help-harness" else a for a in args],
        prog="cli.py" if prog == "__main__.py" else prog,
    )


COMMANDS = (search, attribute, check, serve, eval_quality)
