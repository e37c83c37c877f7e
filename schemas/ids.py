"""The chunk-id codec: a chunk's location packed into one non-negative int64.

Layout, most significant bit first::

    [0][dataset : D bits][file index : F bits][ordinal : O bits]     D + F + O <= 63

* ``dataset`` tells apart corpora built into one index family (``--dataset-id``).
* ``file index`` is the input file's position in the sorted URL list of the chunk run.
* ``ordinal`` is the chunk's position inside that file's chunks table, which is also its
  row number in ``chunks/part-<file index>.parquet``.

Ids are therefore deterministic (same inputs, same ids, on any runner), collision-free by
construction (distinct locations give distinct ids; no hashing), decodable back to the row
that holds the chunk, and ordered like the files and rows they point at. A value that does
not fit its field raises :class:`ChunkIdOverflowError`; nothing ever wraps.

The bit widths are part of every manifest (:meth:`ChunkIdCodec.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["DEFAULT_CODEC", "ChunkIdCodec", "ChunkIdOverflowError", "ChunkLocation"]


class ChunkIdOverflowError(UserError):
    """A dataset / file index / ordinal does not fit the codec's bit width."""


@dataclass(frozen=True, order=True)
class ChunkLocation:
    """Where a chunk lives: dataset number, input file index, ordinal (row) in that file."""

    dataset: int
    file_index: int
    ordinal: int


@dataclass(frozen=True)
class ChunkIdCodec:
    """Packs (dataset, file index, ordinal) into a non-negative int64 and back.

    Defaults: 8 dataset bits (256 datasets), 23 file bits (8.4M input files) and 32 ordinal
    bits (4.3B chunks per file: a 10 GB JSONL file of 64-token chunks has ~40M), so a
    1.35T-token corpus fits with room to spare.
    """

    dataset_bits: int = 8
    file_bits: int = 23
    ordinal_bits: int = 32

    def __post_init__(self) -> None:
        for name in ("dataset_bits", "file_bits", "ordinal_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        total = self.dataset_bits + self.file_bits + self.ordinal_bits
        if total > 63:
            raise ValueError(
                f"chunk id fields need {total} bits but an int64 id has 63 usable bits "
                f"(dataset {self.dataset_bits} + file {self.file_bits} + "
                f"ordinal {self.ordinal_bits})"
            )

    # Field limits (inclusive maxima).
    @property
    def max_dataset(self) -> int:
        return (1 << self.dataset_bits) - 1

    @property
    def max_file_index(self) -> int:
        return (1 << self.file_bits) - 1

    @property
    def max_ordinal(self) -> int:
        return (1 << self.ordinal_bits) - 1

    def _check(self, field: str, value: int, maximum: int, bits: int) -> None:
        if value < 0 or value > maximum:
            raise ChunkIdOverflowError(
                f"chunk id overflow: {field} {value} does not fit in {bits} bits "
                f"(allowed 0..{maximum}); choose wider bit widths for this corpus"
            )

    def encode(self, dataset: int, file_index: int, ordinal: int) -> int:
        """(dataset, file_index, ordinal) -> chunk id (a Python int in 0 .. 2**63-1)."""
        dataset, file_index, ordinal = int(dataset), int(file_index), int(ordinal)
        self._check("dataset", dataset, self.max_dataset, self.dataset_bits)
        self._check("file index", file_index, self.max_file_index, self.file_bits)
        self._check("ordinal", ordinal, self.max_ordinal, self.ordinal_bits)
        return (
            (dataset << (self.file_bits + self.ordinal_bits))
            | (file_index << self.ordinal_bits)
            | ordinal
        )

    def encode_many(self, dataset: int, file_index: int, ordinals: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`encode` for one file.

        ordinals: (N,) integer array -> (N,) int64 chunk ids.
        """
        ordinals = np.asarray(ordinals, dtype=np.int64)
        if ordinals.size:
            self._check("ordinal", int(ordinals.min()), self.max_ordinal, self.ordinal_bits)
            self._check("ordinal", int(ordinals.max()), self.max_ordinal, self.ordinal_bits)
        base = self.encode(dataset, file_index, 0)
        return ordinals + np.int64(base)

    def decode(self, chunk_id: int) -> ChunkLocation:
        """chunk id -> :class:`ChunkLocation`. Rejects ids this codec cannot have produced."""
        chunk_id = int(chunk_id)
        top = self.dataset_bits + self.file_bits + self.ordinal_bits
        if chunk_id < 0 or chunk_id >> top:
            raise ChunkIdOverflowError(
                f"{chunk_id} is not a chunk id of this codec (needs 0 <= id < 2**{top})"
            )
        return ChunkLocation(
            dataset=chunk_id >> (self.file_bits + self.ordinal_bits),
            file_index=(chunk_id >> self.ordinal_bits) & self.max_file_index,
            ordinal=chunk_id & self.max_ordinal,
        )

    def decode_many(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N,) int64 ids -> (datasets, file_indices, ordinals), each (N,) int64."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        top = self.dataset_bits + self.file_bits + self.ordinal_bits
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >> top):
            raise ChunkIdOverflowError(f"some ids are outside this codec's range 0..2**{top}-1")
        ordinals = ids & np.int64(self.max_ordinal)
        files = (ids >> np.int64(self.ordinal_bits)) & np.int64(self.max_file_index)
        datasets = ids >> np.int64(self.file_bits + self.ordinal_bits)
        return datasets, files, ordinals

    def to_dict(self) -> dict[str, int]:
        return {
            "dataset_bits": self.dataset_bits,
            "file_bits": self.file_bits,
            "ordinal_bits": self.ordinal_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkIdCodec:
        return cls(
            dataset_bits=int(data["dataset_bits"]),
            file_bits=int(data["file_bits"]),
            ordinal_bits=int(data["ordinal_bits"]),
        )


DEFAULT_CODEC = ChunkIdCodec()
