"""A query text -> a search vector, with the index's own encoder, pooling and window (the
one encoder code path: :func:`~tda.attribution.encoders.encode_whole`), and
:func:`search_text`: a text searched on every channel of the index, fused.
"""

from __future__ import annotations

import numpy as np

from tda.attribution.encoders import DocumentTokens, encode_whole, load_encoder
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.attribution.index.retrieval import ChunkQuery, Retriever
from tda.schemas import ConfigError, SearchHit

__all__ = ["encode_query", "search_text"]


def encode_query(reader: IndexReader, text: str, device: str = "auto", encoder=None) -> np.ndarray:
    """Encode a query text with the index's own encoder (``encoder`` if already loaded)
    and pooling, as one chunk in one window (the index's, or the text's length if longer):
    (D,) float32, unit length. Refuses an encoder whose weights differ."""
    encoder = _index_encoder(reader, device, encoder)
    return _encode(reader, encoder, _tokens(encoder, text))


def _index_encoder(reader: IndexReader, device: str, encoder=None):
    """The index's encoder (``encoder`` if already loaded), refused if its weights differ."""
    m = reader.manifest
    encoder = encoder or load_encoder(m.encoder.spec, device)
    if encoder.info.fingerprint != m.encoder.fingerprint:
        raise IndexReadError(
            f"the model at {m.encoder.spec} is not the one the index was built with "
            f"({encoder.info.fingerprint[:19]} != {m.encoder.fingerprint[:19]})"
        )
    return encoder


def _tokens(encoder, text: str) -> np.ndarray:
    """The text's token ids (n,), refused when empty or longer than the model's context."""
    (enc,) = encoder.tokenizer.encode_batch([text])
    if enc.n_tokens == 0:
        raise ConfigError("--text has no tokens")
    limit = encoder.info.max_window
    if enc.n_tokens > limit:
        raise ConfigError(f"--text is {enc.n_tokens} tokens; the model's context holds {limit}")
    return enc.ids


def _encode(reader: IndexReader, encoder, ids: np.ndarray) -> np.ndarray:
    m = reader.manifest
    doc = DocumentTokens(ids=ids, spans=np.array([[0, len(ids)]]))
    return encode_whole(encoder, [doc], m.pooling, m.context.window, m.context.align).vectors[0]


def search_text(
    reader: IndexReader, text: str, k: int, channels=None, device: str = "auto",
    nprobe: int | None = None, candidates: int = 100,
) -> list[SearchHit]:  # fmt: skip
    """``text`` searched on ``channels`` (default: every channel of the index): its vector
    (dense), its tokens as one region (exact spans) and its words (BM25), ``candidates``
    per channel, fused; the ``k`` best as hits whose ``score`` is the dense similarity
    (read from the stored vector for a chunk the dense channel did not return)."""
    encoder = _index_encoder(reader, device)
    ids = _tokens(encoder, text)  # tokenized once: the vector and the span query share it
    vector = _encode(reader, encoder, ids)
    retriever = Retriever(reader)
    wanted = retriever.channels(channels)
    query = ChunkQuery(vector, ids, (0, len(ids)), text)
    (found,) = retriever.retrieve([query], wanted, max(k, candidates), nprobe)
    hits = []
    for fused in found.fused[:k]:
        hits.append(
            SearchHit(
                round(retriever.dense_score(fused, vector), 6),
                reader.lookup.get(fused.chunk_id),
                dict(fused.channels),
                round(fused.score, 8) if len(wanted) > 1 else None,
            )
        )
    return hits
