"""Cut tokenized documents into token windows with exact character provenance.

Algorithm, per document of ``n`` tokens (``size`` = chunk size, ``step`` = stride):

1. Windows start at 0, step, 2*step, ... and stop at the first one that reaches ``n``;
   window ``k`` covers tokens ``[k*step, min(k*step + size, n))``.
2. Character boundaries: ``B(0) = 0``, ``B(n) = len(text)``, and for 0 < t < n ``B(t)`` is
   the character where token ``t`` starts (made non-decreasing and clamped to the text).
3. A window ``[s, e)`` gets the characters ``[B(s), B(e))`` and ``text = doc[B(s):B(e)]``.

With ``step == size`` the chunks tile the document: their texts concatenate to exactly the
document text. Whitespace a tokenizer drops or folds into a token belongs to the chunk it
falls in; a multi-byte character split over two tokens belongs to the later chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tda.attribution.corpus.readers import Document
from tda.attribution.corpus.tokenizer import Encoded
from tda.schemas import CHUNK_SCHEMA, ChunkIdCodec, ChunkingPolicy

__all__ = ["ChunkedBatch", "char_boundaries", "chunk_documents", "chunk_windows"]


def chunk_windows(n_tokens: int, size: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """n_tokens -> (starts, ends), each (n_chunks,) int64; n_chunks = 0 iff n_tokens = 0."""
    if n_tokens <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    n_chunks = 1 if n_tokens <= size else -(-(n_tokens - size) // step) + 1
    starts = np.arange(n_chunks, dtype=np.int64) * step
    return starts, np.minimum(starts + size, n_tokens)


def char_boundaries(enc: Encoded, positions: np.ndarray, text_len: int) -> np.ndarray:
    """Sorted unique token positions in 0..n (P,) -> character boundaries B (P,) int64."""
    n = enc.n_tokens
    inner = positions[(positions > 0) & (positions < n)]
    values = np.empty(len(positions), dtype=np.int64)
    values[positions <= 0] = 0
    values[positions >= n] = text_len
    if len(inner):
        values[(positions > 0) & (positions < n)] = enc.char_starts(inner.tolist())
    # Offsets are monotone for every tokenizer we know; enforce it so spans never invert.
    return np.minimum(np.maximum.accumulate(values), text_len)


@dataclass
class ChunkedBatch:
    """Chunks of a batch of documents, as an Arrow record batch in CHUNK_SCHEMA."""

    batch: pa.RecordBatch | None  # None when no document yielded a chunk
    n_chunks: int
    n_tokens: int
    no_tokens: list[Document]  # documents whose text produced no tokens


def chunk_documents(
    docs: Sequence[Document],
    encodings: Sequence[Encoded],
    policy: ChunkingPolicy,
    codec: ChunkIdCodec,
    dataset_id: int,
    file_index: int,
    first_ordinal: int,
) -> ChunkedBatch:
    """Documents of one file + their encodings -> chunk rows, ordinals from first_ordinal.

    Rows come out in document order, then chunk order, so ordinals (and ids) follow the
    file's record order.
    """
    size, step = policy.chunk_size, policy.step
    cols: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names if name != "chunk_id"}
    starts_all, ends_all, cs_all, ce_all, idx_all = [], [], [], [], []
    texts: list[str] = []
    no_tokens: list[Document] = []
    n_tokens_total = 0
    for doc, enc in zip(docs, encodings, strict=True):
        n = enc.n_tokens
        if n == 0:
            no_tokens.append(doc)
            continue
        starts, ends = chunk_windows(n, size, step)
        positions = np.unique(np.concatenate([starts, ends]))
        bounds = char_boundaries(enc, positions, len(doc.text))
        cs = bounds[np.searchsorted(positions, starts)]
        ce = bounds[np.searchsorted(positions, ends)]
        k = len(starts)
        starts_all.append(starts)
        ends_all.append(ends)
        cs_all.append(cs)
        ce_all.append(ce)
        idx_all.append(np.arange(k, dtype=np.int32))
        cols["source"].extend([doc.source] * k)
        cols["doc_id"].extend([doc.doc_id] * k)
        cols["record_index"].extend([doc.record_index] * k)
        if policy.store_text:
            text = doc.text
            texts.extend(text[a:b] for a, b in zip(cs.tolist(), ce.tolist(), strict=True))
        n_tokens_total += n
    if not starts_all:
        return ChunkedBatch(None, 0, 0, no_tokens)
    starts = np.concatenate(starts_all)
    ends = np.concatenate(ends_all)
    n_chunks = len(starts)
    ordinals = np.arange(first_ordinal, first_ordinal + n_chunks, dtype=np.int64)
    arrays = [
        pa.array(codec.encode_many(dataset_id, file_index, ordinals), pa.int64()),
        pa.array(cols["source"], pa.string()),
        pa.array(cols["doc_id"], pa.string()),
        pa.array(cols["record_index"], pa.int64()),
        pa.array(np.concatenate(idx_all), pa.int32()),
        pa.array(starts.astype(np.int32), pa.int32()),
        pa.array(ends.astype(np.int32), pa.int32()),
        pa.array(np.concatenate(cs_all), pa.int64()),
        pa.array(np.concatenate(ce_all), pa.int64()),
        pa.array((ends - starts).astype(np.int32), pa.int32()),
        pa.array(texts, pa.string()) if policy.store_text else pa.nulls(n_chunks, pa.string()),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=CHUNK_SCHEMA)
    return ChunkedBatch(batch, n_chunks, n_tokens_total, no_tokens)
