"""Concept-bottleneck encoders behind one interface, used for training chunks and output
chunks alike: the interface (:mod:`.base`), forward-pass windows (:mod:`.windows`),
pooling and the one encode path (:mod:`.pooling`), the exact logit split (:mod:`.logits`)
and the registry (:mod:`.registry`) that names each implementation without importing it:
``builtin/`` (our small concept-bottleneck LM) and :mod:`.steerling` (Steerling-8B).
"""

from tda.attribution.encoders.base import (
    MAX_DEFAULT_WINDOW,
    ConceptActivations,
    ConceptEncoder,
    EncoderError,
    default_context_policy,
    resolve_device,
)
from tda.attribution.encoders.logits import LogitSplit, logit_split
from tda.attribution.encoders.pooling import (
    EncodeStats,
    PooledChunks,
    encode_documents,
    encode_whole,
    pool_chunks,
)
from tda.attribution.encoders.registry import load_encoder, model_tokenizer_spec
from tda.attribution.encoders.windows import DocumentTokens, Window, batch_windows, plan_windows

__all__ = [
    "MAX_DEFAULT_WINDOW",
    "ConceptActivations",
    "ConceptEncoder",
    "DocumentTokens",
    "EncodeStats",
    "EncoderError",
    "LogitSplit",
    "PooledChunks",
    "Window",
    "batch_windows",
    "default_context_policy",
    "encode_documents",
    "encode_whole",
    "load_encoder",
    "logit_split",
    "model_tokenizer_spec",
    "plan_windows",
    "pool_chunks",
    "resolve_device",
]
