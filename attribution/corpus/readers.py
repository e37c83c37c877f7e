"""Corpus files in, documents (or dead letters) out, streamed: memory stays bounded by one
decompressed piece (1 MiB) plus one record (``--max-doc-bytes``), whatever the file size.

1. :func:`resolve_inputs` expands paths / URLs / globs / folders (any fsspec protocol) into
   the sorted list of files; a file's index is its position in that list.
2. :func:`iter_documents` reads one file and yields, in record order, a :class:`Document`
   for every usable record and a :class:`~tda.schemas.DeadLetter` for every other one, so
   ``records == documents + dead letters`` for each file.

Formats: JSONL (``.jsonl``/``.ndjson``, optionally ``.gz``/``.zst``/``.bz2``/``.xz``),
Parquet (``.parquet``/``.pq``), plain text (``.txt``/``.text``/``.md``, one document per
file or per line). Record indices: the 0-based line number (JSONL, text lines; blank lines
count and are dead-lettered as empty), the row number (Parquet), 0 (a text file).

Damaged files keep what they can: every record decoded before the damage is read as
usual, and the rest of the file is one ``unreadable_file`` dead letter naming the byte
offsets (:mod:`.streams` decodes compressed files so that nothing decoded is dropped);
a damaged Parquet row group is dead-lettered row by row and the next one is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tda.attribution.corpus.streams import (
    UNITS,
    Damaged,
    Line,
    Unreadable,
    iter_lines,
    iter_pieces,
)
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

log = logging.getLogger("tda")

# Parquet rows are read in batches of about this many bytes (at most 1024 rows).
PARQUET_BATCH_BYTES = 8 << 20
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


def _parquet_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    # ArrowInvalid is a ValueError; thrift and I/O failures come as OSError.
    return (OSError, EOFError, ValueError, pa.ArrowException)


def _raw_copy(data: Any) -> str:
    """Truncated copy of a bad record: bytes (undecodable bytes escaped), str, or a row."""
    if isinstance(data, bytes | bytearray):
        data = bytes(data[: RAW_COPY_CHARS * 4]).decode("utf-8", "backslashreplace")
    elif not isinstance(data, str):
        data = str(data)
    return data[:RAW_COPY_CHARS]


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

    def jsonl(self, lines: Iterator[Line]) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        read = self.read
        limit = f"line over --max-doc-bytes={read.max_doc_bytes}"
        for index, item in enumerate(lines):
            line, size = item.take(), item.size
            if item.too_large:
                yield self.dead(index, R.TOO_LARGE, limit, line, size)
                continue
            if not line or line.isspace():
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
            # From here on the parsed text is the record: drop the line's bytes before the
            # document is handed on (a long line would otherwise be held twice).
            head, line = line[: RAW_COPY_CHARS * 4], None
            if not isinstance(obj, dict):
                kind = type(obj).__name__
                yield self.dead(index, R.NOT_AN_OBJECT, f"JSON {kind}, not an object", head, size)
                continue
            source = get_field(obj, read.source_field) if read.source_field else None
            text, doc_id = get_field(obj, read.text_field), get_field(obj, read.id_field)
            obj = None
            yield self.record(index, text, doc_id, source, head, size)
            text = None  # not held while the next line is read

    def text_lines(self, lines: Iterator[Line]) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        for index, item in enumerate(lines):
            line, size = item.take(), item.size
            if item.too_large:
                detail = f"line over --max-doc-bytes={self.read.max_doc_bytes}"
                yield self.dead(index, R.TOO_LARGE, detail, line, size)
                continue
            end = len(line) - 1 if line.endswith(b"\r") else len(line)
            try:
                text = str(memoryview(line)[:end], "utf-8")  # no copy of the bytes
            except UnicodeDecodeError as exc:
                yield self.dead(index, R.INVALID_UTF8, f"line is not UTF-8: {exc}", line, size)
                continue
            head, line = line[: RAW_COPY_CHARS * 4], None
            yield self.record(index, text, MISSING, None, head, size)
            text = None  # not held while the next line is read

    def text_file(self, pieces: Iterator[tuple[bytes, int]]) -> Iterator[Document | DeadLetter]:
        R = DeadLetterReason
        limit = self.read.max_doc_bytes
        data = bytearray()
        try:
            for piece, _ in pieces:
                data += piece[: limit + 1 - len(data)]
                if len(data) > limit:
                    break
        except Damaged as exc:
            raise Unreadable(exc.detail, bytes(data[: RAW_COPY_CHARS * 4])) from exc
        if len(data) > limit:
            size = self.file.size_bytes if compression_of(self.file.url) is None else -1
            yield self.dead(0, R.TOO_LARGE, f"file over --max-doc-bytes={limit}", data, size)
            return
        size = len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield self.dead(0, R.INVALID_UTF8, f"file is not UTF-8: {exc}", data, size)
            return
        head, data = data[: RAW_COPY_CHARS * 4], None
        yield self.record(0, text, MISSING, None, head, size)

    def parquet(self, f) -> Iterator[Document | DeadLetter]:
        """Rows in order, row group by row group: a row group that fails to read is
        dead-lettered row by row (``unreadable_file``, the detail names the row group and
        the error) and the next one is read, so ``records`` is the file's row count
        whenever its footer is readable; an unreadable footer is one dead letter."""
        import pyarrow.parquet as pq

        read = self.read
        errors = _parquet_errors()
        try:
            # Page CRCs are checked where the writer stored them (pyarrow >= 13 can).
            pf = pq.ParquetFile(f, page_checksum_verification=True)
            meta = pf.metadata
            groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
            rows = [g.num_rows for g in groups]
        except errors as exc:
            raise Unreadable(f"not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
        if any(n < 0 for n in rows) or sum(rows) != meta.num_rows:
            raise Unreadable(
                f"damaged Parquet footer: its row groups hold {sum(rows)} rows, it says "
                f"{meta.num_rows}"
            )
        names = set(pf.schema_arrow.names)
        paths = [read.text_field, read.id_field] + (
            [read.source_field] if read.source_field else []
        )
        # A dotted path reads its top-level column; nested values are dicts after to_pylist().
        wanted = sorted({c for p in paths for c in (p, p.split(".", 1)[0]) if c in names})
        first = 0  # index of the row group's first row in the file
        for g, n in enumerate(rows):
            done = 0  # rows of this group handed on
            try:
                if not wanted:  # none of the fields exists: every row lacks its text
                    while done < n:
                        yield self.record(first + done, MISSING, MISSING, None, "", -1)
                        done += 1
                else:
                    # Rows per batch from the group's mean row size, so that a batch of
                    # long records stays near PARQUET_BATCH_BYTES.
                    mean = groups[g].total_byte_size / max(1, n)
                    size = max(1, min(1024, int(PARQUET_BATCH_BYTES // max(1.0, mean))))
                    batches = pf.iter_batches(
                        batch_size=size, row_groups=[g], columns=wanted, use_threads=False
                    )
                    for batch in batches:
                        for row in batch.to_pylist():
                            source = (
                                get_field(row, read.source_field) if read.source_field else None
                            )
                            yield self.record(
                                first + done,
                                get_field(row, read.text_field),
                                get_field(row, read.id_field),
                                source,
                                _LazyRow(row),
                                -1,
                            )
                            done += 1
                if done != n:
                    raise OSError(f"it decoded to {done} rows, its footer says {n}")
            except errors as exc:
                detail = (
                    f"row group {g} of {len(rows)} (rows {first}..{first + n - 1}) is "
                    f"unreadable: {type(exc).__name__}: {exc}"
                )
                log.warning("damaged input %s: %s", self.file.url, detail)
                for index in range(first + done, first + n):
                    yield self.dead(index, DeadLetterReason.UNREADABLE_FILE, detail, "", -1)
            first += n


class _LazyRow:
    """A Parquet row's copy for a dead letter, rendered only if one is written."""

    __slots__ = ("row",)

    def __init__(self, row: dict) -> None:
        self.row = row

    def __str__(self) -> str:
        return orjson.dumps(self.row, default=str, option=orjson.OPT_SORT_KEYS).decode()


def iter_documents(input_file: InputFile, read: ReadOptions) -> Iterator[Document | DeadLetter]:
    """Stream one file's records as Documents and DeadLetters, in record order.

    A damaged file keeps every record decoded before the damage: a decoding error, a
    compressed stream that ends early (truncation) or an I/O error ends the file with one
    ``unreadable_file`` dead letter at the index of the first record not read, whose
    detail gives the compressed and decompressed byte offsets (see :mod:`.streams`) and
    whose copy is the head of the unfinished record. Parquet: see :meth:`_Reader.parquet`.
    A file that cannot be opened is one such dead letter at record 0.
    """
    import fsspec

    reader = _Reader(input_file, read)
    codec = compression_of(input_file.url)
    unit = UNITS.get(codec or "", "file")
    last_index = -1
    try:
        # Decompression is ours (.streams), not fsspec's: see there why.
        with fsspec.open(input_file.url, "rb") as f:
            if input_file.format == "parquet":
                gen = reader.parquet(f)
            else:
                pieces = iter_pieces(f, codec, input_file.size_bytes)
                if input_file.format == "jsonl":
                    gen = reader.jsonl(iter_lines(pieces, read.max_doc_bytes, unit))
                elif read.text_unit == "line":
                    gen = reader.text_lines(iter_lines(pieces, read.max_doc_bytes, unit))
                else:
                    gen = reader.text_file(pieces)
            for item in gen:
                last_index = item.record_index
                yield item
                item = None  # a long document is not held while the next record is read
    except Unreadable as exc:
        log.warning(
            "damaged input %s: the %d records before record %d were read; the rest of the "
            "file is one unreadable_file dead letter: %s",
            input_file.url,
            last_index + 1,
            last_index + 1,
            exc.detail,
        )
        yield reader.dead(last_index + 1, DeadLetterReason.UNREADABLE_FILE, exc.detail, exc.raw, -1)
    except OSError as exc:  # opening or closing failed
        yield reader.dead(
            last_index + 1,
            DeadLetterReason.UNREADABLE_FILE,
            f"{type(exc).__name__}: {exc}",
            "",
            -1,
        )
