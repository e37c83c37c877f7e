"""The ``tda`` command line. Parsing only: options become frozen config dataclasses
(:mod:`tda.schemas.config`), which validate themselves; the work is in ``pipeline/``."""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from tda import __version__
from tda.attribution.sizes import parse_size
from tda.schemas import ChunkConfig, ChunkingPolicy, ReadOptions

from .beam_args import BeamCommand, quiet_beam_import


@functools.cache
def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: shown as one line, exit status 1 (imported late
    so ``tda --help`` stays fast)."""
    from tda.attribution.chunk_stage import ChunkRunError
    from tda.attribution.corpus import InputError
    from tda.attribution.tokenizer import TokenizerError
    from tda.schemas import ChunkIdOverflowError, ConfigError, ManifestError

    return (
        ChunkRunError,
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

    Stages write into one build root: chunk (ROOT/chunks, ROOT/deadletter), then, in later
    releases, embed and index.
    """
    _setup_logging(verbose)


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
    for option in reversed(options):
        func = option(func)
    return func


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


@main.command(cls=BeamCommand)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", "out", required=True, metavar="ROOT", help="Build root to write into.")
@click.option(
    "--tokenizer",
    required=True,
    metavar="SPEC",
    help="tokenizer.json, a directory holding one, or tiktoken:NAME.",
)
@read_options
@click.option("--chunk-size", type=int, default=64, show_default=True, help="Tokens per chunk.")
@click.option(
    "--stride",
    type=int,
    default=None,
    help="Tokens between chunk starts [default: the chunk size; smaller overlaps].",
)
@click.option(
    "--text/--no-text",
    "store_text",
    default=True,
    show_default=True,
    help="Store each chunk's text in the chunks table.",
)
@click.option(
    "--dataset-id",
    type=int,
    default=0,
    show_default=True,
    help="Dataset number encoded in every chunk id.",
)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run; finished files are skipped."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier chunk run in ROOT.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.pass_context
def chunk(
    ctx: click.Context,
    inputs,
    out,
    tokenizer,
    chunk_size,
    stride,
    store_text,
    dataset_id,
    resume,
    overwrite,
    as_json,
    **kw,
) -> None:
    """Cut corpus files into token chunks with exact provenance.

    INPUT: files, folders (searched recursively), globs or URLs (file://, gs://, s3://,
    memory://). Writes ROOT/chunks/part-NNNNNN.parquet per input file,
    ROOT/deadletter/ for unusable records, and ROOT/chunks/manifest.json last.
    """
    try:
        config = ChunkConfig(
            inputs=tuple(inputs),
            out=out,
            tokenizer=tokenizer,
            read=_read_options(kw),
            chunking=ChunkingPolicy(chunk_size=chunk_size, stride=stride, store_text=store_text),
            dataset_id=dataset_id,
            resume=resume,
            overwrite=overwrite,
        )
        with quiet_beam_import():
            from apache_beam.options.pipeline_options import PipelineOptions

            from tda.pipeline.chunk import run_chunk

        result = run_chunk(config, PipelineOptions(_beam_args(ctx)))
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    _report_chunk(result, out, as_json)


def _beam_args(ctx: click.Context) -> list[str]:
    """The Beam options given, plus quiet SDK-harness logs unless -vv or set explicitly."""
    args = list(ctx.meta["beam_args"])
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
        from tda.attribution.corpus import Document, iter_documents, resolve_inputs
        from tda.attribution.tokenizer import load_tokenizer, train_bpe_tokenizer

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
