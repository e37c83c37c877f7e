"""The chunk stage without Beam: plan a run, chunk one input file, finish the run.

``pipeline/chunk.py`` distributes :func:`process_file` over workers; everything here is a
plain function, so it is tested without a runner.

1. :func:`plan_chunk_run` (driver): resolve inputs, load the tokenizer, check the build
   root (refuse to mix runs; ``--resume`` must match the recorded settings), write
   ``chunks/_run.json``.
2. :func:`process_file` (worker, once per input file): stream documents, tokenize them in
   batches, cut chunks, write ``chunks/part-N.parquet`` and ``deadletter/part-N.parquet``
   atomically, then the completion marker ``chunks/_completions/N.json``.
3. :func:`finish_chunk_run` (driver): gather the markers into ``chunks/manifest.json``,
   written last.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa

from tda import __version__
from tda.attribution.corpus.chunking import chunk_documents
from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
from tda.attribution.corpus.tokenizer import TextTokenizer, load_tokenizer
from tda.attribution.io.fs import atomic_write_text, build_root, filesystem, read_json
from tda.attribution.io.parts import (
    PartWriter,
    StageError,
    check_resumable,
    nonempty,
    remove_temp_files,
)
from tda.schemas import (
    CHUNK_SCHEMA,
    DEADLETTER_SCHEMA,
    ChunkConfig,
    DeadLetter,
    DeadLetterReason,
    FileCounts,
    InputFile,
    Manifest,
    TokenizerInfo,
)
from tda.schemas.layout import BuildRoot

__all__ = [
    "ChunkPlan",
    "ChunkRunError",
    "finish_chunk_run",
    "plan_chunk_run",
    "process_file",
    "read_completion",
]

log = logging.getLogger("tda")

# Tokenize this many characters at once: big enough for the tokenizer's thread pool to
# spread over cores, small enough that a batch's encodings stay a few tens of MB.
BATCH_CHARS = 2_000_000
BATCH_DOCS = 2048

Counter = Callable[[str, int], None]


class ChunkRunError(StageError):
    """The build root cannot take this run (one line naming the fix)."""


@dataclass(frozen=True)
class ChunkPlan:
    """What a chunk run will do, decided on the driver before any work starts."""

    config: ChunkConfig
    inputs: tuple[InputFile, ...]
    tokenizer: TokenizerInfo

    def run_record(self) -> str:
        """The JSON written to chunks/_run.json (deterministic; compared on --resume)."""
        record = {
            "tda_version": __version__,
            "settings": self.config.settings(),
            "tokenizer": asdict(self.tokenizer),
            "inputs": [asdict(i) for i in self.inputs],
        }
        return json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def plan_chunk_run(config: ChunkConfig, tokenizer: TextTokenizer | None = None) -> ChunkPlan:
    """Check inputs, tokenizer and build root; prepare ROOT for the run. Raises one-line
    errors (InputError, TokenizerError, ChunkRunError) before any work starts."""
    inputs = tuple(resolve_inputs(config.inputs, config.read.format))
    if inputs[-1].index > config.codec.max_file_index:
        raise ChunkRunError(
            f"{len(inputs)} input files exceed the chunk-id codec's {config.codec.file_bits} "
            f"file bits (max {config.codec.max_file_index + 1} files)"
        )
    fs, root = build_root(config.out)
    _check_root_outside_inputs(config, inputs, fs, root)
    tokenizer = tokenizer or load_tokenizer(config.tokenizer)
    plan = ChunkPlan(config=config, inputs=inputs, tokenizer=tokenizer.info)
    chunks_dir, dead_dir, run_record = root.chunks_dir, root.deadletter_dir, root.chunk_run_record
    if nonempty(fs, chunks_dir) or nonempty(fs, dead_dir):
        if config.overwrite:
            for path in (chunks_dir, dead_dir):
                if fs.exists(path):
                    fs.rm(path, recursive=True)
        elif config.resume:
            if not fs.exists(run_record):
                raise ChunkRunError(
                    f"{root.chunks_dir} holds output without a run record; rerun with --overwrite"
                )
            check_resumable(
                json.loads(plan.run_record()),
                read_json(fs, run_record),
                root.chunks_dir,
                ChunkRunError,
            )
            remove_temp_files(fs, (chunks_dir, dead_dir, root.completions_dir))
        else:
            raise ChunkRunError(
                f"{root.chunks_dir} already holds a chunk run; pass --resume to continue it "
                f"or --overwrite to replace it"
            )
    fs.makedirs(chunks_dir, exist_ok=True)
    atomic_write_text(fs, run_record, plan.run_record())
    return plan


def _check_root_outside_inputs(config, inputs, fs, root: BuildRoot) -> None:
    """A build root inside an input folder would feed the run its own output."""
    inside = root.root.rstrip("/") + "/"
    for pattern in config.inputs:
        pfs, path = filesystem(pattern)
        folder = path.rstrip("/") + "/"
        if type(pfs) is type(fs) and inside.startswith(folder):
            raise ChunkRunError(
                f"the build root {config.out} is inside the input folder {pattern}; "
                f"choose a root outside the corpus"
            )
    for f in inputs:
        if filesystem(f.url)[1].startswith(inside):
            raise ChunkRunError(f"input {f.url} is inside the build root {config.out}")


def read_completion(config: ChunkConfig, file_index: int) -> FileCounts | None:
    """The completion marker of a finished input file, or None."""
    fs, root = build_root(config.out)
    path = root.completion(file_index)
    if not fs.exists(path):
        return None
    return FileCounts.from_dict(read_json(fs, path))


def _table_metadata(config: ChunkConfig, plan_tokenizer: TokenizerInfo, f: InputFile) -> dict:
    return {
        b"tda.version": __version__.encode(),
        b"tda.tokenizer": json.dumps(asdict(plan_tokenizer), sort_keys=True).encode(),
        b"tda.id_codec": json.dumps(config.codec.to_dict(), sort_keys=True).encode(),
        b"tda.dataset_id": str(config.dataset_id).encode(),
        b"tda.chunking": json.dumps(asdict(config.chunking), sort_keys=True).encode(),
        b"tda.input": json.dumps(asdict(f), sort_keys=True).encode(),
    }


def process_file(
    input_file: InputFile,
    config: ChunkConfig,
    tokenizer: TextTokenizer,
    count: Counter = lambda name, n: None,
) -> FileCounts:
    """Chunk one input file end to end and commit its outputs.

    Writes ``chunks/part-N.parquet`` (rows in ordinal order), ``deadletter/part-N.parquet``
    (only if some record was unusable) and, last, ``chunks/_completions/N.json``.
    ``count(name, n)`` receives progress counters (records_read, documents_chunked,
    chunks_written, tokens, batches, deadletter.<reason>).
    """
    fs, root = build_root(config.out)
    meta = _table_metadata(config, tokenizer.info, input_file)
    chunks = PartWriter(
        fs,
        root.chunk_part(input_file.index),
        CHUNK_SCHEMA.with_metadata({**CHUNK_SCHEMA.metadata, **meta}),
        keep_empty=True,
    )
    dead = PartWriter(
        fs,
        root.deadletter_part(input_file.index),
        DEADLETTER_SCHEMA.with_metadata({**DEADLETTER_SCHEMA.metadata, **meta}),
        keep_empty=False,
    )
    records = documents = n_chunks = n_tokens = 0
    reasons: dict[str, int] = {}
    batch: list[Document] = []
    batch_chars = 0

    def dead_letter(letters: list[DeadLetter]) -> None:
        if not letters:
            return
        for letter in letters:
            reasons[letter.reason.value] = reasons.get(letter.reason.value, 0) + 1
            count(f"deadletter.{letter.reason.value}", 1)
        rows = [letter.to_row() for letter in letters]
        dead.write(pa.RecordBatch.from_pylist(rows, schema=DEADLETTER_SCHEMA))

    def flush() -> None:
        nonlocal documents, n_chunks, n_tokens, batch, batch_chars
        if not batch:
            return
        encodings = tokenizer.encode_batch([d.text for d in batch])
        out = chunk_documents(
            batch,
            encodings,
            config.chunking,
            config.codec,
            config.dataset_id,
            input_file.index,
            n_chunks,
        )
        if out.batch is not None:
            chunks.write(out.batch)
        dead_letter([_no_tokens_letter(input_file, d) for d in out.no_tokens])
        done = len(batch) - len(out.no_tokens)
        documents += done
        n_chunks += out.n_chunks
        n_tokens += out.n_tokens
        count("documents_chunked", done)
        count("chunks_written", out.n_chunks)
        count("tokens", out.n_tokens)
        count("batches", 1)
        batch, batch_chars = [], 0

    pending_dead: list[DeadLetter] = []
    try:
        for item in iter_documents(input_file, config.read):
            records += 1
            if isinstance(item, DeadLetter):
                pending_dead.append(item)
                if len(pending_dead) >= 1024:
                    dead_letter(pending_dead)
                    pending_dead = []
                continue
            batch.append(item)
            batch_chars += len(item.text)
            if batch_chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
                flush()
        flush()
        dead_letter(pending_dead)
        count("records_read", records)
        chunks.commit()
        dead.commit()
    except BaseException:
        chunks.abort()
        dead.abort()
        raise
    counts = FileCounts(
        file_index=input_file.index,
        records=records,
        documents=documents,
        chunks=n_chunks,
        tokens=n_tokens,
        deadletters={r.value: reasons[r.value] for r in DeadLetterReason if r.value in reasons},
    )
    if not counts.reconciles():  # a bug, never bad input: fail loudly
        raise AssertionError(f"file {input_file.index}: counts do not reconcile: {counts}")
    atomic_write_text(
        fs, root.completion(input_file.index), json.dumps(counts.to_dict(), sort_keys=True) + "\n"
    )
    count("files", 1)
    log.info(
        "chunked %s: %d chunks, %d dead letters", input_file.url, n_chunks, sum(reasons.values())
    )
    return counts


def _no_tokens_letter(f: InputFile, doc: Document) -> DeadLetter:
    return DeadLetter(
        file_index=f.index,
        url=f.url,
        record_index=doc.record_index,
        reason=DeadLetterReason.NO_TOKENS,
        detail="the tokenizer produced no tokens for this text",
        raw=doc.text[:1000],
        raw_bytes=len(doc.text.encode("utf-8")),
    )


def finish_chunk_run(plan: ChunkPlan) -> Manifest:
    """Gather every file's completion marker into ``chunks/manifest.json`` (written last)."""
    files = []
    for f in plan.inputs:
        counts = read_completion(plan.config, f.index)
        if counts is None:
            raise ChunkRunError(
                f"input file {f.index} ({f.url}) did not finish; rerun with --resume"
            )
        files.append(counts)
    manifest = Manifest(
        tda_version=__version__,
        id_codec=plan.config.codec,
        dataset_id=plan.config.dataset_id,
        tokenizer=plan.tokenizer,
        read=plan.config.read,
        chunking=plan.config.chunking,
        inputs=plan.inputs,
        files=tuple(files),
    )
    fs, root = build_root(plan.config.out)
    atomic_write_text(fs, root.chunk_manifest, manifest.to_json())
    return manifest
