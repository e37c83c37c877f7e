"""The ``tda`` command line. Parsing only: options become frozen config dataclasses
(:mod:`tda.schemas.config`), which validate themselves; the work is in ``pipeline/``."""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from tda import __version__
from tda.attribution.io.sizes import parse_size
from tda.schemas import (
    DEFAULT_CANDIDATES,
    DEFAULT_QUERY_SPAN,
    DEFAULT_RERANK,
    QUERY_SPANS,
    RERANKS,
    ChunkConfig,
    ChunkingPolicy,
    IndexConfig,
    ReadOptions,
)

from .beam_args import BeamCommand, quiet_beam_import


@functools.cache
def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: shown as one line, exit status 1 (imported late
    so ``tda --help`` stays fast)."""
    from tda.attribution.corpus.readers import InputError
    from tda.attribution.corpus.tokenizer import TokenizerError
    from tda.attribution.encoders import EncoderError
    from tda.attribution.encoders.builtin.concepts import ConceptSetError
    from tda.attribution.io.parts import StageError
    from tda.schemas import ChunkIdOverflowError, ConfigError, ManifestError

    return (
        StageError,
        EncoderError,
        ConceptSetError,
        InputError,
        TokenizerError,
        ConfigError,
        ManifestError,
        ChunkIdOverflowError,
    )


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = _SizeType()


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Beam logs every bundle at INFO; keep it quiet unless asked twice.
    logging.getLogger("apache_beam").setLevel(logging.WARNING if verbose < 2 else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tda")
@click.option("-v", "--verbose", count=True, help="-v: progress per file; -vv: Beam's own logs.")
def main(verbose: int) -> None:
    """tda: a training-data attribution index.

    Stages write into one build root: chunk (ROOT/chunks, ROOT/deadletter), embed
    (ROOT/embeddings), index build (ROOT/index); `tda build` runs all three. `tda model
    train` makes the builtin concept-bottleneck model; attribute, search, scan, prune and
    serve read a finished root.
    """
    _setup_logging(verbose)


def _stack(options, func):
    """Apply click option decorators so that they show in the order listed."""
    for option in reversed(options):
        func = option(func)
    return func


def read_options(func):
    """Options for reading corpus files, shared by the commands that read a corpus."""
    options = [
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["auto", "jsonl", "parquet", "text"]),
            default="auto",
            show_default=True,
            help="Input format; auto decides by extension (.jsonl[.gz|.zst], .parquet, .txt).",
        ),
        click.option(
            "--text-field",
            default="text",
            show_default=True,
            help="JSONL key / Parquet column of the text (dotted for nested).",
        ),
        click.option(
            "--id-field",
            default="id",
            show_default=True,
            help="Document id field; missing ids become '<file name>#<record index>'.",
        ),
        click.option(
            "--source",
            default=None,
            help="Source name for every document [default: the file's stem].",
        ),
        click.option(
            "--source-field",
            default=None,
            help="Field holding each record's source name (records without it are dead-lettered).",
        ),
        click.option(
            "--text-unit",
            type=click.Choice(["file", "line"]),
            default="file",
            show_default=True,
            help="Plain text: one document per file or per line.",
        ),
        click.option(
            "--max-doc-bytes",
            type=SIZE,
            default="16MiB",
            show_default=True,
            help="Records larger than this are dead-lettered (bounds memory).",
        ),
    ]
    return _stack(options, func)


def _read_options(kw: dict) -> ReadOptions:
    return ReadOptions(
        format=kw.pop("fmt"),
        text_field=kw.pop("text_field"),
        id_field=kw.pop("id_field"),
        source=kw.pop("source"),
        source_field=kw.pop("source_field"),
        text_unit=kw.pop("text_unit"),
        max_doc_bytes=kw.pop("max_doc_bytes"),
    )


def chunk_options(func):
    """The chunk stage's policy options (shared by `tda chunk` and `tda build`)."""
    options = [
        click.option(
            "--chunk-size", type=int, default=64, show_default=True, help="Tokens per chunk."
        ),
        click.option(
            "--stride",
            type=int,
            default=None,
            help="Tokens between chunk starts [default: the chunk size; smaller overlaps].",
        ),
        click.option(
            "--text/--no-text",
            "store_text",
            default=True,
            show_default=True,
            help="Store each chunk's text in the chunks table.",
        ),
        click.option(
            "--dataset-id",
            type=int,
            default=0,
            show_default=True,
            help="Dataset number encoded in every chunk id.",
        ),
    ]
    return read_options(_stack(options, func))


def _chunk_config(inputs, out: str, tokenizer: str, resume: bool, overwrite: bool, kw: dict):
    return ChunkConfig(
        inputs=tuple(inputs),
        out=out,
        tokenizer=tokenizer,
        read=_read_options(kw),
        chunking=ChunkingPolicy(
            chunk_size=kw.pop("chunk_size"),
            stride=kw.pop("stride"),
            store_text=kw.pop("store_text"),
        ),
        dataset_id=kw.pop("dataset_id"),
        resume=resume,
        overwrite=overwrite,
    )


@main.command(cls=BeamCommand)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "out", required=True, metavar="ROOT", help="Build root to write into.")
@click.option(
    "--tokenizer",
    required=True,
    metavar="SPEC",
    help="tokenizer.json, a directory holding one, or tiktoken:NAME.",
)
@chunk_options
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run; finished files are skipped."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier chunk run in ROOT.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def chunk(ctx: click.Context, inputs, out, tokenizer, resume, overwrite, as_json, **kw) -> None:
    """Cut corpus files into token chunks with exact provenance.

    INPUT: files, folders (searched recursively), globs or URLs (file://, gs://, s3://,
    memory://). Writes ROOT/chunks/part-NNNNNN.parquet per input file,
    ROOT/deadletter/ for unusable records, and ROOT/chunks/manifest.json last.
    """
    try:
        config = _chunk_config(inputs, out, tokenizer, resume, overwrite, kw)
        result = _run_stage(ctx, "chunk", config)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _report_chunk(result, out, as_json)


def _run_stage(ctx: click.Context, stage: str, config):
    """Run ``tda.pipeline.<stage>.run_<stage>(config, Beam options from the command line)``
    (Beam imported only now, and quietly)."""
    import importlib

    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions

        module = importlib.import_module(f"tda.pipeline.{stage}")
    return getattr(module, f"run_{stage}")(config, PipelineOptions(_beam_args(ctx)))


def _beam_args(ctx: click.Context) -> list[str]:
    """The Beam options given, plus quiet SDK-harness logs unless -vv or set explicitly."""
    from .runners import runner_args

    args = runner_args(ctx.meta.get("beam_config"), list(ctx.meta["beam_args"]))
    verbose = ctx.find_root().params.get("verbose", 0)
    if verbose < 2 and not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")
    return args


def _report_chunk(result, out: str, as_json: bool) -> None:
    totals = result.manifest.totals
    if as_json:
        summary = {
            "root": out,
            "files": len(result.manifest.inputs),
            "totals": totals.to_dict(),
            "counters": result.counters,
        }
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 100)
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


@main.group()
def tokenizer() -> None:
    """Tokenizers for the chunk stage."""


@tokenizer.command("train")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", required=True, metavar="DIR", help="Directory to write tokenizer.json into.")
@click.option("--vocab-size", type=int, default=8192, show_default=True)
@click.option("--max-docs", type=int, default=None, help="Train on at most this many documents.")
@read_options
def tokenizer_train(inputs, out, vocab_size, max_docs, **kw) -> None:
    """Train a byte-level BPE tokenizer (no unknown tokens, exact offsets) on a corpus.

    Reads documents the way `tda chunk` does (unusable records are skipped and counted).
    """
    try:
        from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
        from tda.attribution.corpus.tokenizer import load_tokenizer, train_bpe_tokenizer

        read = _read_options(kw)
        files = resolve_inputs(inputs, read.format)
        stats = {"documents": 0, "skipped": 0}

        def texts():
            for f in files:
                for item in iter_documents(f, read):
                    if max_docs is not None and stats["documents"] >= max_docs:
                        return
                    if isinstance(item, Document):
                        stats["documents"] += 1
                        yield item.text
                    else:
                        stats["skipped"] += 1

        path = train_bpe_tokenizer(texts(), vocab_size, out)
        info = load_tokenizer(out).info
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {path}: vocab {info.vocab_size}, {stats['documents']:,} documents "
        f"({stats['skipped']:,} unusable records skipped), {info.fingerprint}"
    )


def embed_options(func):
    """The embed stage's options (shared by `tda embed` and `tda build`)."""
    options = [
        click.option(
            "--window",
            type=int,
            default=None,
            help="Tokens per forward pass [default: the chunk size, so each chunk is encoded "
            "alone; with only --context: the model's context limit, at most 1024].",
        ),
        click.option(
            "--context",
            type=int,
            default=None,
            help="Left-context tokens for chunks at a window start [default: 0 without "
            "--window, else a quarter window].",
        ),
        click.option(
            "--batch-tokens",
            type=int,
            default=16384,
            show_default=True,
            help="Token budget of one forward pass, padding included.",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
        ),
        click.option(
            "--pooling",
            default="mean:hidden",
            show_default=True,
            metavar="METHOD[:FEATURES]",
            help="Dense vector: mean|max|last over features concepts|known|hidden, or weights "
            "(the known-concept weight vector).",
        ),
        click.option(
            "--concept-pooling",
            type=click.Choice(["max", "mean"]),
            default="max",
            show_default=True,
            help="How a chunk's top concepts are weighted over its tokens.",
        ),
        click.option(
            "--top-k-concepts",
            type=int,
            default=32,
            show_default=True,
            help="Concepts kept per chunk.",
        ),
        click.option(
            "--trust-remote-code",
            is_flag=True,
            help="Accepted for Hugging Face compatibility; tda never runs code from a checkpoint.",
        ),
    ]
    return _stack(options, func)


def _embed_config(root: str, model: str, resume: bool, overwrite: bool, kw: dict):
    from tda.schemas import EmbedConfig, Pooling

    return EmbedConfig(
        root=root,
        model=model,
        window=kw.pop("window"),
        context=kw.pop("context"),
        batch_tokens=kw.pop("batch_tokens"),
        device=kw.pop("device"),
        pooling=Pooling.parse(
            kw.pop("pooling"),
            concept_reducer=kw.pop("concept_pooling"),
            top_k=kw.pop("top_k_concepts"),
        ),
        trust_remote_code=kw.pop("trust_remote_code"),
        resume=resume,
        overwrite=overwrite,
    )


_MODEL_HELP = "builtin:DIR (or a DIR made by `tda model train`), or steerling:ID_OR_PATH."


@main.command(cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@click.option("--model", required=True, metavar="SPEC", help=_MODEL_HELP)
@embed_options
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run; finished files are skipped."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier embed run in ROOT.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def embed(ctx: click.Context, root, model, resume, overwrite, as_json, **kw) -> None:
    """Embed every chunk of ROOT into the model's concept space.

    Reads ROOT/chunks/ (cut with the model's tokenizer), encodes each document in windows
    of up to --window tokens (default: each chunk alone) and writes ROOT/embeddings/
    part-NNNNNN.parquet: chunk id, unit-length float16 vector, top-k concepts with weights;
    ROOT/embeddings/manifest.json last.
    """
    try:
        config = _embed_config(root, model, resume, overwrite, kw)
        result = _run_stage(ctx, "embed", config)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _report_embed(result, root, as_json)


def _report_embed(result, root: str, as_json: bool) -> None:
    m = result.manifest
    totals = m.totals
    if as_json:
        summary = {
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
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 100)
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


@main.group()
def index() -> None:
    """The sharded FAISS index: build it, inspect it, verify it, merge it."""


def index_options(func):
    """The index stage's options (shared by `tda index build` and `tda build`)."""
    options = [
        click.option(
            "--factory", default=None, metavar="STR", help="FAISS factory string [default: chosen]."
        ),
        click.option("--shards", type=int, default=None, help="Number of shards."),
        click.option(
            "--shard-size", type=int, default=None, help="Vectors per shard (instead of --shards)."
        ),
        click.option(
            "--memory-budget", type=SIZE, default="4GB", show_default=True, help="Per worker."
        ),
        click.option(
            "--train-sample", type=int, default=None, help="Training vectors [default: chosen]."
        ),
        click.option(
            "--nprobe", type=int, default=None, help="Default nprobe recorded for searches."
        ),
        click.option("--metric", type=click.Choice(["ip", "l2"]), default="ip", show_default=True),
        click.option(
            "--whiten/--no-whiten",
            default=IndexConfig.whiten,
            show_default=True,
            help="Put a PCA whitening (FAISS PCAW{D},L2norm, trained with the index and "
            "applied to queries too) in front of the factory.",
        ),
        click.option(
            "--threads",
            type=int,
            default=None,
            help="Shards a worker fills at once [default: its cores, within the memory budget].",
        ),
    ]
    return _stack(options, func)


def _index_config(root: str, resume: bool, overwrite: bool, kw: dict):
    from tda.schemas import IndexConfig

    return IndexConfig(
        root=root,
        factory=kw.pop("factory"),
        shards=kw.pop("shards"),
        shard_size=kw.pop("shard_size"),
        memory_budget=int(kw.pop("memory_budget")),
        train_sample=kw.pop("train_sample"),
        nprobe=kw.pop("nprobe"),
        metric=kw.pop("metric"),
        whiten=kw.pop("whiten"),
        threads=kw.pop("threads"),
        resume=resume,
        overwrite=overwrite,
    )


@index.command("build", cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@index_options
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted build; finished shards are kept."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier index in ROOT.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.pass_context
def index_build(ctx, root, resume, overwrite, as_json, **kw) -> None:
    """Build ROOT/index from ROOT/embeddings: train once, fill shards, manifest last."""
    try:
        config = _index_config(root, resume, overwrite, kw)
        result = _run_stage(ctx, "index", config)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _print_index(result.manifest, root, as_json, result.counters)


@main.command(cls=BeamCommand)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", required=True, metavar="SPEC", help=_MODEL_HELP)
@click.option("--out", "out", required=True, metavar="ROOT", help="Build root to write into.")
@click.option(
    "--tokenizer",
    default=None,
    metavar="SPEC",
    help="Tokenizer to chunk with [default: the model's own].",
)
@chunk_options
@embed_options
@index_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted build: finished files and shards of every stage are kept.",
)
@click.option("--overwrite", is_flag=True, help="Replace earlier runs of all three stages.")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON.")
@click.pass_context
def build(ctx, inputs, model, out, tokenizer, resume, overwrite, as_json, **kw) -> None:
    """Chunk, embed and index a corpus into ROOT: `tda chunk`, `tda embed` and `tda index
    build` in one command, with the same files as a result.

    Each stage is one Beam pipeline on the chosen runner (--config / Beam options); the
    next stage is planned from the previous one's manifest. Progress (files and shards
    finished, read from the stages' completion markers) goes to stderr.
    """
    try:
        from tda.attribution.encoders import model_tokenizer_spec

        tokenizer = tokenizer or model_tokenizer_spec(model)
        chunk_config = _chunk_config(inputs, out, tokenizer, resume, overwrite, kw)
        embed_config = _embed_config(out, model, resume, overwrite, kw)
        index_config = _index_config(out, resume, overwrite, kw)
        with quiet_beam_import():
            from apache_beam.options.pipeline_options import PipelineOptions

            from tda.pipeline.build import run_build

        from .progress import BuildDisplay

        with BuildDisplay() as display:
            result = run_build(
                chunk_config,
                embed_config,
                index_config,
                PipelineOptions(_beam_args(ctx)),
                progress=display,
            )
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _report_build(result, out, as_json)


def _report_build(result, out: str, as_json: bool) -> None:
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
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 100)
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


def _print_index(m, root: str, as_json: bool, counters: dict | None = None) -> None:
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
        "encoder": m.encoder.spec,
        "fingerprint": m.encoder.fingerprint,
        "pooling": m.pooling.name,
    }
    if counters is not None:
        summary["counters"] = counters
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    for key, value in summary.items():
        click.echo(f"{key:>15}: {value}")


@index.command("info")
@click.argument("root", metavar="ROOT")
@click.option("--json", "as_json", is_flag=True)
def index_info(root, as_json) -> None:
    """Summarise ROOT/index/manifest.json."""
    try:
        from tda.attribution.index.reader import read_index_manifest

        manifest = read_index_manifest(root)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _print_index(manifest, root, as_json)


@index.command("verify")
@click.argument("root", metavar="ROOT")
def index_verify(root) -> None:
    """Check every index file's size and sha256 against the manifest (exit 1 on any
    mismatch)."""
    try:
        from tda.attribution.index.reader import verify_index

        problems = verify_index(root)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if problems:
        for p in problems:
            click.echo(f"FAIL {p}")
        raise click.ClickException(f"{len(problems)} index file(s) do not match the manifest")
    click.echo(f"ok: every file of {root}/index matches its manifest sha256")


@index.command("merge")
@click.argument("root", metavar="ROOT")
def index_merge(root) -> None:
    """Write ROOT/index/merged/: all shards in one on-disk index (faiss
    OnDiskInvertedLists) that returns the same results as the shards."""
    try:
        from tda.attribution.index.merge import merge_index

        record = merge_index(root)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    size = sum(f["size"] for f in record["files"])
    click.echo(
        f"merged {record['vectors']:,} vectors into {root}/index/merged ({size:,} bytes); "
        f"search it with `tda search {root} --merged`"
    )


@main.command()
@click.argument("root", metavar="ROOT")
@click.option(
    "--text", default=None, help="Search for this text (encoded with the index's encoder)."
)
@click.option("--chunk-id", type=int, default=None, help="Search with a stored chunk's vector.")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--nprobe", type=int, default=None, help="Override the index's default nprobe.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--merged", is_flag=True, help="Search the merged on-disk variant (tda index merge).")
@click.option("--json", "as_json", is_flag=True)
def search(root, text, chunk_id, k, nprobe, device, merged, as_json) -> None:
    """Nearest training chunks to a text or to a stored chunk."""
    if (text is None) == (chunk_id is None):
        raise click.UsageError("give exactly one of --text or --chunk-id")
    if k < 1:
        raise click.UsageError("-k must be positive")
    try:
        from tda.attribution.index.reader import IndexReader
        from tda.attribution.query import encode_query

        reader = IndexReader.open(root, merged=merged)
        query = reader.vector(chunk_id) if text is None else encode_query(reader, text, device)
        hits = reader.hits(query[None], k, nprobe)[0]
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        rows = [{"score": h.score, **h.chunk.__dict__} for h in hits]
        click.echo(json.dumps({"manifest_id": reader.manifest_id, "hits": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tda search {root}", header_style="bold", show_lines=True)
    for col in ("score", "chunk id", "source / document", "chars", "text"):
        table.add_column(col, overflow="fold")
    for h in hits:
        c = h.chunk
        table.add_row(
            f"{h.score:.4f}",
            str(c.chunk_id),
            f"{c.source}\n{c.doc_id}",
            f"{c.char_start}..{c.char_end}",
            (c.text or "")[:200],
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)


@main.command()
@click.argument("root", metavar="ROOT")
@click.option("--prompt", required=True, help="The prompt text (may be empty).")
@click.option("--output", default=None, help="The output text to attribute.")
@click.option(
    "--generate",
    type=int,
    default=None,
    metavar="N",
    help="Instead of --output: let the model write N tokens after the prompt.",
)
@click.option(
    "--temperature",
    type=float,
    default=0.0,
    show_default=True,
    help="For --generate: 0 is greedy, above 0 samples.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="For sampled --generate.")
@click.option(
    "--model", default=None, metavar="SPEC", help="Encoder [default: the one the index names]."
)
@click.option("--force", is_flag=True, help="Use --model even if it is not the index's encoder.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Training chunks per chunk.")
@click.option("--nprobe", type=int, default=None, help="Override the index's default nprobe.")
@click.option(
    "--chunk-size", type=int, default=None, help="Output chunk tokens [default: the index's]."
)
@click.option(
    "--input-attribution",
    type=click.Choice(["grad", "ig", "none"]),
    default="grad",
    show_default=True,
    help="Prompt-token scores: gradient x input, integrated gradients, or none.",
)
@click.option("--ig-steps", type=int, default=32, show_default=True)
@click.option(
    "--ig-baseline", type=click.Choice(["mask", "zero"]), default="mask", show_default=True
)
@click.option("--top-concepts", type=int, default=10, show_default=True)
@click.option(
    "--query-span",
    type=click.Choice(QUERY_SPANS),
    default=DEFAULT_QUERY_SPAN,
    show_default=True,
    help="What each output chunk's search vector pools: 'chunk' = the index's chunk size "
    "in tokens ending at the chunk's end (a short chunk borrows the prompt's last tokens), "
    "'output' = the chunk's own tokens.",
)
@click.option(
    "--rerank",
    type=click.Choice(RERANKS),
    default=DEFAULT_RERANK,
    show_default=True,
    help="Order the --candidates nearest chunks by shared concepts ('concepts') or by the "
    "longest word run shared with the query text ('span', a lexical hybrid) before "
    "keeping -k.",
)
@click.option(
    "--candidates",
    type=int,
    default=DEFAULT_CANDIDATES,
    show_default=True,
    help="Nearest chunks a --rerank orders.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def attribute(root, prompt, output, generate, temperature, seed, model, force, k, nprobe,
              chunk_size, input_attribution, ig_steps, ig_baseline, top_concepts, query_span,
              rerank, candidates, device, as_json) -> None:  # fmt: skip
    """Attribute a model output to training chunks, concepts, prompt tokens and sources.

    One forward pass over prompt + output with the index's encoder; each output chunk
    searches with the index's pooling over at most the index's window of tokens ending at
    its end. Per output chunk: the top-k training chunks (provenance, text, shared concepts), the
    concepts behind its token logits (exact split + residual), prompt-token scores and
    the spread of its hits over sources.
    """
    if (output is None) == (generate is None):
        raise click.UsageError("give exactly one of --output or --generate N")
    try:
        from tda.attribution.attributor import Attributor

        attributor = Attributor.from_root(root, model=model, device=device, force=force)
        report = attributor.attribute(
            prompt,
            output,
            generate=generate,
            temperature=temperature,
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
        )
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(report.to_json())
        return
    from rich.console import Console

    from .render import render_report

    render_report(report, Console(width=None if sys.stdout.isatty() else 140))


def _pipeline_options(ctx: click.Context):
    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions
    return PipelineOptions(_beam_args(ctx))


@main.command(cls=BeamCommand)
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
    "--min-weight", type=float, default=0.5, show_default=True,
    help="--concept: a chunk's pooled concept weight must reach this.",
)  # fmt: skip
@click.option(
    "--top", type=int, default=1000, show_default=True,
    help="--like: nearest chunks searched per exemplar.",
)  # fmt: skip
@click.option(
    "--min-score", type=float, default=None, help="--like: keep hits at least this similar."
)
@click.option("--out", required=True, metavar="DIR", help="Scan directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier scan in DIR.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print the scan summary as JSON.")
@click.pass_context
def scan(ctx, root, concepts, like, min_weight, top, min_score, out, overwrite, device,
         as_json) -> None:  # fmt: skip
    """Find where a harmful concept fires (--concept, a Beam job over ROOT/embeddings) or
    what resembles known-bad texts (--like, searched in the index); aggregate per source
    and document into DIR (hits / by_document / by_source Parquet, scan.json, a chart)."""
    try:
        from tda.pipeline.scan import run_scan

        result = run_scan(
            root, out, concepts, like, min_weight, top, min_score, overwrite, device,
            options=_pipeline_options(ctx),
        )  # fmt: skip
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    summary = result.summary
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    what = ", ".join(concepts) if concepts else f"exemplars in {like}"
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
    Console(width=None if sys.stdout.isatty() else 120).print(table)


@main.group()
def prune() -> None:
    """Prune lists from scans; pruned corpus, chunks, embeddings and index, audited."""


@prune.command("list")
@click.argument("scan_dir", metavar="SCAN_DIR")
@click.option(
    "--level", type=click.Choice(["chunk", "document", "source"]), default="document",
    show_default=True,
)  # fmt: skip
@click.option("--min-share", type=float, default=0.0, show_default=True,
              help="document / source: share of its chunks hit.")  # fmt: skip
@click.option("--min-score", type=float, default=None, help="Score a hit (or max) must reach.")
@click.option("--out", required=True, metavar="FILE", help="prune.parquet to write.")
@click.option("--csv", "as_csv", is_flag=True, help="Also write FILE as CSV (editable).")
def prune_list(scan_dir, level, min_share, min_score, out, as_csv) -> None:
    """Turn a scan into a prune list: ids plus the reason for each."""
    try:
        from tda.attribution.curation.prune import make_prune_list

        table = make_prune_list(scan_dir, out, level, min_share, min_score, as_csv)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    per_source: dict[str, int] = {}
    for src in table["source"].to_pylist():
        per_source[src] = per_source.get(src, 0) + 1
    click.echo(
        f"{table.num_rows:,} {level} entries written to {out}"
        + (" (+ CSV)" if as_csv else "")
        + "".join(f"\n  {src}: {n:,}" for src, n in sorted(per_source.items()))
    )


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
    try:
        from tda.pipeline.prune import run_prune

        result = run_prune(
            root, list_path, corpus, corpus_out, out, reason, overwrite,
            options=_pipeline_options(ctx),
        )  # fmt: skip
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    audit = result.audit
    if as_json:
        click.echo(json.dumps(audit, indent=2, sort_keys=True))
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


@main.command()
@click.argument("root", metavar="ROOT")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option(
    "--model", default=None, metavar="SPEC", help="Encoder [default: the one the index names]."
)
@click.option("--force", is_flag=True, help="Use --model even if it is not the index's encoder.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
def serve(root, host, port, model, force, device) -> None:
    """Serve the attribution API and the web viewer for ROOT's index (localhost only by
    default): open http://HOST:PORT/ and click an output chunk."""
    try:
        import uvicorn

        from .serve import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"tda serve needs the serve extra ({exc}): pip install 'tda[serve]'"
        ) from None
    try:
        app = create_app(root, model=model, device=device, force=force)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"tda serve: http://{host}:{port}/ (index {root}); Ctrl-C to stop")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command("eval", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def eval_quality(args) -> None:
    """Attribution quality on planted facts: tda representations and hybrids against
    BM25, exact-span, gradient (Grad-Cos, TRAK) and random baselines, plus counterfactual
    retraining. Options: tda eval --help-harness."""
    from .quality import main as run_quality

    argv = ["--help" if a == "--help-harness" else a for a in args]
    try:
        run_quality(argv)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def model() -> None:
    """The builtin concept-bottleneck model: train it, inspect a model SPEC."""


@model.command("train")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", required=True, metavar="DIR", help="Model directory to write.")
@click.option(
    "--concepts",
    default="default",
    show_default=True,
    metavar="YAML",
    help="Concept set: name -> terms / regexes (default: the packaged set).",
)
@click.option("--steps", type=int, default=500, show_default=True)
@click.option("--d-model", type=int, default=128, show_default=True)
@click.option("--layers", type=int, default=4, show_default=True)
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--vocab-size", type=int, default=4096, show_default=True)
@click.option("--max-seq", type=int, default=256, show_default=True, help="Context limit.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option(
    "--holdout",
    type=float,
    default=0.05,
    show_default=True,
    help="Share of every document's tokens held out for evaluation.",
)
@click.option("--max-train-tokens", type=int, default=8_000_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
@read_options
def model_train(
    inputs, out, concepts, steps, d_model, layers, heads, vocab_size, max_seq, batch_size, lr,
    holdout, max_train_tokens, seed, as_json, **kw,
) -> None:  # fmt: skip
    """Train a BPE tokenizer and a builtin concept-bottleneck LM on a corpus (CPU).

    Known concepts are supervised by the concept set's taggers; the model directory
    (safetensors weights, config.json, tokenizer.json, concepts.yaml, training.json) is a
    model SPEC for `tda embed --model` and a tokenizer SPEC for `tda chunk --tokenizer`.
    """
    try:
        from tda.attribution.encoders.builtin.train import TrainConfig

        config = TrainConfig(
            inputs=tuple(inputs),
            out=out,
            concepts=concepts,
            read=_read_options(kw),
            vocab_size=vocab_size,
            d_model=d_model,
            n_layers=layers,
            n_heads=heads,
            max_seq=max_seq,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            holdout=holdout,
            max_train_tokens=max_train_tokens,
            seed=seed,
        )
        result = _train_with_progress(config, quiet=as_json)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
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


def _train_with_progress(config, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tda.attribution.encoders.builtin.train import train_builtin

    console = Console(stderr=True, quiet=quiet)
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} (LM {task.fields[lm]:.3f})"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=config.steps, loss=float("nan"), lm=float("nan"))

        def progress(p) -> None:
            bar.update(task, completed=p.step, loss=p.loss, lm=p.lm_loss)

        return train_builtin(config, progress, log=console.print)


@model.command("info")
@click.argument("spec", metavar="SPEC")
@click.option("--json", "as_json", is_flag=True)
def model_info(spec, as_json) -> None:
    """Show a model SPEC's identity: encoder, fingerprint, sizes, known concepts."""
    from dataclasses import asdict

    try:
        from tda.attribution.encoders import load_encoder

        encoder = load_encoder(spec, device="cpu")
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    info = {
        **asdict(encoder.info),
        "concepts": list(encoder.concept_names),
        "harmful": sorted(encoder.harmful_concepts),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for key, value in asdict(encoder.info).items():
        click.echo(f"{key:>22}: {value}")
    shown = ", ".join(
        n + (" (harmful)" if n in encoder.harmful_concepts else "")
        for n in encoder.concept_names[:60]
    )
    more = len(encoder.concept_names) - 60
    click.echo(f"{'known concepts':>22}: {shown}" + (f", ... {more:,} more" if more > 0 else ""))


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests: run the CLI with argv, return the exit status."""
    try:
        main.main(args=argv, prog_name="tda", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
