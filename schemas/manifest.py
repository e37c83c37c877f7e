"""Versioned manifests: what a stage produced, from what, with which settings.

``ROOT/chunks/manifest.json`` (a :class:`Manifest`) is written last by the chunk stage: it
is the stage's commit point, and what later stages read to learn the tokenizer, the id
codec, the chunking policy and the inputs. The embed and index stages extend it with their
own sections under a new ``schema_version``; :meth:`Manifest.from_json` refuses versions it
does not know instead of guessing.

Every file a stage writes is listed in its manifest with its size and sha256 (a
:class:`StoredFile`): the chunks and dead-letter parts under each input file's
:class:`FileCounts`, the embeddings parts under its :class:`EmbedCounts` and the concept
names as :attr:`EmbedManifest.concepts`, the index files in :attr:`IndexManifest.files`.
Manifests written before those checksums (chunks version 1, embeddings version 2) are
refused with one line that says to rebuild the stage.

Manifests hold no timestamps or host names: same inputs and settings, same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .config import ChunkingPolicy, ContextPolicy, Pooling, ReadOptions
from .errors import UserError
from .ids import ChunkIdCodec
from .records import DeadLetterReason
from .wire import JsonRecord, omitted_if_none, record_dict, written_as

__all__ = [
    "EMBED_MANIFEST_SCHEMA_VERSION",
    "INDEX_MANIFEST_SCHEMA_VERSION",
    "MANIFEST_SCHEMA_VERSION",
    "MERGED_MANIFEST_SCHEMA_VERSION",
    "SEAL",
    "ChannelInfo",
    "EmbedCounts",
    "EmbedManifest",
    "EncoderInfo",
    "FileCounts",
    "IndexFile",
    "IndexManifest",
    "InputFile",
    "Manifest",
    "ManifestError",
    "MergedIndexManifest",
    "ShardInfo",
    "StoredFile",
    "TokenizerInfo",
    "sealed_json",
]

# 2: every file's size and sha256 (FileCounts.parts)
MANIFEST_SCHEMA_VERSION = 2
# 2: vectors stored as fixed_size_binary (D float16) instead of fixed_size_list<float16>
# 3: every file's size and sha256 (EmbedCounts.parts, EmbedManifest.concepts)
EMBED_MANIFEST_SCHEMA_VERSION = 3
# The versions that predate per-file checksums: refused with "rebuild", not "upgrade".
_UNCHECKSUMMED = {"tda.chunks": 1, "tda.embeddings": 2}
INDEX_MANIFEST_SCHEMA_VERSION = 1
# 1: the first versioned merged manifest; earlier ones (no schema_version) read as 1
MERGED_MANIFEST_SCHEMA_VERSION = 1


class ManifestError(UserError):
    """A manifest that cannot be read: wrong kind, unknown version, missing fields."""


class _ManifestJson(JsonRecord):
    """A manifest's file: its JSON object (:func:`~tda.schemas.wire.record_dict`), keys
    sorted, two-space indent, one trailing newline, sealed (:func:`sealed_json`); same
    manifest, same bytes."""

    __slots__ = ()

    def to_json(self) -> str:
        return sealed_json(self.to_dict())


# A manifest's own checksum: no other file records the sha256 of the last stage's
# manifest, so without it a flipped digit in, say, the index's nprobe would go unseen.
SEAL = "self_sha256"


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _seal_of(data: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({**data, SEAL: ""}).encode("utf-8")).hexdigest()


def sealed_json(data: dict[str, Any]) -> str:
    """A manifest's JSON object -> its file's text: canonical JSON (keys sorted, two-space
    indent, trailing newline) with ``self_sha256``, the hex sha256 of that same text
    written with ``self_sha256`` empty."""
    return _canonical({**data, SEAL: _seal_of(data)})


def _check_seal(data: dict[str, Any], text: str, required: bool) -> None:
    """Refuse a manifest whose text is not exactly what :func:`sealed_json` writes for
    its content, or whose ``self_sha256`` is not that content's (any altered byte).
    ``required=False`` lets a manifest without a seal through (an older tda's index)."""
    if SEAL not in data:
        if required:
            raise ManifestError(
                f"manifest has no {SEAL} (not written by this tda); rebuild this stage with "
                f"--overwrite"
            )
        return
    if _canonical(data) != text or _seal_of(data) != data[SEAL]:
        raise ManifestError(
            f"manifest does not match its own {SEAL} (altered or corrupt); restore it from a "
            f"backup or rebuild this stage with --overwrite"
        )


def _total_as_null(file_index: int) -> int | None:
    """A per-file count's file index as JSON: a total over files (-1) has null."""
    return None if file_index < 0 else file_index


@dataclass(frozen=True)
class StoredFile:
    """One file a stage wrote, as its manifest lists it: path relative to the build root
    (``chunks/part-000042.parquet``), hex sha256 of its bytes, size in bytes."""

    path: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredFile:
        return cls(path=str(data["path"]), sha256=str(data["sha256"]), size=int(data["size"]))


def _parts(data: dict[str, Any]) -> tuple[StoredFile, ...]:
    return tuple(StoredFile.from_dict(p) for p in data.get("parts", ()))


def _without_parts_if_total(data: dict[str, Any]) -> dict[str, Any]:
    """A per-file count's JSON; a total over files (file index null) lists no files."""
    if data["file_index"] is None:
        del data["parts"]
    return data


@dataclass(frozen=True)
class InputFile:
    """One input file: its index (position in the sorted URL list), URL, format, size."""

    index: int
    url: str
    format: str  # jsonl | parquet | text
    size_bytes: int


@dataclass(frozen=True)
class TokenizerInfo:
    """Identifies a tokenizer: the spec it was loaded from and a fingerprint of its data."""

    spec: str
    kind: str  # "huggingface" | "tiktoken"
    name: str
    fingerprint: str  # "sha256:<hex>" of the tokenizer's defining bytes
    vocab_size: int


@dataclass(frozen=True)
class FileCounts(JsonRecord):
    """What one input file turned into. ``records == documents + sum(deadletters)``;
    ``parts``: the files written for it (its chunks part, and its dead-letter part when
    a record was unusable), with sha256 and size; a total has none."""

    file_index: int = field(metadata=written_as(_total_as_null))
    records: int = 0
    documents: int = 0
    chunks: int = 0
    tokens: int = 0
    deadletters: dict[str, int] = field(default_factory=dict)
    parts: tuple[StoredFile, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return _without_parts_if_total(record_dict(self))

    @property
    def deadlettered(self) -> int:
        return sum(self.deadletters.values())

    def reconciles(self) -> bool:
        return self.records == self.documents + self.deadlettered

    @staticmethod
    def total(counts: list[FileCounts] | tuple[FileCounts, ...]) -> FileCounts:
        reasons: dict[str, int] = {}
        for c in counts:
            for reason, n in c.deadletters.items():
                reasons[reason] = reasons.get(reason, 0) + n
        return FileCounts(
            file_index=-1,
            records=sum(c.records for c in counts),
            documents=sum(c.documents for c in counts),
            chunks=sum(c.chunks for c in counts),
            tokens=sum(c.tokens for c in counts),
            deadletters={r.value: reasons[r.value] for r in DeadLetterReason if r.value in reasons},
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileCounts:
        return cls(
            file_index=int(data["file_index"]),
            records=int(data["records"]),
            documents=int(data["documents"]),
            chunks=int(data["chunks"]),
            tokens=int(data["tokens"]),
            deadletters={str(k): int(v) for k, v in data["deadletters"].items()},
            parts=_parts(data),
        )


@dataclass(frozen=True)
class Manifest(_ManifestJson):
    """The chunk stage's record of a build root (``ROOT/chunks/manifest.json``)."""

    JSON_DERIVED = ("totals",)

    tda_version: str
    id_codec: ChunkIdCodec
    dataset_id: int
    tokenizer: TokenizerInfo
    read: ReadOptions
    chunking: ChunkingPolicy
    inputs: tuple[InputFile, ...]
    files: tuple[FileCounts, ...]
    schema_version: int = MANIFEST_SCHEMA_VERSION
    kind: str = "tda.chunks"

    @property
    def totals(self) -> FileCounts:
        return FileCounts.total(self.files)

    def stored_files(self) -> dict[str, StoredFile]:
        """Every file the stage wrote, by its path relative to the build root."""
        return {p.path: p for f in self.files for p in f.parts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        _check_kind(data, "tda.chunks", MANIFEST_SCHEMA_VERSION, "tda chunk manifest")
        version = data["schema_version"]
        try:
            return cls(
                tda_version=str(data["tda_version"]),
                id_codec=ChunkIdCodec.from_dict(data["id_codec"]),
                dataset_id=int(data["dataset_id"]),
                tokenizer=TokenizerInfo(**data["tokenizer"]),
                read=ReadOptions(**data["read"]),
                chunking=ChunkingPolicy(**data["chunking"]),
                inputs=tuple(InputFile(**i) for i in data["inputs"]),
                files=tuple(FileCounts.from_dict(f) for f in data["files"]),
                schema_version=int(version),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = _load_json(text)
        manifest = cls.from_dict(data)
        _check_seal(data, text, required=True)
        return manifest


def _check_kind(data: dict[str, Any], kind: str, version: int, what: str) -> None:
    """Refuse a manifest of another kind, or a schema version this tda does not read."""
    if data.get("kind") != kind:
        raise ManifestError(f"not a {what} (kind={data.get('kind')!r})")
    found = data.get("schema_version")
    if type(found) is int and 1 <= found <= _UNCHECKSUMMED.get(kind, 0):
        raise ManifestError(
            f"{kind} manifest schema version {data['schema_version']} was written by an older "
            f"tda and lists no sha256 of its files; rebuild this stage with --overwrite"
        )
    if data.get("schema_version") != version:
        raise ManifestError(
            f"{kind} manifest schema version {data.get('schema_version')} is not supported by "
            f"this tda (it reads version {version}); use a matching tda release"
        )


def _load_json(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a JSON object")
    return data


@dataclass(frozen=True)
class EncoderInfo:
    """Identifies a concept encoder: what later stages check before mixing vectors."""

    name: str  # "builtin" | "steerling"
    spec: str  # the model SPEC it was loaded from
    fingerprint: str  # "sha256:<hex>" of the weights
    tokenizer_fingerprint: str
    hidden_size: int  # D of the per-token features
    n_known: int  # known (named) concepts
    n_unknown: int  # unknown (learned) concepts
    max_window: int  # the model's context limit in tokens
    block_align: int  # windows start at multiples of this (Steerling: 64)


@dataclass(frozen=True)
class EmbedCounts(JsonRecord):
    """What the embed stage did with one input file's chunks."""

    file_index: int = field(metadata=written_as(_total_as_null))
    chunks: int = 0  # rows written (== the file's chunks)
    tokens: int = 0  # chunk tokens pooled (sum of n_tokens)
    window_tokens: int = 0  # tokens run through the model (context included)
    padded_tokens: int = 0  # padding added to form batches
    windows: int = 0
    batches: int = 0
    zero_vectors: int = 0  # pooled vectors of norm 0, stored as zeros
    parts: tuple[StoredFile, ...] = ()  # the embeddings part written, sha256 and size

    def to_dict(self) -> dict[str, Any]:
        return _without_parts_if_total(record_dict(self))

    @property
    def padding_share(self) -> float:
        total = self.window_tokens + self.padded_tokens
        return self.padded_tokens / total if total else 0.0

    @staticmethod
    def total(counts: list[EmbedCounts] | tuple[EmbedCounts, ...]) -> EmbedCounts:
        names = [f.name for f in fields(EmbedCounts) if f.name not in ("file_index", "parts")]
        return EmbedCounts(-1, **{n: sum(getattr(c, n) for c in counts) for n in names})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedCounts:
        names = [f.name for f in fields(cls) if f.name != "parts"]
        return cls(**{n: int(data[n]) for n in names}, parts=_parts(data))


@dataclass(frozen=True)
class EmbedManifest(_ManifestJson):
    """The embed stage's record (``ROOT/embeddings/manifest.json``, written last)."""

    JSON_DERIVED = ("pooling_name", "totals")

    tda_version: str
    encoder: EncoderInfo
    pooling: Pooling
    context: ContextPolicy
    dim: int  # D of the stored vectors
    batch_tokens: int
    chunk_manifest_sha256: str  # the chunks/manifest.json these vectors were made from
    files: tuple[EmbedCounts, ...]
    # embeddings/concepts.json (the encoder's concept names), sha256 and size
    concepts: StoredFile | None = field(default=None, metadata=omitted_if_none())
    schema_version: int = EMBED_MANIFEST_SCHEMA_VERSION
    kind: str = "tda.embeddings"

    @property
    def totals(self) -> EmbedCounts:
        return EmbedCounts.total(self.files)

    def stored_files(self) -> dict[str, StoredFile]:
        """Every file the stage wrote (parts and concept names), by its path relative to
        the build root."""
        found = {p.path: p for f in self.files for p in f.parts}
        if self.concepts is not None:
            found[self.concepts.path] = self.concepts
        return found

    @property
    def pooling_name(self) -> str:
        """The pooling's short name (``mean:hidden``), written beside its settings."""
        return self.pooling.name

    @classmethod
    def from_json(cls, text: str) -> EmbedManifest:
        data = _load_json(text)
        _check_kind(
            data, "tda.embeddings", EMBED_MANIFEST_SCHEMA_VERSION, "tda.embeddings manifest"
        )
        try:
            manifest = cls(
                tda_version=str(data["tda_version"]),
                encoder=EncoderInfo(**data["encoder"]),
                pooling=Pooling(**data["pooling"]),
                context=ContextPolicy(**data["context"]),
                dim=int(data["dim"]),
                batch_tokens=int(data["batch_tokens"]),
                chunk_manifest_sha256=str(data["chunk_manifest_sha256"]),
                files=tuple(EmbedCounts.from_dict(f) for f in data["files"]),
                concepts=(StoredFile.from_dict(data["concepts"]) if data.get("concepts") else None),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from exc
        _check_seal(data, text, required=True)
        return manifest


@dataclass(frozen=True)
class IndexFile:
    """One file of the index, checked before use: path relative to ROOT/index."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ShardInfo:
    """One shard: the vectors of a group of input files, added with their chunk ids."""

    shard: int
    path: str  # relative to ROOT/index
    vectors: int
    embed_files: tuple[int, ...]  # input file indices whose embeddings it holds


@dataclass(frozen=True)
class ChannelInfo:
    """A retrieval channel built beside the dense shards: its name (``span`` |
    ``lexical``), per shard its files (role -> path relative to ROOT/index; every one is
    also in the manifest's ``files`` with its sha256), and the settings it was built with
    (the span channel's token width and separator, the lexical channel's term rule)."""

    name: str
    shards: tuple[dict[str, str], ...]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexManifest(_ManifestJson):
    """The index stage's record (``ROOT/index/manifest.json``, written last: the commit
    point). Queries read everything they need from it: which encoder and tokenizer made
    the vectors, how chunks and windows were cut, the FAISS factory, metric, dimension and
    default nprobe, every file's sha256 and size, the shards and the corpus inputs."""

    tda_version: str
    encoder: EncoderInfo
    tokenizer: TokenizerInfo
    chunking: ChunkingPolicy
    context: ContextPolicy
    pooling: Pooling
    id_codec: ChunkIdCodec
    dataset_id: int
    factory: str
    metric: str  # "ip" | "l2"
    dim: int
    nprobe: int
    train_vectors: int
    vectors: int
    shards: tuple[ShardInfo, ...]
    files: tuple[IndexFile, ...]
    inputs: tuple[InputFile, ...]
    chunk_manifest_sha256: str
    embed_manifest_sha256: str
    # set by `tda prune apply`: parent manifest id, prune list sha256, reason, counts
    lineage: dict[str, Any] | None = field(default=None, metadata=omitted_if_none())
    # the span / lexical channels (an index built before them has none: dense only)
    channels: tuple[ChannelInfo, ...] = ()
    # how queries fuse the channels' lists: {"method": "rrf", "k": 60, "weights": {...}}
    fusion: dict[str, Any] | None = field(default=None, metadata=omitted_if_none())
    # the file (in ROOT/index) holding the trained quantizer every shard shares: shards
    # then hold only their inverted lists and ids. None (older indexes): every shard file
    # is a whole FAISS index with its own copy of the quantizer.
    quantizer: str | None = field(default=None, metadata=omitted_if_none())
    # exact re-ranking of candidates: {"codes": "fp16" | "sq8" | "embeddings",
    # "factor": candidates per hit, "file": the trained code file (stored codes only)}
    refine: dict[str, Any] | None = field(default=None, metadata=omitted_if_none())
    # dimension reduction in front of the factory: {"method": "pca", "dim": stored D,
    # "sample": vectors it was fitted on}; queries are reduced by the trained quantizer
    reduce: dict[str, Any] | None = field(default=None, metadata=omitted_if_none())
    schema_version: int = INDEX_MANIFEST_SCHEMA_VERSION
    kind: str = "tda.index"

    @classmethod
    def from_json(cls, text: str) -> IndexManifest:
        data = _load_json(text)
        _check_kind(data, "tda.index", INDEX_MANIFEST_SCHEMA_VERSION, "tda.index manifest")
        try:
            manifest = cls(
                tda_version=str(data["tda_version"]),
                encoder=EncoderInfo(**data["encoder"]),
                tokenizer=TokenizerInfo(**data["tokenizer"]),
                chunking=ChunkingPolicy(**data["chunking"]),
                context=ContextPolicy(**data["context"]),
                pooling=Pooling(**data["pooling"]),
                id_codec=ChunkIdCodec.from_dict(data["id_codec"]),
                dataset_id=int(data["dataset_id"]),
                factory=str(data["factory"]),
                metric=str(data["metric"]),
                dim=int(data["dim"]),
                nprobe=int(data["nprobe"]),
                train_vectors=int(data["train_vectors"]),
                vectors=int(data["vectors"]),
                shards=tuple(
                    ShardInfo(**{**s, "embed_files": tuple(s["embed_files"])})
                    for s in data["shards"]
                ),
                files=tuple(IndexFile(**f) for f in data["files"]),
                inputs=tuple(InputFile(**i) for i in data["inputs"]),
                chunk_manifest_sha256=str(data["chunk_manifest_sha256"]),
                embed_manifest_sha256=str(data["embed_manifest_sha256"]),
                lineage=data.get("lineage"),
                channels=tuple(
                    ChannelInfo(
                        name=str(c["name"]),
                        shards=tuple(dict(sh) for sh in c["shards"]),
                        settings=dict(c.get("settings", {})),
                    )
                    for c in data.get("channels", ())
                ),
                fusion=data.get("fusion"),
                quantizer=data.get("quantizer"),
                refine=data.get("refine"),
                reduce=data.get("reduce"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from exc
        _check_seal(data, text, required=False)  # an older tda's index has none
        return manifest


@dataclass(frozen=True)
class MergedIndexManifest(_ManifestJson):
    """The merged on-disk variant's record (``ROOT/index/merged/manifest.json``, written
    last by ``tda index merge``): the index manifest it was merged from, its vector count
    and its files. Merged manifests written before it had a version read as version 1."""

    parent_manifest_id: str  # sha256 of the index manifest.json the shards belong to
    vectors: int
    files: tuple[IndexFile, ...]  # merged.faiss (and merged.ivfdata for IVF), in merged/
    schema_version: int = MERGED_MANIFEST_SCHEMA_VERSION

    @classmethod
    def from_json(cls, text: str) -> MergedIndexManifest:
        data = _load_json(text)
        version = data.get("schema_version", 1)
        if version != MERGED_MANIFEST_SCHEMA_VERSION:
            raise ManifestError(
                f"merged index manifest schema version {version} is not supported by this "
                f"tda (it reads version {MERGED_MANIFEST_SCHEMA_VERSION}); merge again"
            )
        try:
            manifest = cls(
                parent_manifest_id=str(data["parent_manifest_id"]),
                vectors=int(data["vectors"]),
                files=tuple(
                    IndexFile(path=str(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]))
                    for f in data["files"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is missing or has a malformed field: {exc}") from exc
        _check_seal(data, text, required=False)  # earlier merges wrote none
        return manifest
