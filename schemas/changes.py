"""Contracts of the commands that change a finished root by generations: ``tda add``
(new input files), ``tda takedown`` (documents out) and ``tda index retrain`` (a new
quantizer), see ``tda.attribution.curation.generations``.

* ``tda add`` is asked for with an :class:`AddConfig`; each new input file's worker
  leaves an :class:`AddedFile` marker (its chunk and embed counts) that the driver
  gathers into the new generation;
* ``tda takedown`` is asked for with a :class:`TakedownConfig`;
* ``tda index retrain`` with a :class:`RetrainConfig`.

Each config validates itself: a bad value is one :class:`~.config.ConfigError` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .manifest import EmbedCounts, FileCounts
from .wire import JsonRecord

__all__ = ["AddConfig", "AddedFile", "RetrainConfig", "TakedownConfig"]


@dataclass(frozen=True)
class AddConfig:
    """Add the files ``inputs`` (paths, globs, folders, URLs) to the finished root
    ``root``: chunked with the root's tokenizer and settings, embedded with its encoder
    (``model``: another SPEC of the same weights, e.g. a copy on the workers; None: the
    SPEC the root records), indexed with its trained quantizer. ``tokenizer``: where the
    root's tokenizer is read from when its recorded SPEC has moved (None: recorded)."""

    root: str
    inputs: tuple[str, ...]
    model: str | None = None
    tokenizer: str | None = None
    device: str = "auto"
    by: str | None = None  # who, for the audit log (None: the login name)
    threads: int | None = None  # shards filled at once (None: the cores)
    resume: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("give at least one INPUT to add")


@dataclass(frozen=True)
class AddedFile(JsonRecord):
    """What one added input file turned into (its marker ``ROOT/_add/N.json``): its
    chunk stage counts and its embed stage counts, with their parts' sha256."""

    chunks: FileCounts
    embed: EmbedCounts

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AddedFile:
        return cls(FileCounts.from_dict(data["chunks"]), EmbedCounts.from_dict(data["embed"]))


@dataclass(frozen=True)
class TakedownConfig:
    """Take documents out of the root ``root``: by document id (``doc_ids``, the
    corpus's id field), by source (``sources``) or by a list file (``list_path``: one
    document id per line, or a document- or source-level prune list .parquet/.csv);
    exactly one kind. ``reason`` and ``by`` go to the audit log; with ``corpus_out``,
    the affected corpus files are rewritten there without the documents (``corpus``,
    when given, must be the corpus the root was built from)."""

    root: str
    reason: str
    doc_ids: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    list_path: str | None = None
    by: str | None = None
    corpus: tuple[str, ...] = ()
    corpus_out: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        kinds = sum((bool(self.doc_ids), bool(self.sources), self.list_path is not None))
        if kinds != 1:
            raise ConfigError("name what to take down with one of --doc-id, --source or --list")
        if not self.reason or not self.reason.strip():
            raise ConfigError("--reason is required: the audit log records why data was removed")
        if self.corpus and not self.corpus_out:
            raise ConfigError("--corpus needs --corpus-out: where the rewritten files go")


@dataclass(frozen=True)
class RetrainConfig:
    """Train a new quantizer for ``root``'s index on a sample of all its vectors and
    refill every shard (``train_sample``: vectors to train on; None: the factory's
    default)."""

    root: str
    train_sample: int | None = None
    by: str | None = None
    threads: int | None = None
