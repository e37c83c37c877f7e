"""Contracts of the data team's stages: concept / exemplar scans and prune lists.

* a scan (``tda scan``) is asked for with a :class:`ScanConfig`; it writes three Parquet
  tables (:data:`HITS_SCHEMA`, :data:`BY_DOCUMENT_SCHEMA`, :data:`BY_SOURCE_SCHEMA`; the
  workers' per-file parts use :data:`SCAN_TOTALS_SCHEMA` for document totals) and
  ``scan.json``, a :class:`ScanSummary` whose ``settings`` are a :class:`ScanSettings`
  and whose ``by_source`` rows are :class:`SourceHits`;
* a prune list (``tda prune list``) is a table of :data:`PRUNE_SCHEMA` at one of
  :data:`PRUNE_LEVELS`;
* ``tda prune apply`` is asked for with a :class:`PruneConfig`; each input file's worker
  leaves a :class:`FilePruned` marker that the driver gathers into the new root.

Same inputs, same bytes: every JSON form has its keys sorted when written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .manifest import StoredFile
from .wire import JsonRecord, record_from_dict

__all__ = [
    "BY_DOCUMENT_SCHEMA",
    "BY_SOURCE_SCHEMA",
    "HITS_SCHEMA",
    "PRUNE_LEVELS",
    "PRUNE_SCHEMA",
    "SCAN_KIND",
    "SCAN_TOTALS_SCHEMA",
    "SCAN_VERSION",
    "FilePruned",
    "PruneConfig",
    "ScanConfig",
    "ScanSettings",
    "ScanSummary",
    "SourceHits",
]

SCAN_KIND = "tda.scan"
# 2: calibrated scores and per-concept thresholds; sources ranked by share_lower
SCAN_VERSION = 2

# One row per chunk hit, worst first.
HITS_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.int64(), nullable=False),
        pa.field("file_index", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("matched", pa.string(), nullable=False),  # concept name / "exemplar N"
        pa.field("text", pa.string()),
    ]
)
# Per document with at least one hit (documents without hits are not listed).
BY_DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("file_index", pa.int32(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunks", pa.int64(), nullable=False),
        pa.field("chunks_hit", pa.int64(), nullable=False),
        pa.field("share", pa.float64(), nullable=False),
        pa.field("max_score", pa.float32(), nullable=False),
        pa.field("mean_score", pa.float32(), nullable=False),
    ]
)
# Per source in the index (sources without hits included, with zeros).
BY_SOURCE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("chunks", pa.int64(), nullable=False),
        pa.field("documents", pa.int64(), nullable=False),
        pa.field("chunks_hit", pa.int64(), nullable=False),
        pa.field("documents_hit", pa.int64(), nullable=False),
        pa.field("share", pa.float64(), nullable=False),
        # the 95% Wilson lower bound of share: what sources are ranked by, so one hit in a
        # one-chunk source does not outrank hundreds in a large one
        pa.field("share_lower", pa.float64(), nullable=False),
        pa.field("max_score", pa.float32(), nullable=False),
        pa.field("mean_score", pa.float32(), nullable=False),
    ]
)
# A worker's part: chunks per document of one input file (the shares' denominators).
SCAN_TOTALS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("file_index", pa.int32()),
        pa.field("record_index", pa.int64()),
        pa.field("doc_id", pa.string()),
        pa.field("chunks", pa.int64()),
    ]
)

PRUNE_LEVELS = ("chunk", "document", "source")
PRUNE_SCHEMA = pa.schema(
    [
        pa.field("level", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("file_index", pa.int32()),  # document / chunk level
        pa.field("record_index", pa.int64()),
        pa.field("doc_id", pa.string()),
        pa.field("chunk_id", pa.int64()),  # chunk level
        pa.field("char_start", pa.int64()),
        pa.field("char_end", pa.int64()),
        pa.field("score", pa.float32()),
        pa.field("share", pa.float64()),
        pa.field("reason", pa.string(), nullable=False),
    ],
    metadata={b"tda.table": b"prune_list", b"tda.table_version": b"1"},
)


@dataclass(frozen=True)
class ScanConfig:
    """What ``tda scan`` is asked: ``concepts`` (known concept names) or ``like`` (a file
    of exemplar texts), one of them; the scan directory ``out`` is replaced only with
    ``overwrite``. The scan checks these against ROOT when it plans."""

    root: str
    out: str
    concepts: tuple[str, ...] = ()
    like: str | None = None
    # concept mode: a chunk's pooled weight must reach this; None: the model's calibrated
    # threshold per concept (0.5 for a concept the model has no calibration for)
    min_weight: float | None = None
    top: int = 1000  # like mode: nearest chunks searched per exemplar
    min_score: float | None = None  # like mode: keep hits at least this similar
    overwrite: bool = False
    device: str = "auto"  # like mode: where the exemplars are encoded
    # like mode: the retrieval channels searched and fused (None: every channel the index has)
    channels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ScanSettings(JsonRecord):
    """What a scan ran with, as ``scan.json`` records it (``settings``)."""

    root: str
    mode: str  # "concept" | "like"
    concepts: tuple[str, ...]  # names (concept mode)
    concept_ids: tuple[int, ...]
    min_weight: float | None  # as asked (None: calibrated thresholds)
    like: str | None  # exemplar file (like mode)
    top: int
    min_score: float | None
    files: tuple[int, ...]  # input file indices with embeddings
    index_manifest_sha256: str | None
    embed_manifest_sha256: str
    # concept mode, per concept: the cut a chunk's score must reach, and whether the
    # score is the model's calibrated probability (else the raw pooled weight)
    thresholds: tuple[float, ...] = ()
    calibrated: tuple[bool, ...] = ()
    like_sha256: str | None = None  # "sha256:<hex>" of the exemplar file (like mode)
    channels: tuple[str, ...] = ()  # like mode: the channels searched and fused


@dataclass(frozen=True)
class SourceHits(JsonRecord):
    """One source of a scan (a ``by_source`` row): its chunks and documents, how many
    were hit, the share of its chunks hit, the max and mean score of its hits."""

    source: str
    chunks: int
    documents: int
    chunks_hit: int
    documents_hit: int
    share: float
    share_lower: float  # 95% Wilson lower bound of share (the ranking)
    max_score: float
    mean_score: float


@dataclass(frozen=True)
class ScanSummary(JsonRecord):
    """``scan.json``: the settings, the totals, and every source (largest share first)."""

    tda_version: str
    settings: ScanSettings
    chunks: int  # every chunk of the scanned files
    chunks_hit: int
    documents_hit: int
    sources_hit: int
    by_source: tuple[SourceHits, ...]
    kind: str = SCAN_KIND
    schema_version: int = SCAN_VERSION

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanSummary:
        return record_from_dict(cls, data)


@dataclass(frozen=True)
class PruneConfig:
    """What ``tda prune apply`` is asked: prune ROOT by the list at ``list_path`` into
    the corpus copy ``corpus_out`` and the root ``out`` (``corpus``: the inputs ROOT was
    built from; ``reason``: recorded in the manifest and the audit log)."""

    root: str
    list_path: str
    corpus: tuple[str, ...]
    corpus_out: str
    out: str
    reason: str
    overwrite: bool = False
    resume: bool = False  # keep the input files an interrupted run finished (markers)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            from .config import ConfigError

            raise ConfigError("--resume and --overwrite exclude each other: pick one")


@dataclass(frozen=True)
class FilePruned(JsonRecord):
    """What pruning did to one input file (its marker ``NEW_ROOT/_prune/N.json``)."""

    file_index: int
    records_in: int
    records_out: int  # records written to the pruned corpus file
    documents_removed: int
    documents_edited: int  # chunk level: documents with spans cut out
    chunks_removed: int
    chunks_kept: int
    tokens_removed: int
    removed_ids: tuple[int, ...]
    per_source: dict[str, dict[str, int]]  # source -> {"chunks": n, "documents": m}
    corpus_file: str | None  # written file (None: every record pruned, text file dropped)
    # NEW_ROOT's chunks, dead-letter and embeddings parts of the file, sha256 and size
    parts: tuple[StoredFile, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilePruned:
        return record_from_dict(cls, data)
