"""Writing a stage's per-file outputs: Parquet parts in row groups, atomically; the
run-record checks shared by every stage's ``--resume``."""

from __future__ import annotations

import contextlib
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq

from tda.attribution.io.fs import AtomicFile, HashingWriter
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
        stale = path.rsplit("/", 1)[0] + "/_stale.json"
        if fs.exists(stale):  # set aside by an --overwrite of the stage it was built from
            with fs.open(stale, "rb") as f:
                note = json.loads(f.read())
            raise error(f"{path} is stale ({note['why']}); rebuild it: {note['rebuild']}")
        raise error(
            f"{path} not found: run `{command}` into this root first (or let it finish: "
            f"the manifest is written last)"
        )
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        return parse(data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError:  # a damaged byte: the manifest's own check never ran
        raise error(
            f"{path}: manifest is not valid UTF-8 (corrupt); restore it from a backup or "
            f"rebuild this stage with --overwrite"
        ) from None
    except ManifestError as exc:
        raise error(f"{path}: {exc}") from None


def nonempty(fs, path: str) -> bool:
    return fs.exists(path) and bool(fs.ls(path))


def check_resumable(new: dict, old: dict, where: str, error: type[StageError]) -> None:
    """Refuse ``--resume`` when the recorded run (``old``, the run record's JSON) differs
    from this one (``new``): one line naming each differing setting by its dotted path with
    both values, e.g. ``settings.chunking.chunk_size: 64 (in the existing run) vs 128
    (now)``; nested dicts and equal-length lists are compared item by item."""
    differing = list(_differences(old, new, ""))
    if differing:
        shown = [
            f"{path}: {_shown(before)} (in the existing run) vs {_shown(after)} (now)"
            for path, before, after in differing[:_LISTED]
        ]
        if len(differing) > _LISTED:
            shown.append(f"and {len(differing) - _LISTED} more")
        raise error(
            f"--resume needs the same inputs and settings as the run in {where}; "
            f"these differ: {'; '.join(shown)} (use --overwrite to start over)"
        )


# A resume message lists at most this many differences, each value cut to _SHOWN_CHARS
# characters: a run over thousands of inputs must still give one readable line.
_LISTED = 8
_SHOWN_CHARS = 80
_ABSENT = object()


class _Items(int):
    """A list's length, shown as ``N items`` when two lists differ in length."""


def _differences(old, new, path: str):
    """(dotted path, old value, new value) of each leaf where ``old`` and ``new`` differ,
    in sorted key order; a key only one side has is ``_ABSENT`` on the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys(), key=str):
            inner = f"{path}.{key}" if path else str(key)
            yield from _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), inner)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _differences(a, b, f"{path}[{i}]")
    elif isinstance(old, list) and isinstance(new, list):
        yield path, _Items(len(old)), _Items(len(new))
    elif old != new:
        yield path, old, new


def _shown(value) -> str:
    """A run-record value as JSON (strings quoted, null for None), cut to _SHOWN_CHARS."""
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, _Items):
        return f"{int(value)} items"
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


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
    (dead letters); chunk parts always exist, one per input file.

    The bytes are hashed as they are written (:class:`HashingWriter`): after
    :meth:`commit`, ``written`` is the part's (hex sha256, size), or None when no file
    was created, for the stage's manifest."""

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
        self._hashing: HashingWriter | None = None
        self._writer: pq.ParquetWriter | None = None
        self.written: tuple[str, int] | None = None

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
            self._hashing = HashingWriter(self._file.file)
            self._writer = pq.ParquetWriter(
                self._hashing,
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
            self.written = self._hashing.close()
            self._file.commit()
        elif self.fs.exists(self.path):  # left by an earlier run that was overwritten
            self.fs.rm(self.path)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            with contextlib.suppress(Exception):
                self._hashing.close()  # stops its hashing thread
            self._file.abort()
