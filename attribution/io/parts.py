"""Writing a stage's per-file outputs: Parquet parts in row groups, atomically; the
run-record checks shared by every stage's ``--resume``."""

from __future__ import annotations

import contextlib
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from tda.attribution.io.fs import AtomicFile
from tda.schemas.errors import UserError

__all__ = [
    "ROW_GROUP_ROWS",
    "PartWriter",
    "StageError",
    "check_resumable",
    "nonempty",
    "read_manifest",
    "remove_temp_files",
]

# Rows per Parquet row group; later stages read single rows by (file, ordinal).
ROW_GROUP_ROWS = 8192


class StageError(UserError):
    """The build root cannot take this run (one line naming the fix)."""


def read_manifest(fs, path: str, parse, command: str, error: type[Exception]):
    """A stage's manifest -> (parsed, sha256 of its bytes), or one line naming the fix:
    missing means the stage (``command``) has not run or not finished (manifests are
    written last); unreadable means another kind or version."""
    from tda.schemas import ManifestError

    if not fs.exists(path):
        raise error(
            f"{path} not found: run `{command}` into this root first (or let it finish: "
            f"the manifest is written last)"
        )
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        return parse(data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    except ManifestError as exc:
        raise error(f"{path}: {exc}") from None


def nonempty(fs, path: str) -> bool:
    return fs.exists(path) and bool(fs.ls(path))


def check_resumable(new: dict, old: dict, where: str, error: type[StageError]) -> None:
    """Refuse ``--resume`` when the recorded run differs from this one (names the keys)."""
    differing = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k))
    if differing:
        raise error(
            f"--resume needs the same inputs and settings as the run in {where}; "
            f"these differ: {', '.join(differing)} (use --overwrite to start over)"
        )


def remove_temp_files(fs, folders) -> None:
    """Delete what a killed run left half-written (its ``_tmp-`` files)."""
    for folder in folders:
        if fs.exists(folder):
            for path in fs.glob(f"{folder}/_tmp-*"):
                fs.rm(path)


def parquet_write_options(schema: pa.Schema, raw_columns: tuple[str, ...] = ()) -> dict:
    """``pq.ParquetWriter`` options: zstd with dictionaries, except ``raw_columns``, which
    are stored plain (no compression, dictionary or statistics) for the fastest decode:
    the embeddings' float16 vectors barely compress (~10%) and are read whole."""
    if not raw_columns:
        return {"compression": "zstd", "use_dictionary": True}
    rest = [name for name in schema.names if name not in raw_columns]
    return {
        "compression": {name: "none" if name in raw_columns else "zstd" for name in schema.names},
        "use_dictionary": rest,
        "write_statistics": rest,
    }


class PartWriter:
    """One Parquet part written through an :class:`AtomicFile`, in row groups of
    ROW_GROUP_ROWS rows. With ``keep_empty=False`` a part without rows is not created
    (dead letters); chunk parts always exist, one per input file."""

    def __init__(
        self,
        fs,
        path: str,
        schema: pa.Schema,
        keep_empty: bool,
        raw_columns: tuple[str, ...] = (),
    ) -> None:
        self.fs, self.path, self.schema, self.keep_empty = fs, path, schema, keep_empty
        self.raw_columns = raw_columns
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._file: AtomicFile | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        cut = table.num_rows if final else (table.num_rows // ROW_GROUP_ROWS) * ROW_GROUP_ROWS
        self._open()
        self._writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(cut)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _open(self) -> None:
        if self._writer is None:
            self._file = AtomicFile(self.fs, self.path)
            self._writer = pq.ParquetWriter(
                self._file.file,
                self.schema,
                **parquet_write_options(self.schema, self.raw_columns),
            )

    def commit(self) -> None:
        """Write what is buffered and move the part into place (no file if no rows)."""
        if self.keep_empty:
            self._open()  # a part with no row groups still carries the schema
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._file.commit()
        elif self.fs.exists(self.path):  # left by an earlier run that was overwritten
            self.fs.rm(self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._file.abort()
