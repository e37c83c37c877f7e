"""A corpus file's bytes as a stream of pieces that keeps every byte the decoder produced
before any damage.

Why not ``fsspec.open(url, compression=...)``: its gzip / bz2 / xz readers sit behind a
buffered reader, and when the decoder raises in the middle of a ``read(n)`` the bytes it
had already decoded in that call are dropped with the exception: up to a whole read
block (256 KiB) of good records lost, and a small file lost whole.

:func:`iter_pieces` works like this:

1. Read the raw (compressed) file in ``RAW_BYTES`` blocks; feed the decoder at most
   ``FEED_BYTES`` of them at a time, asking for at most ``OUT_BYTES`` of output per call
   (gzip, bz2, xz; zstd is fed one block per call, its output at most 128 KiB), so that
   one call's output stays small and nothing is buffered here.
2. Yield every piece of output before feeding more input.
3. A decoder call that raises returns nothing of what it decoded before the error, so
   the failed member / stream is decoded again from its start (:func:`_replay`) and the
   failing slice fed one byte per call: the output before the error comes out too, and
   the compressed offset of the failure is exact.
4. On a decoder error, a stream that ends before its end marker, or an I/O error, raise
   :class:`Damaged` after the last good piece, with the compressed offset the decoder had
   been fed up to (the damage is at or before it) and the decompressed offset reached.

:func:`iter_lines` then cuts the pieces into lines (records) for the readers.

Concatenated gzip members, bz2 streams, xz streams and zstd frames are read one after
another, as the command-line tools do. An empty file is an empty stream.

What a decoder cannot see, it cannot report: a flipped bit is found where the codec
checks (a deflate / LZMA / zstd decoding error at once; gzip's CRC-32 at the end of a
member, bz2's CRC at the end of a ~900 kB block, xz's check at the end of a block, zstd's
optional frame checksum at the end of a frame), so bytes decoded between the flip and the
check come through before :class:`Damaged` says the file is damaged; a zstd frame written
without a checksum cannot reveal a flipped literal byte at all.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from tda.schemas.records import RAW_COPY_CHARS

__all__ = ["CODECS", "UNITS", "Damaged", "Line", "Unreadable", "iter_lines", "iter_pieces"]

RAW_BYTES = 1 << 20  # read size on the (possibly remote) raw file
FEED_BYTES = 16 << 10  # compressed bytes per decoder call: the precision of the offset
OUT_BYTES = 256 << 10  # decompressed bytes per decoder call (gzip, bz2, xz)
HEAD_BYTES = RAW_COPY_CHARS * 4  # kept of a line too large to use: a dead letter's copy


class Damaged(Exception):
    """The stream cannot go on: ``detail`` (one line) says why and where; every byte
    decoded before it has been yielded. ``decompressed_offset``: bytes yielded in all.
    ``unchecked_from``: for a decoding error (not a clean truncation), the decompressed
    offset where the failing member / stream / frame began: bytes from there on were
    not covered by a passing integrity check; None otherwise."""

    def __init__(
        self, detail: str, decompressed_offset: int, unchecked_from: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.decompressed_offset = decompressed_offset
        self.unchecked_from = unchecked_from


class _Zlib:
    """zlib's gzip decoder behind the interface of :class:`bz2.BZ2Decompressor`
    (``decompress(data, max_length)``, ``eof``, ``needs_input``, ``unused_data``)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header and trailer

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, max_length: int) -> bytes:
        tail = self._d.unconsumed_tail
        return self._d.decompress(tail + data if tail else data, max_length)

    def drain(self) -> bytes:
        """What is decoded but not yet returned, at the end of the input."""
        return self._d.flush()


class _Zstd:
    """zstandard's streaming decoder fed one block at a time, behind the same interface.

    A zstd block decodes whole or not at all, and a call that fails returns none of the
    output of the blocks it decoded before failing; so the input is cut at block
    boundaries, read from the frame format (RFC 8878: frame header, 3-byte block headers,
    optional 4-byte checksum; skippable frames whole), and each block is one call: its
    output (at most 128 KiB) comes back before the next block is tried. An error is
    held until the output before it has been returned.
    """

    def __init__(self) -> None:
        import zstandard

        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._buf = bytearray()  # input not yet fed
        self._state = "frame"  # what the front of _buf holds: frame | block | checksum | raw
        self._last = False  # the block being read is the frame's last
        self._checksum = False  # the frame ends with a checksum
        self._error: Exception | None = None

    @property
    def eof(self) -> bool:
        return self._d.eof and self._error is None

    @property
    def needs_input(self) -> bool:
        return self._error is None

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data + bytes(self._buf)

    def _unit(self) -> int:
        """Bytes of the next piece to feed (frame header, block, checksum); 0 = more input
        needed first. Malformed headers go to the decoder as they are, to fail there."""
        buf, state = self._buf, self._state
        if state == "raw":
            return len(buf)
        if state == "checksum":
            return 4 if len(buf) >= 4 else 0
        if state == "block":
            if len(buf) < 3:
                return 0
            header = int.from_bytes(buf[:3], "little")
            self._last, kind, size = bool(header & 1), (header >> 1) & 3, header >> 3
            need = 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
            return need if len(buf) >= need else 0
        if len(buf) < 8:
            return 0
        magic = int.from_bytes(buf[:4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame: size, then data
            need = 8 + int.from_bytes(buf[4:8], "little")
            return need if len(buf) >= need else 0
        if magic != 0xFD2FB528:
            self._state = "raw"
            return len(buf)
        descriptor = buf[4]
        single_segment = (descriptor >> 5) & 1
        self._checksum = bool((descriptor >> 2) & 1)
        content_size = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
        need = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size
        return need if len(buf) >= need else 0

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._error is not None:
            raise self._error
        self._buf += data
        out = []
        while not self._d.eof:
            state, need = self._state, self._unit()
            if not need:
                break
            unit = bytes(self._buf[:need])
            del self._buf[:need]
            try:
                out.append(self._d.decompress(unit))
            except Exception as exc:  # zstandard.ZstdError; raised at the next call
                self._error = exc
                break
            if state == "frame":
                magic = int.from_bytes(unit[:4], "little")
                self._state = "frame" if magic & 0xFFFFFFF0 == 0x184D2A50 else "block"
            elif state == "block" and self._last:
                self._state = "checksum" if self._checksum else "frame"
            elif state == "checksum":
                self._state = "frame"
        return b"".join(out)

    def drain(self) -> bytes:
        return b""


class _Stdlib:
    """bz2's and lzma's decoders already have the interface; they buffer nothing that
    ``decompress(b"", n)`` would not return, so there is nothing to drain."""

    def __init__(self, decoder) -> None:
        self._d = decoder
        self.decompress = decoder.decompress

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return self._d.needs_input

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def drain(self) -> bytes:
        return b""


CODECS: dict[str, Callable[[], Any]] = {
    "gzip": _Zlib,
    "zstd": _Zstd,
    "bz2": lambda: _Stdlib(bz2.BZ2Decompressor()),
    "xz": lambda: _Stdlib(lzma.LZMADecompressor()),  # FORMAT_AUTO: .xz and legacy .lzma
}
# What one decoder reads, and what its integrity check covers (named in messages).
UNITS = {"gzip": "gzip member", "zstd": "zstd frame", "bz2": "bz2 stream", "xz": "xz stream"}


def _errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def _raw_blocks(f, where: Callable[[], str]) -> Iterator[bytes]:
    """The raw file in RAW_BYTES blocks; an I/O error becomes :class:`Damaged`."""
    while True:
        try:
            block = f.read(RAW_BYTES)
        except OSError as exc:
            raise Damaged(f"read failed: {type(exc).__name__}: {exc} ({where()})", -1) from exc
        if not block:
            return
        yield block


def _total(size: int) -> str:
    return f" of {size}" if size > 0 else ""


def _feed(decoder, data: bytes) -> Iterator[bytes]:
    """``data`` into ``decoder``, and every piece of output it then has (OUT_BYTES each)."""
    yield decoder.decompress(data, OUT_BYTES)
    while not decoder.needs_input and not decoder.eof:
        yield decoder.decompress(b"", OUT_BYTES)


def _replay(f, make, start: int, stop: int, skip: int, errors) -> Iterator[bytes]:
    """Decode a failed member / stream again from its first compressed byte ``start``
    with a fresh decoder: up to the last good call in FEED_BYTES slices, then the failing
    slice byte by byte, up to ``stop``. Yields the output past the first ``skip`` bytes
    (those were yielded before); returns the number of compressed bytes fed when the
    decoder failed (None if it did not fail, or the file cannot seek).

    Why: a decoder call that raises returns none of the output it made before the
    error, and that can be many records (a slice of compressed text decodes to several
    times its size). Replaying costs one more decoding of the member, once, on damage."""
    try:
        f.seek(start)
    except (OSError, ValueError):
        return None
    decoder, produced, fed = make(), 0, start
    exact = max(start, stop - FEED_BYTES)  # from here on, one byte per call
    try:
        while fed < stop:
            block = f.read(min(RAW_BYTES, stop - fed))
            if not block:
                return None
            for i in range(0, len(block), FEED_BYTES):
                part = block[i : i + FEED_BYTES]
                cut = min(len(part), max(0, exact - fed))  # its bytes before `exact`
                steps = [part[:cut]] if cut else []
                steps += [part[k : k + 1] for k in range(cut, len(part))]
                for step in steps:
                    fed += len(step)
                    for piece in _feed(decoder, step):
                        if produced + len(piece) > skip:
                            yield piece[max(0, skip - produced) :]
                        produced += len(piece)
    except errors:
        return fed
    return None


def iter_pieces(f, codec: str | None, size: int = 0) -> Iterator[tuple[bytes, int]]:
    """An open binary file of the raw bytes -> its decompressed bytes as ``(piece,
    unit_start)`` pairs: pieces of at most ``max(RAW_BYTES, OUT_BYTES)`` bytes (zstd: one
    block, at most 128 KiB), each from one member / stream / frame, which began at
    decompressed offset ``unit_start``. ``codec``: None (no compression) or a key of
    :data:`CODECS`; ``size``: the raw file's size when known (> 0), named in messages.
    Raises :class:`Damaged` after the last good piece."""
    fed = out = 0  # compressed bytes given to the decoder, decompressed bytes yielded
    unit_start = unit_raw = 0  # where the current decoder began: decompressed, compressed

    def where() -> str:
        if codec is None:
            return f"at byte offset {out}{_total(size)}"
        return (
            f"compressed byte offset {fed}{_total(size)} (the damage is at or before it), "
            f"decompressed byte offset {out}"
        )

    if codec is None:
        try:
            for block in _raw_blocks(f, where):
                out += len(block)
                yield block, 0
        except Damaged as exc:
            raise Damaged(exc.detail, out) from exc
        return

    make = CODECS[codec]
    errors = _errors()
    decoder = make()
    started = False  # the current decoder has been given input
    block, pos = b"", 0  # raw input; block[pos:] is not fed yet
    blocks = _raw_blocks(f, where)
    try:
        while True:
            if decoder.eof:  # a member / stream / frame ended: another may follow
                fed -= len(decoder.unused_data)  # fed again to the next decoder
                block, pos = decoder.unused_data + block[pos:], 0
                if not block:
                    block = next(blocks, b"")
                    if not block:
                        return
                decoder, started, unit_start, unit_raw = make(), False, out, fed
            if decoder.needs_input:
                if pos >= len(block):
                    block, pos = next(blocks, b""), 0
                if not block:
                    tail = decoder.drain()
                    if tail:
                        out += len(tail)
                        yield tail, unit_start
                    if decoder.eof:  # the drain reached the end marker
                        continue
                    if started:
                        raise Damaged(
                            f"{codec} data ends before its end-of-stream marker (a truncated "
                            f"file?): {where()}",
                            out,
                        )
                    return
                feed, pos = block[pos : pos + FEED_BYTES], pos + FEED_BYTES
            else:
                feed = b""
            fed += len(feed)
            started = True
            try:
                piece = decoder.decompress(feed, OUT_BYTES)
            except errors as exc:
                if codec != "zstd":  # zstd's adapter already returned what it decoded
                    replay = _replay(f, make, unit_raw, fed, out - unit_start, errors)
                    while True:
                        try:
                            piece = next(replay)
                        except StopIteration as stop:
                            fed = stop.value or fed
                            break
                        out += len(piece)
                        yield piece, unit_start
                raise Damaged(
                    f"{codec} data damaged ({type(exc).__name__}: {exc}): {where()}",
                    out,
                    unit_start,
                ) from exc
            if piece:
                out += len(piece)
                yield piece, unit_start
    except Damaged as exc:
        if exc.decompressed_offset < 0:  # an I/O error (_raw_blocks): the bytes decoded
            raise Damaged(exc.detail, out) from exc  # so far came from good input
        raise


# --------------------------------------------------------------------------------------
# Lines


class Unreadable(Exception):
    """The rest of the file cannot be read: one ``unreadable_file`` dead letter at the
    first record not read, with ``detail``, the head of an unfinished record (``raw``)."""

    def __init__(self, detail: str, raw: Any = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.raw = raw


class Line:
    """One line handed from :func:`iter_lines` to a format reader. The reader takes
    ``data`` out (:meth:`take`), so that the generator's frame, suspended at its
    ``yield``, holds no second reference to a line of up to ``--max-doc-bytes``."""

    __slots__ = ("data", "size", "too_large")

    def __init__(self, data: bytes | bytearray, too_large: bool, size: int) -> None:
        self.data: bytes | bytearray | None = data
        self.too_large = too_large  # data is then the line's first HEAD_BYTES only
        self.size = size  # the whole line's size in bytes

    def take(self) -> bytes | bytearray:
        data, self.data = self.data, None
        if data is None:
            raise RuntimeError("a Line's data is taken once")
        return data


def iter_lines(
    pieces: Iterator[tuple[bytes, int]], max_bytes: int, unit: str = "stream"
) -> Iterator[Line]:
    """Decompressed pieces (:func:`iter_pieces`) -> one :class:`Line` per line (without
    its ``\\n``), the last one even without a final newline.

    A line longer than ``max_bytes`` comes back as its head only (the rest is skipped,
    never kept). A line spread over pieces grows in one bytearray (no join, no copy of
    its pieces). On :class:`Damaged` raises :class:`Unreadable` after the last complete
    line, with the unfinished line's head and, for a decoding error, the records that
    came from the member / stream / frame (``unit``) whose check failed.
    """
    index = 0  # index of the line being assembled
    unit_seen, unit_record = 0, 0  # start of the current member, first line it touches
    buf = bytearray()  # the current line's bytes (its head only when skipping)
    size = 0  # the current line's size so far
    skipping = False
    try:
        for piece, unit_start in pieces:
            if unit_start != unit_seen:
                unit_seen, unit_record = unit_start, index
            lines = piece.split(b"\n")
            del piece
            for part in lines[:-1]:
                size += len(part)
                too_large = size > max_bytes
                if skipping:
                    item = Line(bytes(buf), True, size)
                elif not buf:  # the whole line lies in this piece: no copy
                    item = Line(part[:HEAD_BYTES] if too_large else part, too_large, size)
                else:
                    buf += part
                    item = Line(bytes(buf[:HEAD_BYTES]) if too_large else buf, too_large, size)
                buf, size, skipping, index = bytearray(), 0, False, index + 1
                yield item
            tail = lines[-1]
            del lines
            if tail:
                size += len(tail)
                if not skipping:
                    buf += tail
                    if size > max_bytes:  # keep only the head of an oversized line
                        del buf[HEAD_BYTES:]
                        skipping = True
    except Damaged as exc:
        detail = exc.detail
        if size:
            detail += f"; the copy is the head of the {size} bytes decoded of record {index}"
        if exc.unchecked_from is not None and unit_record < index:
            detail += (
                f"; records {unit_record}..{index - 1} came from this {unit} (decompressed "
                f"byte offset {exc.unchecked_from} on) and may hold damaged bytes"
            )
        raise Unreadable(detail, bytes(buf[:HEAD_BYTES])) from exc
    if size:
        yield Line(bytes(buf) if skipping else buf, skipping, size)
