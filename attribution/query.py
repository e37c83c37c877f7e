"""A query text -> a search vector, with the index's own encoder, pooling and window (the
one encoder code path: :func:`~tda.attribution.encoders.encode_whole`).
"""

from __future__ import annotations

import numpy as np

from tda.attribution.encoders import DocumentTokens, encode_whole, load_encoder
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.schemas import ConfigError

__all__ = ["encode_query"]


def encode_query(reader: IndexReader, text: str, device: str = "auto", encoder=None) -> np.ndarray:
    """Encode a query text with the index's own encoder (``encoder`` if already loaded)
    and pooling, as one chunk in one window (the index's, or the text's length if longer):
    (D,) float32, unit length. Refuses an encoder whose weights differ."""
    m = reader.manifest
    encoder = encoder or load_encoder(m.encoder.spec, device)
    if encoder.info.fingerprint != m.encoder.fingerprint:
        raise IndexReadError(
            f"the model at {m.encoder.spec} is not the one the index was built with "
            f"({encoder.info.fingerprint[:19]} != {m.encoder.fingerprint[:19]})"
        )
    (enc,) = encoder.load_tokenizer().encode_batch([text])
    if enc.n_tokens == 0:
        raise ConfigError("--text has no tokens")
    limit = encoder.info.max_window
    if enc.n_tokens > limit:
        raise ConfigError(f"--text is {enc.n_tokens} tokens; the model's context holds {limit}")
    doc = DocumentTokens(ids=enc.ids, spans=np.array([[0, enc.n_tokens]]))
    return encode_whole(encoder, [doc], m.pooling, m.context.window, m.context.align).vectors[0]
