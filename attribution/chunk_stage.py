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

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tda import __version__
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

from .chunking import chunk_documents
from .corpus import Document, iter_documents, resolve_inputs
from .fsutil import AtomicFile, atomic_write_text, filesystem, read_json
from .tokenizer import TextTokenizer, load_tokenizer

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
# Rows per Parquet row group; later stages read single rows by (file, ordinal).
ROW_GROUP_ROWS = 8192

Counter = Callable[[str, int], None]


class ChunkRunError(ValueError):
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


def build_root(url: str) -> tuple[object, BuildRoot]:
    """ROOT URL -> (fsspec filesystem, BuildRoot of paths inside that filesystem)."""
    fs, path = filesystem(url)
    return fs, BuildRoot(path)


def _nonempty(fs, path: str) -> bool:
    return fs.exists(path) and bool(fs.ls(path))


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
    if _nonempty(fs, chunks_dir) or _nonempty(fs, dead_dir):
        if config.overwrite:
            for path in (chunks_dir, dead_dir):
                if fs.exists(path):
                    fs.rm(path, recursive=True)
        elif config.resume:
            if not fs.exists(run_record):
                raise ChunkRunError(
                    f"{root.chunks_dir} holds output without a run record; rerun with --overwrite"
                )
            _check_resumable(json.loads(plan.run_record()), read_json(fs, run_record), root)
            _remove_temp_files(fs, (chunks_dir, dead_dir, root.completions_dir))
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


def _check_resumable(new: dict, old: dict, root: BuildRoot) -> None:
    differing = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
    if differing:
        raise ChunkRunError(
            f"--resume needs the same inputs and settings as the run in {root.chunks_dir}; "
            f"these differ: {', '.join(differing)} (use --overwrite to start over)"
        )


def _remove_temp_files(fs, folders) -> None:
    """Delete what a killed run left half-written (its ``_tmp-`` files)."""
    for folder in folders:
        if fs.exists(folder):
            for path in fs.glob(f"{folder}/_tmp-*"):
                fs.rm(path)


def read_completion(config: ChunkConfig, file_index: int) -> FileCounts | None:
    """The completion marker of a finished input file, or None."""
    fs, root = build_root(config.out)
    path = root.completion(file_index)
    if not fs.exists(path):
        return None
    return FileCounts.from_dict(read_json(fs, path))


class _PartWriter:
    """One Parquet part written through an :class:`AtomicFile`, in row groups of
    ROW_GROUP_ROWS rows. With ``keep_empty=False`` a part without rows is not created
    (dead letters); chunk parts always exist, one per input file."""

    def __init__(self, fs, path: str, schema: pa.Schema, keep_empty: bool) -> None:
        self.fs, self.path, self.schema, self.keep_empty = fs, path, schema, keep_empty
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._file: AtomicFile | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        cut = table.num_rows if final else (table.num_rows // ROW_GROUP_ROWS) * ROW_GROUP_ROWS
        self._open()
        self._writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(cut)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _open(self) -> None:
        if self._writer is None:
            self._file = AtomicFile(self.fs, self.path)
            self._writer = pq.ParquetWriter(self._file.file, self.schema, compression="zstd")

    def commit(self) -> None:
        """Write what is buffered and move the part into place (no file if no rows)."""
        if self.keep_empty:
            self._open()  # a part with no row groups still carries the schema
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._file.commit()
        elif self.fs.exists(self.path):  # left by an earlier run that was overwritten
            self.fs.rm(self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._file.abort()


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
    chunks = _PartWriter(
        fs,
        root.chunk_part(input_file.index),
        CHUNK_SCHEMA.with_metadata({**CHUNK_SCHEMA.metadata, **meta}),
        keep_empty=True,
    )
    dead = _PartWriter(
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
