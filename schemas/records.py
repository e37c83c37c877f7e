"""Row contracts between stages: chunks and dead letters, as dataclasses beside their
pyarrow schemas. Parquet is always written with these explicit schemas.

Files:
* ``ROOT/chunks/part-<file index>.parquet``: one :data:`CHUNK_SCHEMA` table per input file,
  rows in ordinal order (row ``i`` holds the chunk whose id decodes to ordinal ``i``).
* ``ROOT/deadletter/part-<file index>.parquet``: :data:`DEADLETTER_SCHEMA` rows for the
  records of that file that could not be used (only written when there are any).
* ``ROOT/embeddings/part-<file index>.parquet``: :func:`embedding_schema` rows, one per
  chunk of that file, in the same (ordinal) order as its chunks table.

Read back by the index: :class:`ChunkRecord` (a chunk's provenance and text, as search
results, the attribution report and ``tda serve`` carry it) and :class:`SearchHit`.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pyarrow as pa

__all__ = [
    "CHUNK_SCHEMA",
    "DEADLETTER_SCHEMA",
    "MAX_CONCEPT_ID",
    "RAW_COPY_CHARS",
    "Chunk",
    "ChunkRecord",
    "DeadLetter",
    "DeadLetterReason",
    "SearchHit",
    "embedding_schema",
    "float16_values",
    "part_name",
    "vectors_from_arrow",
    "vectors_to_arrow",
]

# How much of a bad record a dead letter keeps (characters).
RAW_COPY_CHARS = 1000


def part_name(file_index: int, suffix: str = ".parquet") -> str:
    """Deterministic per-input-file output name: ``part-000042.parquet``."""
    return f"part-{file_index:06d}{suffix}"


@dataclass(frozen=True)
class Chunk:
    """One window of tokens of one document, with exact provenance.

    ``doc_text[char_start:char_end] == text`` always holds (see README, "Chunk boundaries").
    Token positions index the document's tokenization; ``token_end - token_start ==
    n_tokens``; the last chunk of a document keeps its true (possibly short) length.
    """

    chunk_id: int  # schemas.ids codec: dataset | file index | ordinal
    source: str  # corpus source name (--source, --source-field, or the file's stem)
    doc_id: str  # --id-field value, else "<file name>#<record index>"
    record_index: int  # line number (JSONL / text lines), row number (Parquet), 0 (text file)
    chunk_index: int  # position of this chunk inside its document
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    n_tokens: int
    text: str | None  # None when the run used --no-text


CHUNK_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("token_start", pa.int32(), nullable=False),
        pa.field("token_end", pa.int32(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=True),
    ],
    metadata={b"tda.table": b"chunks", b"tda.table_version": b"1"},
)


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as the index finds it by id: the provenance and text of its row in
    ``chunks/part-N.parquet`` (no token positions) and the URL of its input file."""

    chunk_id: int
    source: str
    doc_id: str
    record_index: int
    chunk_index: int
    char_start: int  # offsets of the chunk in its document's text
    char_end: int
    text: str | None  # None when the run used --no-text
    url: str  # the input file


@dataclass(frozen=True)
class SearchHit:
    """One search result: the similarity score and the chunk it found."""

    score: float  # inner product of unit vectors (or L2 distance, by the index's metric)
    chunk: ChunkRecord
    # with several channels fused (``tda search --text``): channel -> (rank, score) for
    # each channel that found the chunk, and the fused score
    channels: dict[str, tuple[int, float]] = field(default_factory=dict)
    fused_score: float | None = None


class DeadLetterReason(enum.StrEnum):
    """Why a record could not be used. Counted per reason in Beam counters and manifests."""

    MALFORMED_JSON = "malformed_json"  # the JSONL line does not parse
    NOT_AN_OBJECT = "not_an_object"  # parses, but is not a JSON object
    MISSING_TEXT = "missing_text"  # no text field, or null
    NON_STRING_TEXT = "non_string_text"  # the text field is a number, list, ...
    INVALID_UTF8 = "invalid_utf8"  # bytes that are not UTF-8
    EMPTY_DOCUMENT = "empty_document"  # empty or whitespace-only text (incl. blank lines)
    TOO_LARGE = "too_large"  # record larger than --max-doc-bytes
    NO_TOKENS = "no_tokens"  # the tokenizer produced no tokens for the text
    MISSING_SOURCE = "missing_source"  # --source-field given but absent / not a string
    UNREADABLE_FILE = "unreadable_file"  # I/O or decompression error; the rest of the file


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be used, with where it was and why.

    ``record_index`` is the record's index in its file (see :class:`Chunk`); for an
    unreadable file it is the index of the first record that could not be read.
    """

    file_index: int
    url: str
    record_index: int
    reason: DeadLetterReason
    detail: str  # one line, human readable
    raw: str  # truncated copy of the record (RAW_COPY_CHARS at most)
    raw_bytes: int  # size of the original record in bytes (-1 if unknown)

    def to_row(self) -> dict:
        row = asdict(self)
        row["reason"] = self.reason.value
        return row


DEADLETTER_SCHEMA = pa.schema(
    [
        pa.field("file_index", pa.int32(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        pa.field("raw_bytes", pa.int64(), nullable=False),
    ],
    metadata={b"tda.table": b"deadletters", b"tda.table_version": b"1"},
)

# Concept ids are stored as uint16 (the sparse side costs 4 bytes per concept per chunk);
# Steerling-8B has 33,732 known concepts.
MAX_CONCEPT_ID = 65535


# Dense vectors are stored as one fixed-size binary value per row holding D little-endian
# float16 values. Measured on the index build (1M x 256-d): Parquet decodes a
# fixed_size_list<float16> through per-element repetition levels, ~3x slower than the
# same bytes as fixed_size_binary, and that decode was most of what the build added to
# FAISS's own add. Use :func:`vectors_from_arrow` to read them.
VECTOR_DTYPE = np.dtype("<f2")


def embedding_schema(dim: int) -> pa.Schema:
    """The embeddings table for D = ``dim``: one row per chunk.

    * ``chunk_id``: the chunk's id (same row order as ``chunks/part-N.parquet``);
    * ``vector``: the pooled dense vector, L2-normalised: D little-endian float16 values
      as one ``fixed_size_binary(2 * D)`` value (field metadata ``tda.dtype`` /
      ``tda.shape`` say so); :func:`vectors_from_arrow` turns a column into (n, D);
    * ``concept_ids`` / ``concept_weights``: the chunk's top-k known concepts, strongest
      first (uint16 ids, float16 weights in [0, 1]).

    File metadata (``tda.encoder``, ``tda.pooling``, ``tda.context``) names the encoder,
    its fingerprint, the pooling and the context policy.
    """
    return pa.schema(
        [
            pa.field("chunk_id", pa.int64(), nullable=False),
            pa.field(
                "vector",
                pa.binary(VECTOR_DTYPE.itemsize * dim),
                nullable=False,
                metadata={b"tda.dtype": b"float16-le", b"tda.shape": f"[{dim}]".encode()},
            ),
            pa.field("concept_ids", pa.list_(pa.uint16()), nullable=False),
            pa.field("concept_weights", pa.list_(pa.float16()), nullable=False),
        ],
        metadata={b"tda.table": b"embeddings", b"tda.table_version": b"2"},
    )


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(n, D) float array -> the ``vector`` column: n values of D float16 (little-endian)."""
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be (n, D), got shape {vectors.shape}")
    n, dim = vectors.shape
    data = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(VECTOR_DTYPE.itemsize * dim), n, [None, pa.py_buffer(data)]
    )


def float16_values(array: pa.Array) -> np.ndarray:
    """A flat float16 Arrow array (no nulls) -> (n,) float16, read from its buffer.

    pyarrow's own float16 -> numpy conversion imports pandas (0.6 s on a process's first
    call), which the attributor and the scans would pay on their first hit."""
    return np.frombuffer(
        array.buffers()[1], dtype=np.float16, count=len(array), offset=2 * array.offset
    )


def vectors_from_arrow(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """The ``vector`` column (n values) -> (n, D) float16; a view of Arrow's buffer (no
    copy, read-only) when the column is one chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    width = VECTOR_DTYPE.itemsize * dim
    if not pa.types.is_fixed_size_binary(column.type) or column.type.byte_width != width:
        raise ValueError(
            f"vector column is {column.type}, expected fixed_size_binary[{width}] (D={dim} float16)"
        )
    if column.null_count:
        raise ValueError("vector column has null values")
    flat = np.frombuffer(
        column.buffers()[1],
        dtype=VECTOR_DTYPE,
        count=len(column) * dim,
        offset=column.offset * width,
    )
    return flat.reshape(len(column), dim)


assert [f.name for f in fields(Chunk)] == CHUNK_SCHEMA.names
assert {f.name for f in fields(ChunkRecord)} - {"url"} <= set(CHUNK_SCHEMA.names)
assert [f.name for f in fields(DeadLetter)] == DEADLETTER_SCHEMA.names
