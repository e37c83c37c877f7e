"""Corpus files in, documents (or dead letters) out, streamed: memory stays bounded by one
block (256 KiB) plus one record (``--max-doc-bytes``), whatever the file size.

1. :func:`resolve_inputs` expands paths / URLs / globs / folders (any fsspec protocol) into
   the sorted list of files; a file's index is its position in that list.
2. :func:`iter_documents` reads one file and yields, in record order, a :class:`Document`
   for every usable record and a :class:`~tda.schemas.DeadLetter` for every other one, so
   ``records == documents + dead letters`` for each file.

Formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``/``.zst``/``.bz2``/``.xz``),
Parquet (``.parquet``/``.pq``), plain text (``.txt``/``.text``/``.md``, one document per
file or per line). Record indices: the 0-based line number (JSONL, text lines; blank lines
count and are dead-lettered as empty), the row number (Parquet), 0 (a text file).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tda.schemas import DeadLetter, DeadLetterReason, InputFile, ReadOptions
from tda.schemas.errors import UserError
from tda.schemas.records import RAW_COPY_CHARS

__all__ = [
    "MISSING",
    "Document",
    "InputError",
    "detect_format",
    "file_stem",
    "get_field",
    "iter_documents",
    "resolve_inputs",
    "set_field",
]

# Read size. An I/O or decompression error loses at most the records of the failing block.
BLOCK_BYTES = 256 << 10
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMAT_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
MISSING = object()


class InputError(UserError):
    """Inputs that cannot be used at all (missing path, empty glob, unknown format)."""


@dataclass(frozen=True)
class Document:
    """A usable record: its text and provenance inside its file."""

    record_index: int
    doc_id: str
    source: str
    text: str


# --------------------------------------------------------------------------------------
# Names and formats


def _split_suffixes(name: str) -> tuple[str, str | None, str | None]:
    """Name -> (stem, format suffix, compression): ``wiki.en.jsonl.gz`` -> ``("wiki.en",
    ".jsonl", "gzip")``."""
    base, compression = name, None
    for suffix, codec in COMPRESSIONS.items():
        if base.lower().endswith(suffix):
            base, compression = base[: -len(suffix)], codec
            break
    for suffix in FORMAT_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)], suffix, compression
    return base, None, compression


def file_stem(url: str) -> str:
    """The file's name without format and compression suffixes: the default source name."""
    return _split_suffixes(url.rstrip("/").rsplit("/", 1)[-1])[0]


def detect_format(url: str) -> str | None:
    """Format by extension: ``a/b.jsonl.zst`` -> ``"jsonl"``; None when it says nothing."""
    suffix = _split_suffixes(url.rsplit("/", 1)[-1])[1]
    return FORMAT_SUFFIXES.get(suffix.lower()) if suffix else None


def compression_of(url: str) -> str | None:
    return _split_suffixes(url.rsplit("/", 1)[-1])[2]


# --------------------------------------------------------------------------------------
# Input resolution


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _hidden(relative: str) -> bool:
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def resolve_inputs(patterns: Sequence[str], fmt: str = "auto") -> list[InputFile]:
    """Paths, URLs, globs or folders -> sorted, de-duplicated :class:`InputFile` list.

    Folders are searched recursively, skipping names that start with ``.`` or ``_``.
    Raises :class:`InputError` (one line) for a missing path, a glob or folder with no
    files, or a file whose format cannot be told from its extension under ``fmt="auto"``.
    """
    import fsspec

    if not patterns:
        raise InputError("give at least one INPUT path, URL or glob")
    found: dict[str, int] = {}
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")

        def url_of(p: str, fs=fs, local=local) -> str:
            return p if local else fs.unstrip_protocol(p)

        try:
            if _has_magic(path):
                hits = fs.glob(path, detail=True)
                # Like a shell, "*" does not match hidden names; "_"-names are bookkeeping.
                explicit = path.rstrip("/").rsplit("/", 1)[-1][:1] in (".", "_")
                files = {
                    p: info
                    for p, info in hits.items()
                    if info.get("type") == "file"
                    and (explicit or not p.rsplit("/", 1)[-1].startswith((".", "_")))
                }
                if not files:
                    raise InputError(f"no files match {pattern}")
            elif fs.isdir(path):
                root = path.rstrip("/")
                hits = fs.find(root, detail=True)
                files = {
                    p: info
                    for p, info in hits.items()
                    if info.get("type") == "file" and not _hidden(p[len(root) :])
                }
                if not files:
                    raise InputError(f"folder {pattern} holds no input files")
            elif fs.isfile(path):
                files = {path: fs.info(path)}
            else:
                raise InputError(f"input not found: {pattern}")
        except (FileNotFoundError, PermissionError) as exc:
            raise InputError(f"cannot read input {pattern}: {exc}") from None
        for p, info in files.items():
            found[url_of(p)] = int(info.get("size") or 0)

    inputs = []
    for index, url in enumerate(sorted(found)):
        file_format = detect_format(url) if fmt == "auto" else fmt
        if file_format is None:
            raise InputError(
                f"cannot tell the format of {url} from its extension; "
                f"pass --format jsonl|parquet|text or narrow the input glob"
            )
        if file_format == "parquet" and compression_of(url):
            raise InputError(f"{url}: compressed Parquet files are not supported; decompress it")
        inputs.append(InputFile(index=index, url=url, format=file_format, size_bytes=found[url]))
    return inputs


# --------------------------------------------------------------------------------------
# Reading


class _ReadFailure(Exception):
    """Wraps an I/O or decoding error raised while reading a file's bytes."""


def _read_errors() -> tuple[type[BaseException], ...]:
    import lzma

    import pyarrow as pa
    import zstandard

    return (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, pa.ArrowException)


def _raw_copy(data: Any) -> str:
    """Truncated copy of a bad record: bytes (undecodable bytes escaped), str, or a row."""
    if isinstance(data, bytes):
        data = data[: RAW_COPY_CHARS * 4].decode("utf-8", "backslashreplace")
    elif not isinstance(data, str):
        data = str(data)
    return data[:RAW_COPY_CHARS]


def _iter_lines(f, max_bytes: int, errors) -> Iterator[tuple[bytes, bool, int]]:
    """Binary file -> (line, too_large, size) per line; a too-large line comes back
    truncated (its head only) and the rest of it is skipped without being kept."""
    pending: list[bytes] = []  # pieces of the current (incomplete) line
    pending_size = 0
    skipping = False
    while True:
        try:
            block = f.read(BLOCK_BYTES)
        except errors as exc:
            raise _ReadFailure(f"{type(exc).__name__}: {exc}") from exc
        if not block:
            break
        pieces = block.split(b"\n")
        for piece in pieces[:-1]:
            if skipping:
                yield pending[0], True, pending_size + len(piece)
            else:
                line = b"".join(pending) + piece if pending else piece
                too_large = len(line) > max_bytes
                yield (line[: RAW_COPY_CHARS * 4] if too_large else line), too_large, len(line)
            pending, pending_size, skipping = [], 0, False
        tail = pieces[-1]
        if tail:
            pending_size += len(tail)
            if skipping:
                continue
            pending.append(tail)
            if pending_size > max_bytes:  # keep only the head of an oversized line
                pending, skipping = [b"".join(pending)[: RAW_COPY_CHARS * 4]], True
    if pending:
        if skipping:
            yield pending[0], True, pending_size
        else:
            line = b"".join(pending)
            yield line, len(line) > max_bytes, len(line)


def get_field(obj: dict, path: str) -> Any:
    """A record's field as every stage reads it: the literal key when the record has one
    (``"body.text"``), else a dotted path into nested objects (``"meta.source"``);
    ``MISSING`` if absent. The prune stage edits the field this function finds."""
    if path in obj:
        return obj[path]
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def set_field(obj: dict, path: str, value: Any) -> None:
    """Replace the field :func:`get_field` finds (it must exist) with ``value``."""
    if path in obj:
        obj[path] = value
        return
    keys = path.split(".")
    for key in keys[:-1]:
        obj = obj[key]
    obj[keys[-1]] = value


class _Reader:
    """Turns one file's records into Documents / DeadLetters (shared validation)."""

    def __init__(self, input_file: InputFile, read: ReadOptions) -> None:
        self.file = input_file
        self.read = read
        self.name = input_file.url.rstrip("/").rsplit("/", 1)[-1]
        self.default_source = read.source or file_stem(input_file.url)

    def dead(self, index: int, reason: DeadLetterReason, detail: str, raw, size: int):
        return DeadLetter(
            file_index=self.file.index,
            url=self.file.url,
            record_index=index,
            reason=reason,
            detail=detail.replace("\n", " ")[:500],
            raw=_raw_copy(raw),
            raw_bytes=size,
        )

    def doc_id(self, value: Any, index: int) -> str:
        if value is MISSING or value is None:
            return f"{self.name}#{index}"
        if isinstance(value, str):
            return value
        if isinstance(value, int | float | bool):
            return str(value)
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

    def record(self, index: int, text: Any, id_value: Any, source_value: Any, raw, size: int):
        """Validate one record's fields -> Document or DeadLetter."""
        R = DeadLetterReason
        field = self.read.text_field
        if text is MISSING or text is None:
            return self.dead(index, R.MISSING_TEXT, f"no {field!r} field", raw, size)
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                return self.dead(index, R.INVALID_UTF8, f"{field!r} is not UTF-8: {exc}", raw, size)
        if not isinstance(text, str):
            kind = type(text).__name__
            return self.dead(index, R.NON_STRING_TEXT, f"{field!r} is a {kind}", raw, size)
        if len(text) > self.read.max_doc_bytes // 4 and (
            len(text.encode("utf-8")) > self.read.max_doc_bytes
        ):
            return self.dead(
                index,
                R.TOO_LARGE,
                f"text over --max-doc-bytes={self.read.max_doc_bytes}",
                raw,
                size,
            )
        if not text or text.isspace():
            return self.dead(index, R.EMPTY_DOCUMENT, "empty or whitespace-only text", raw, size)
        if self.read.source_field is not None:
            source = source_value
            if not isinstance(source, str) or not source:
                return self.dead(
                    index,
                    R.MISSING_SOURCE,
                    f"--source-field {self.read.source_field!r} missing or not a string",
                    raw,
                    size,
                )
        else:
            source = self.default_source
        return Document(
            record_index=index, doc_id=self.doc_id(id_value, index), source=source, text=text
        )

    # ---- formats

    def jsonl(self, f, errors) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        read = self.read
        for index, (line, too_large, size) in enumerate(_iter_lines(f, read.max_doc_bytes, errors)):
            if too_large:
                yield self.dead(
                    index,
                    R.TOO_LARGE,
                    f"line over --max-doc-bytes={read.max_doc_bytes}",
                    line,
                    size,
                )
                continue
            if not line.strip():
                yield self.dead(index, R.EMPTY_DOCUMENT, "blank line", line, size)
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as uexc:
                    yield self.dead(index, R.INVALID_UTF8, f"line is not UTF-8: {uexc}", line, size)
                else:
                    yield self.dead(index, R.MALFORMED_JSON, str(exc), line, size)
                continue
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                yield self.dead(index, R.NOT_AN_OBJECT, f"JSON {kind}, not an object", line, size)
                continue
            source = get_field(obj, read.source_field) if read.source_field else None
            yield self.record(
                index,
                get_field(obj, read.text_field),
                get_field(obj, read.id_field),
                source,
                line,
                size,
            )

    def text_lines(self, f, errors) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        for index, (line, too_large, size) in enumerate(
            _iter_lines(f, self.read.max_doc_bytes, errors)
        ):
            if too_large:
                detail = f"line over --max-doc-bytes={self.read.max_doc_bytes}"
                yield self.dead(index, R.TOO_LARGE, detail, line, size)
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield self.dead(index, R.INVALID_UTF8, f"line is not UTF-8: {exc}", line, size)
                continue
            yield self.record(index, text, MISSING, None, line, size)

    def text_file(self, f, errors) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        limit = self.read.max_doc_bytes
        try:
            data = f.read(limit + 1)
        except errors as exc:
            raise _ReadFailure(f"{type(exc).__name__}: {exc}") from exc
        if len(data) > limit:
            size = self.file.size_bytes if compression_of(self.file.url) is None else -1
            yield self.dead(0, R.TOO_LARGE, f"file over --max-doc-bytes={limit}", data, size)
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield self.dead(0, R.INVALID_UTF8, f"file is not UTF-8: {exc}", data, len(data))
            return
        yield self.record(0, text, MISSING, None, data, len(data))

    def parquet(self, f, errors) -> Iterator[Document | DeadLetter]:
        import pyarrow.parquet as pq

        read = self.read
        try:
            pf = pq.ParquetFile(f)
        except errors as exc:
            raise _ReadFailure(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
        names = set(pf.schema_arrow.names)
        paths = [read.text_field, read.id_field] + (
            [read.source_field] if read.source_field else []
        )
        # A dotted path reads its top-level column; nested values are dicts after to_pylist().
        wanted = sorted({c for p in paths for c in (p, p.split(".", 1)[0]) if c in names})
        batches = pf.iter_batches(batch_size=1024, columns=wanted) if wanted else None
        if batches is None:  # none of the fields exists: every row lacks its text
            for index in range(pf.metadata.num_rows):
                yield self.record(index, MISSING, MISSING, None, "", -1)
            return
        index = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except errors as exc:
                raise _ReadFailure(f"{type(exc).__name__}: {exc}") from exc
            for row in batch.to_pylist():
                source = get_field(row, read.source_field) if read.source_field else None
                yield self.record(
                    index,
                    get_field(row, read.text_field),
                    get_field(row, read.id_field),
                    source,
                    _LazyRow(row),
                    -1,
                )
                index += 1


class _LazyRow:
    """A Parquet row's copy for a dead letter, rendered only if one is written."""

    __slots__ = ("row",)

    def __init__(self, row: dict) -> None:
        self.row = row

    def __str__(self) -> str:
        return orjson.dumps(self.row, default=str, option=orjson.OPT_SORT_KEYS).decode()


def iter_documents(input_file: InputFile, read: ReadOptions) -> Iterator[Document | DeadLetter]:
    """Stream one file's records as Documents and DeadLetters, in record order.

    An I/O or decompression error ends the file with one ``unreadable_file`` dead letter at
    the index of the first record that could not be read; what was read before is kept.
    """
    import fsspec

    reader = _Reader(input_file, read)
    errors = _read_errors()
    last_index = -1
    try:
        with fsspec.open(input_file.url, "rb", compression=compression_of(input_file.url)) as f:
            if input_file.format == "jsonl":
                gen = reader.jsonl(f, errors)
            elif input_file.format == "parquet":
                gen = reader.parquet(f, errors)
            elif read.text_unit == "line":
                gen = reader.text_lines(f, errors)
            else:
                gen = reader.text_file(f, errors)
            for item in gen:
                last_index = item.record_index
                yield item
    except _ReadFailure as exc:
        yield reader.dead(last_index + 1, DeadLetterReason.UNREADABLE_FILE, str(exc), "", -1)
    except errors as exc:  # opening failed, or a decompressor failed at close
        yield reader.dead(
            last_index + 1,
            DeadLetterReason.UNREADABLE_FILE,
            f"{type(exc).__name__}: {exc}",
            "",
            -1,
        )
