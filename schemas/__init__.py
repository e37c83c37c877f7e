"""Contracts between stages: the chunk-id codec, row schemas, settings and manifests.

Imports nothing of tda's own beyond this package.
"""

from .config import ChunkConfig, ChunkingPolicy, ConfigError, ReadOptions
from .ids import DEFAULT_CODEC, ChunkIdCodec, ChunkIdOverflowError, ChunkLocation
from .manifest import FileCounts, InputFile, Manifest, ManifestError, TokenizerInfo
from .records import (
    CHUNK_SCHEMA,
    DEADLETTER_SCHEMA,
    Chunk,
    DeadLetter,
    DeadLetterReason,
    part_name,
)

__all__ = [
    "CHUNK_SCHEMA",
    "DEADLETTER_SCHEMA",
    "DEFAULT_CODEC",
    "Chunk",
    "ChunkConfig",
    "ChunkIdCodec",
    "ChunkIdOverflowError",
    "ChunkLocation",
    "ChunkingPolicy",
    "ConfigError",
    "DeadLetter",
    "DeadLetterReason",
    "FileCounts",
    "InputFile",
    "Manifest",
    "ManifestError",
    "ReadOptions",
    "TokenizerInfo",
    "part_name",
]
