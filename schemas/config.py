"""Frozen, self-validating settings for the stages. ``jobs/`` maps CLI options onto these;
the pipeline and the manifest use them as they are. Every validation raises
:class:`ConfigError` with one line that names the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .ids import DEFAULT_CODEC, ChunkIdCodec

__all__ = [
    "FORMATS",
    "TEXT_UNITS",
    "ChunkConfig",
    "ChunkingPolicy",
    "ConfigError",
    "ReadOptions",
]

FORMATS = ("auto", "jsonl", "parquet", "text")
TEXT_UNITS = ("file", "line")


class ConfigError(ValueError):
    """Bad settings; the message is one line naming the fix."""


@dataclass(frozen=True)
class ReadOptions:
    """How records are read out of corpus files and turned into documents."""

    format: str = "auto"  # auto: by extension (after stripping .gz/.zst/...)
    text_field: str = "text"  # JSONL key / Parquet column; dotted paths reach nested fields
    id_field: str = "id"  # missing -> "<file name>#<record index>"
    source: str | None = None  # one source name for every file
    source_field: str | None = None  # per-record source; absent -> dead letter
    text_unit: str = "file"  # plain text: one document per file, or per line
    # 16 MiB: above the longest books and Wikipedia pages; bounds the memory one record takes.
    max_doc_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.text_unit not in TEXT_UNITS:
            raise ConfigError(
                f"--text-unit must be one of {', '.join(TEXT_UNITS)}, got {self.text_unit!r}"
            )
        for name in ("text_field", "id_field"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} must not be empty")
        if self.source is not None and self.source_field is not None:
            raise ConfigError("give --source or --source-field, not both")
        if self.source is not None and not self.source.strip():
            raise ConfigError("--source must not be empty")
        if self.source_field is not None and not self.source_field:
            raise ConfigError("--source-field must not be empty")
        if self.max_doc_bytes < 1:
            raise ConfigError(f"--max-doc-bytes must be positive, got {self.max_doc_bytes}")


@dataclass(frozen=True)
class ChunkingPolicy:
    """Token windows cut from each document (never across documents).

    Chunks start at token 0, stride, 2*stride, ... until one reaches the document's end;
    the last one keeps its true length. ``stride == chunk_size`` (the default) tiles the
    document; a smaller stride overlaps; a larger one would silently skip tokens and is
    refused.
    """

    # 64: Steerling attends bidirectionally inside 64-token blocks, so chunks align to them.
    chunk_size: int = 64
    stride: int | None = None  # None: equal to chunk_size
    store_text: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if self.stride is not None and not 1 <= self.stride <= self.chunk_size:
            raise ConfigError(
                f"--stride must be between 1 and --chunk-size ({self.chunk_size}), "
                f"got {self.stride}; a larger stride would drop tokens"
            )

    @property
    def step(self) -> int:
        return self.chunk_size if self.stride is None else self.stride


@dataclass(frozen=True)
class ChunkConfig:
    """Everything ``tda chunk`` needs; validated on construction."""

    inputs: tuple[str, ...]
    out: str  # build root; the stage writes out/chunks and out/deadletter
    tokenizer: str  # tokenizer SPEC (see attribution.tokenizer.load_tokenizer)
    read: ReadOptions = field(default_factory=ReadOptions)
    chunking: ChunkingPolicy = field(default_factory=ChunkingPolicy)
    dataset_id: int = 0
    codec: ChunkIdCodec = DEFAULT_CODEC
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one INPUT path, URL or glob")
        if not self.out:
            raise ConfigError("--out ROOT is required")
        if not self.tokenizer:
            raise ConfigError("--tokenizer SPEC is required")
        if not 0 <= self.dataset_id <= self.codec.max_dataset:
            raise ConfigError(
                f"--dataset-id must be in 0..{self.codec.max_dataset}, got {self.dataset_id}"
            )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")

    def settings(self) -> dict[str, Any]:
        """The settings that decide the output (for the run record and resume checks)."""
        return {
            "read": asdict(self.read),
            "chunking": asdict(self.chunking),
            "dataset_id": self.dataset_id,
            "id_codec": self.codec.to_dict(),
        }
