"""The data engineer's commands: ``chunk``, ``embed``, ``index build|info|verify|merge``,
``build`` (the three stages in one command) and ``verify`` (a whole root).

The stage options map onto the frozen, self-validating :class:`~tda.schemas.ChunkConfig`,
:class:`~tda.schemas.EmbedConfig` and :class:`~tda.schemas.IndexConfig`; the stages run
in ``pipeline/``; what a command prints is in :mod:`tda.jobs.render`.
"""

from __future__ import annotations

import click

from tda.schemas import INDEX_CHANNELS, ChunkConfig, ChunkingPolicy, IndexConfig
from tda.schemas.config import REFINES

from .. import render
from ..beam_args import BeamCommand, quiet_beam_import
from .options import (
    beam_args,
    device_option,
    read_config,
    read_options,
    run_stage,
    size_type,
    stack,
    stage_type,
)

__all__ = ["COMMANDS", "build", "chunk", "embed", "index", "verify"]

MODEL_HELP = "builtin:DIR (or a DIR made by `tda model train`), or steerling:ID_OR_PATH."


def chunk_options(func):
    """The chunk stage's policy options (shared by `tda chunk` and `tda build`)."""
    options = [
        click.option(
            "--chunk-size",
            type=stage_type("--chunk-size"),
            default=64,
            show_default=True,
            help="Tokens per chunk.",
        ),
        click.option(
            "--stride",
            type=stage_type("--stride"),
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
            type=stage_type("--dataset-id"),
            default=0,
            show_default=True,
            help="Dataset number encoded in every chunk id.",
        ),
    ]
    return read_options(stack(options, func))


def chunk_config(inputs, out: str, tokenizer: str, resume: bool, overwrite: bool, kw: dict):
    """Pop the :func:`chunk_options` values out of ``kw`` -> a validated ChunkConfig."""
    return ChunkConfig(
        inputs=tuple(inputs),
        out=out,
        tokenizer=tokenizer,
        read=read_config(kw),
        chunking=ChunkingPolicy(
            chunk_size=kw.pop("chunk_size"),
            stride=kw.pop("stride"),
            store_text=kw.pop("store_text"),
        ),
        dataset_id=kw.pop("dataset_id"),
        resume=resume,
        overwrite=overwrite,
    )


def embed_options(func):
    """The embed stage's options (shared by `tda embed` and `tda build`)."""
    options = [
        click.option(
            "--window",
            type=stage_type("--window"),
            default=None,
            help="Tokens per forward pass [default: the chunk size, so each chunk is encoded "
            "alone; with only --context: the model's context limit, at most 1024].",
        ),
        click.option(
            "--context",
            type=stage_type("--context"),
            default=None,
            help="Left-context tokens for chunks at a window start [default: 0 without "
            "--window, else a quarter window].",
        ),
        click.option(
            "--batch-tokens",
            type=stage_type("--batch-tokens"),
            default=16384,
            show_default=True,
            help="Token budget of one forward pass, padding included.",
        ),
        device_option(),
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
            type=stage_type("--top-k-concepts"),
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
    return stack(options, func)


def embed_config(root: str, model: str, resume: bool, overwrite: bool, kw: dict):
    """Pop the :func:`embed_options` values out of ``kw`` -> a validated EmbedConfig."""
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


def index_options(func):
    """The index stage's options (shared by `tda index build` and `tda build`)."""
    options = [
        click.option(
            "--factory", default=None, metavar="STR", help="FAISS factory string [default: chosen]."
        ),
        click.option(
            "--shards", type=stage_type("--shards"), default=None, help="Number of shards."
        ),
        click.option(
            "--shard-size",
            type=stage_type("--shard-size"),
            default=None,
            help="Vectors per shard (instead of --shards).",
        ),
        click.option(
            "--memory-budget",
            type=size_type("--memory-budget"),
            default="4GB",
            show_default=True,
            help="Per worker.",
        ),
        click.option(
            "--train-sample",
            type=stage_type("--train-sample"),
            default=None,
            help="Training vectors [default: chosen].",
        ),
        click.option(
            "--nprobe",
            type=stage_type("--nprobe"),
            default=None,
            help="Default nprobe recorded for searches.",
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
            type=stage_type("--threads"),
            default=None,
            help="Shards a worker fills at once [default: its cores, within the memory budget].",
        ),
        click.option(
            "--refine",
            type=click.Choice(list(REFINES)),
            default=None,
            help="Exact re-rank of the IVF candidates: fp16 / sq8 codes stored beside each "
            "shard (memory-mapped), or the embeddings table's vectors [default: fp16 for PQ "
            "factories, none otherwise].",
        ),
        click.option(
            "--reduce",
            type=stage_type("--reduce"),
            default=None,
            metavar="DIM",
            help="Store and search DIM-dimensional vectors: an uncentred PCA fitted on the "
            "training sample, applied to queries too [default: the embeddings' dimension].",
        ),
        click.option(
            "--channels",
            default=",".join(("dense", *INDEX_CHANNELS)),
            show_default=True,
            metavar="LIST",
            help="Retrieval channels to build: dense (the concept-space vectors, always), "
            "span (exact token spans: a suffix table per shard), lexical (BM25 over words).",
        ),
    ]
    return stack(options, func)


def index_config(root: str, resume: bool, overwrite: bool, kw: dict):
    """Pop the :func:`index_options` values out of ``kw`` -> a validated IndexConfig."""
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
        refine=kw.pop("refine"),
        reduce=kw.pop("reduce"),
        channels=tuple(c.strip() for c in kw.pop("channels").split(",") if c.strip()),
        resume=resume,
        overwrite=overwrite,
    )


@click.command(cls=BeamCommand)
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
    config = chunk_config(inputs, out, tokenizer, resume, overwrite, kw)
    render.report_chunk(run_stage(ctx, "chunk", config), out, as_json)


@click.command(cls=BeamCommand)
@click.argument("root", metavar="ROOT")
@click.option("--model", required=True, metavar="SPEC", help=MODEL_HELP)
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
    config = embed_config(root, model, resume, overwrite, kw)
    render.report_embed(run_stage(ctx, "embed", config), root, as_json)


@click.group()
def index() -> None:
    """The sharded FAISS index: build it, inspect it, verify it, merge it."""


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
    config = index_config(root, resume, overwrite, kw)
    result = run_stage(ctx, "index", config)
    render.report_index(result.manifest, root, as_json, result.counters)


@index.command("info")
@click.argument("root", metavar="ROOT")
@click.option("--json", "as_json", is_flag=True)
def index_info(root, as_json) -> None:
    """Summarise ROOT/index/manifest.json."""
    from tda.attribution.index.reader import read_index_manifest

    render.report_index(read_index_manifest(root), root, as_json)


@index.command("verify")
@click.argument("root", metavar="ROOT")
def index_verify(root) -> None:
    """Check every index file's size and sha256 against the manifest (exit 1 on any
    mismatch)."""
    from tda.attribution.index.reader import verify_index

    problems = verify_index(root)
    render.report_index_verify(problems, root)
    if problems:
        raise click.ClickException(f"{len(problems)} index file(s) do not match the manifest")


@index.command("merge")
@click.argument("root", metavar="ROOT")
def index_merge(root) -> None:
    """Write ROOT/index/merged/: all shards in one on-disk index (faiss
    OnDiskInvertedLists) that returns the same results as the shards."""
    from tda.attribution.index.merge import merge_index

    render.report_index_merge(merge_index(root), root)


@click.command(cls=BeamCommand)
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--model", required=True, metavar="SPEC", help=MODEL_HELP)
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
    from tda.attribution.encoders import model_tokenizer_spec

    tokenizer = tokenizer or model_tokenizer_spec(model)
    configs = (
        chunk_config(inputs, out, tokenizer, resume, overwrite, kw),
        embed_config(out, model, resume, overwrite, kw),
        index_config(out, resume, overwrite, kw),
    )
    with quiet_beam_import():
        from apache_beam.options.pipeline_options import PipelineOptions

        from tda.pipeline.build import run_build

    from ..progress import BuildDisplay

    with BuildDisplay() as display:
        result = run_build(*configs, PipelineOptions(beam_args(ctx)), progress=display)
    render.report_build(result, out, as_json)


@click.command()
@click.argument("root", metavar="ROOT")
@click.option(
    "--hashes/--sizes-only",
    default=True,
    show_default=True,
    help="Compare every file's sha256 (reads the whole root), or only sizes and manifests.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the problems and counts as JSON.")
@click.pass_context
def verify(ctx: click.Context, root, hashes, as_json) -> None:
    """Check a whole build root against its manifests: every manifest present and
    readable, each the one the later stages recorded, every file's size and sha256
    (chunks, dead letters, embeddings, index shards, every channel file), and files no
    manifest lists (warnings). One line per problem, naming the file and the fix; exit
    status 1 on any error."""
    from tda.attribution.io.verify import check_root

    result = check_root(root, hashes)
    render.report_verify(result, root, as_json)
    if not result.ok:
        ctx.exit(1)


COMMANDS = (chunk, embed, index, build, verify)
