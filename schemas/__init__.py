"""Contracts between stages: the chunk-id codec, row schemas, settings and manifests.

Imports nothing of tda's own beyond this package.
"""

from .config import (
    ChunkConfig,
    ChunkingPolicy,
    ConfigError,
    ContextPolicy,
    EmbedConfig,
    IndexConfig,
    Pooling,
    ReadOptions,
)
from .ids import DEFAULT_CODEC, ChunkIdCodec, ChunkIdOverflowError, ChunkLocation
from .manifest import (
    EmbedCounts,
    EmbedManifest,
    EncoderInfo,
    FileCounts,
    IndexFile,
    IndexManifest,
    InputFile,
    Manifest,
    ManifestError,
    ShardInfo,
    TokenizerInfo,
)
from .records import (
    CHUNK_SCHEMA,
    DEADLETTER_SCHEMA,
    MAX_CONCEPT_ID,
    Chunk,
    DeadLetter,
    DeadLetterReason,
    embedding_schema,
    part_name,
    vectors_from_arrow,
    vectors_to_arrow,
)

__all__ = [
    "CHUNK_SCHEMA",
    "DEADLETTER_SCHEMA",
    "DEFAULT_CODEC",
    "MAX_CONCEPT_ID",
    "Chunk",
    "ChunkConfig",
    "ChunkIdCodec",
    "ChunkIdOverflowError",
    "ChunkLocation",
    "ChunkingPolicy",
    "ConfigError",
    "ContextPolicy",
    "DeadLetter",
    "DeadLetterReason",
    "EmbedConfig",
    "EmbedCounts",
    "EmbedManifest",
    "EncoderInfo",
    "FileCounts",
    "IndexConfig",
    "IndexFile",
    "IndexManifest",
    "InputFile",
    "Manifest",
    "ManifestError",
    "Pooling",
    "ReadOptions",
    "ShardInfo",
    "TokenizerInfo",
    "embedding_schema",
    "part_name",
    "vectors_from_arrow",
    "vectors_to_arrow",
]
