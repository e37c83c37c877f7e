"""Tokenizers with character offsets, behind one small interface.

SPEC forms accepted by :func:`load_tokenizer`:

* ``PATH/tokenizer.json`` or a directory holding one (a Hugging Face *fast* tokenizer, or a
  model directory of ours); local paths or any fsspec URL (``gs://...``);
  ``hf:PATH`` and ``builtin:DIR`` spell the same thing explicitly.
* ``tiktoken:NAME`` (e.g. ``tiktoken:cl100k_base``, Steerling's base vocabulary): only if
  tiktoken's BPE file is already cached locally; nothing is downloaded.

Offsets: :meth:`Encoded.char_starts` maps token positions to the index of the first
character of that token in the document text. Byte-level tokenizers can split one
multi-byte character over two tokens; the character then counts as starting the *later*
token, so a chunk boundary never cuts a character (README, "Chunk boundaries").

Long texts, bounded memory: a Hugging Face encoding holds ~350 bytes per token (token
strings, offsets, masks) and encoding a text takes ~160 bytes per character at its peak,
so a 16 MiB record would need ~2.6 GB. A text longer than ``LONG_TEXT_CHARS`` is therefore
tokenized in pieces of about ``PIECE_CHARS`` characters, ``GROUP_BYTES`` of UTF-8 at a
time, and kept as two arrays (ids: uint16 or int32, character starts: int32): 6 or 8
bytes per token. This gives exactly
the tokens of the whole text when the tokenizer is *segmentable*: its pre-tokenizer is a
regex under which no pre-token holds a non-space character followed by a space (GPT-2,
r50k, cl100k, Llama 3, o200k patterns; HF ``Whitespace``), nothing before it rewrites the
text across characters (no normalizer, or NFC / NFD / lowercase), no added token spans
such a place, and BPE dropout is off. Pieces are then cut only before a space that follows
a non-space character, where every such tokenizer cuts anyway. Other tokenizers encode
long texts whole, as before (``tests/attribution/test_tokenizer.py`` checks the pieces
against the whole).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

from tda.schemas import TokenizerInfo
from tda.schemas.errors import UserError

__all__ = [
    "Encoded",
    "TextTokenizer",
    "TokenizerError",
    "load_tokenizer",
    "read_tokenizer_json",
    "train_bpe_tokenizer",
]


# Texts longer than this many characters are tokenized in pieces when the tokenizer is
# segmentable (module docstring); shorter ones in one call, as the Rust side likes best.
LONG_TEXT_CHARS = 1 << 18
PIECE_CHARS = 1 << 14  # a piece ends at the first cut point after this many characters
# UTF-8 bytes of pieces per tokenizer call (at most this many tokens for a byte-level
# tokenizer): bounds the encodings' working memory (~350 bytes per token) to ~45 MB.
GROUP_BYTES = 1 << 17

# Pre-tokenizer regexes under which no pre-token holds a non-space followed by a space.
SEGMENTABLE_PATTERNS = frozenset(
    {
        # GPT-2 (Hugging Face ByteLevel's built-in regex)
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        # tiktoken r50k / p50k
        r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
        # tiktoken cl100k_base
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
        r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        # cl100k_base as first published; Llama 3's tokenizer.json
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
        r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
        # tiktoken o200k_base
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
    }
)
# A place to cut: a space after a non-space character. Python's \s covers every Unicode
# White_Space character (and a few more), so its \S is never whitespace to the regexes above.
_CUT = re.compile(r"(?<=\S) ")


class TokenizerError(UserError):
    """The tokenizer SPEC cannot be loaded; the message is one line naming the fix."""


class Encoded(ABC):
    """One document's tokenization."""

    n_tokens: int

    @property
    @abstractmethod
    def ids(self) -> np.ndarray:
        """(n_tokens,) int64 token ids."""

    @abstractmethod
    def char_starts(self, positions: Sequence[int]) -> list[int]:
        """Token positions (each in 0..n_tokens-1) -> character index where each starts."""


class _PiecewiseEncoded(Encoded):
    """A long text's tokenization, kept as its pieces' arrays (never concatenated, which
    would hold them twice): 6-8 bytes per token."""

    __slots__ = ("_firsts", "_ids", "_starts", "n_tokens")

    def __init__(self, ids: list[np.ndarray], starts: list[np.ndarray]) -> None:
        self._ids = ids  # per piece: (n_piece,) uint16 / int32 token ids
        self._starts = starts  # per piece: (n_piece,) character starts in the whole text
        sizes = np.array([len(i) for i in ids], dtype=np.int64)
        self._firsts = np.cumsum(sizes) - sizes  # (P,) index of each piece's first token
        self.n_tokens = int(sizes.sum())

    @property
    def ids(self) -> np.ndarray:
        if not self._ids:
            return np.zeros(0, np.int64)
        return np.concatenate(self._ids).astype(np.int64)

    def char_starts(self, positions: Sequence[int]) -> list[int]:
        pos = np.asarray(positions, dtype=np.int64)
        piece = np.searchsorted(self._firsts, pos, side="right") - 1
        out = np.empty(len(pos), dtype=np.int64)
        for k in np.unique(piece).tolist():
            here = piece == k
            out[here] = self._starts[k][pos[here] - self._firsts[k]]
        return out.tolist()


def cut_points(text: str, piece_chars: int | None = None) -> list[int]:
    """``[0, c1, ..., len(text)]``: each inner ``c`` is a space that follows a non-space,
    the first such at least ``piece_chars`` (default ``PIECE_CHARS``) after the previous
    cut (a text without one stays whole)."""
    piece_chars = piece_chars or PIECE_CHARS
    cuts = [0]
    while True:
        found = _CUT.search(text, cuts[-1] + piece_chars)
        if found is None:
            break
        cuts.append(found.start())
    if cuts[-1] != len(text):
        cuts.append(len(text))
    return cuts


class TextTokenizer(ABC):
    """Encodes batches of documents (no special tokens added).

    ``segmentable``: long texts may be tokenized in pieces with the same result (module
    docstring); subclasses that can tell set it."""

    info: TokenizerInfo
    segmentable: bool = False

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        """len(texts) documents -> one :class:`Encoded` each, same order. A text longer
        than ``LONG_TEXT_CHARS`` is tokenized in pieces when the tokenizer is segmentable,
        so that memory stays 6-8 bytes per token plus a constant."""
        if not self.segmentable or all(len(t) <= LONG_TEXT_CHARS for t in texts):
            return self._encode(texts)
        out: list[Encoded | None] = [None] * len(texts)
        short = [i for i, t in enumerate(texts) if len(t) <= LONG_TEXT_CHARS]
        for i, enc in zip(short, self._encode([texts[i] for i in short]), strict=True):
            out[i] = enc
        for i, text in enumerate(texts):
            if out[i] is None:
                out[i] = self._encode_long(text)
        return out  # type: ignore[return-value]

    def _encode_long(self, text: str) -> _PiecewiseEncoded:
        """One long text, tokenized GROUP_BYTES of pieces at a time."""
        cuts = cut_points(text)
        id_type = np.uint16 if self.info.vocab_size <= 1 << 16 else np.int32
        start_type = np.int32 if len(text) < 2**31 else np.int64
        ids: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        group: list[int] = []  # indices of the pieces of the next call
        pieces: list[str] = []  # their texts
        budget = 0  # an upper bound on their UTF-8 bytes, hence on their tokens
        for k in range(len(cuts) - 1):
            pieces.append(text[cuts[k] : cuts[k + 1]])
            group.append(k)
            budget += len(pieces[-1]) * (1 if pieces[-1].isascii() else 4)
            if budget < GROUP_BYTES and k < len(cuts) - 2:
                continue
            for (piece_ids, piece_starts), j in zip(
                self._encode_arrays(pieces), group, strict=True
            ):
                ids.append(piece_ids.astype(id_type))
                starts.append((piece_starts + cuts[j]).astype(start_type))
            group, pieces, budget = [], [], 0
        return _PiecewiseEncoded(ids, starts)

    @abstractmethod
    def _encode(self, texts: Sequence[str]) -> list[Encoded]:
        """len(texts) documents -> one :class:`Encoded` each, same order, in one call."""

    def _encode_arrays(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Texts -> (ids, character start of every token) per text, each (n_tokens,)."""
        out = []
        for enc in self._encode(texts):
            positions = np.arange(enc.n_tokens)
            out.append((enc.ids, np.asarray(enc.char_starts(positions), dtype=np.int64)))
        return out

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (bytes that do not form whole characters become U+FFFD)."""


# --------------------------------------------------------------------------------------
# Hugging Face tokenizers


class _HFEncoded(Encoded):
    __slots__ = ("_enc", "n_tokens")

    def __init__(self, enc) -> None:
        self._enc = enc
        self.n_tokens = len(enc)

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self._enc.ids, dtype=np.int64)

    def char_starts(self, positions: Sequence[int]) -> list[int]:
        to_chars = self._enc.token_to_chars
        return [to_chars(int(p))[0] for p in positions]


_SAFE_NORMALIZERS = {"NFC", "NFD", "Lowercase"}


def _hf_segmentable(config: dict) -> bool:
    """Whether a tokenizer.json tokenizes a text cut before a space that follows a
    non-space exactly as the whole text (module docstring)."""
    model = config.get("model") or {}
    if model.get("dropout"):  # random merges: no two encodings agree anyway
        return False
    normalizer = config.get("normalizer")
    if normalizer is not None:
        steps = (
            normalizer.get("normalizers", [])
            if normalizer.get("type") == "Sequence"
            else [normalizer]
        )
        if any(step.get("type") not in _SAFE_NORMALIZERS for step in steps):
            return False
    for token in config.get("added_tokens") or []:
        content = token.get("content", "")
        if token.get("rstrip") or re.search(r"\S ", content):
            return False  # it could span a cut
    pre = config.get("pre_tokenizer")
    if pre is None:
        return False
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    split_by_regex = False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                return False  # a space added before every piece
            split_by_regex |= step.get("use_regex", True)
        elif kind == "Split":
            pattern = (step.get("pattern") or {}).get("Regex")
            if pattern not in SEGMENTABLE_PATTERNS or step.get("invert"):
                return False
            split_by_regex = True
        elif kind in ("Whitespace", "WhitespaceSplit"):
            split_by_regex = True
        else:
            return False
    return split_by_regex


class HFTokenizer(TextTokenizer):
    """A Hugging Face fast tokenizer loaded from ``tokenizer.json`` bytes."""

    def __init__(self, data: bytes, spec: str, name: str) -> None:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # the Rust loader raises a bare Exception
            raise TokenizerError(f"{spec} is not a valid tokenizer.json: {exc}") from exc
        # Chunks must cover whole documents: never truncate or pad.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.segmentable = _hf_segmentable(json.loads(data))
        self.info = TokenizerInfo(
            spec=spec,
            kind="huggingface",
            name=name,
            fingerprint="sha256:" + hashlib.sha256(data).hexdigest(),
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
        )

    def _encode(self, texts: Sequence[str]) -> list[Encoded]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [_HFEncoded(e) for e in encs]

    def _encode_arrays(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for enc in self._tok.encode_batch(list(texts), add_special_tokens=False):
            n = len(enc)
            ids = np.fromiter(enc.ids, dtype=np.int64, count=n)
            # offsets[i][0] is what token_to_chars(i)[0] gives (_HFEncoded.char_starts).
            starts = np.fromiter((o[0] for o in enc.offsets), dtype=np.int64, count=n)
            out.append((ids, starts))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


# --------------------------------------------------------------------------------------
# tiktoken


class _TiktokenEncoded(Encoded):
    __slots__ = ("_byte_starts", "_ids", "_text", "n_tokens")

    def __init__(self, ids: list[int], text: str, token_bytes: np.ndarray) -> None:
        self._ids = np.asarray(ids, dtype=np.int64)
        self._text = text
        self.n_tokens = len(ids)
        lengths = token_bytes[self._ids] if self.n_tokens else np.zeros(0, np.int64)
        self._byte_starts = np.cumsum(lengths) - lengths  # (n_tokens,) byte offset of each

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def char_starts(self, positions: Sequence[int]) -> list[int]:
        byte_pos = self._byte_starts[np.asarray(positions, dtype=np.int64)]
        if self._text.isascii():
            return byte_pos.tolist()
        # UTF-8 length of every character from its code point, then the character that
        # holds each byte offset (a token starting mid-character maps to that character).
        cps = np.frombuffer(self._text.encode("utf-32-le"), dtype=np.uint32)
        lens = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
        char_byte_starts = np.cumsum(lens) - lens
        return (np.searchsorted(char_byte_starts, byte_pos, side="right") - 1).tolist()


class TiktokenTokenizer(TextTokenizer):
    """A tiktoken encoding (``encode_ordinary``: special-token text is treated as text)."""

    def __init__(self, encoding, spec: str) -> None:
        self._enc = encoding
        values = encoding.token_byte_values()  # mergeable tokens, by rank
        lengths = np.zeros(encoding.n_vocab, dtype=np.int64)
        digest = hashlib.sha256()
        digest.update(encoding._pat_str.encode())
        digest.update(json.dumps(encoding._special_tokens, sort_keys=True).encode())
        for value in values:
            lengths[encoding.encode_single_token(value)] = len(value)
            digest.update(base64.b64encode(value) + b"\n")
        self._token_bytes = lengths
        self._threads = max(1, os.cpu_count() or 1)
        self.segmentable = encoding._pat_str in SEGMENTABLE_PATTERNS
        self.info = TokenizerInfo(
            spec=spec,
            kind="tiktoken",
            name=encoding.name,
            fingerprint="sha256:" + digest.hexdigest(),
            vocab_size=encoding.n_vocab,
        )

    def _encode(self, texts: Sequence[str]) -> list[Encoded]:
        batch = self._enc.encode_ordinary_batch(list(texts), num_threads=self._threads)
        return [
            _TiktokenEncoded(ids, text, self._token_bytes)
            for ids, text in zip(batch, texts, strict=True)
        ]

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode([int(i) for i in ids], errors="replace")


@contextlib.contextmanager
def _no_tiktoken_download(name: str) -> Iterator[None]:
    """Make tiktoken fail fast (instead of fetching over the network) when not cached."""
    import tiktoken.load as tl

    original = tl.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" not in blobpath:
            return original(blobpath)
        cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get(
            "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")
        )
        path = os.path.join(cache_dir, hashlib.sha1(blobpath.encode()).hexdigest())
        raise TokenizerError(
            f"tiktoken:{name} is not cached on this machine and tda downloads nothing: "
            f"copy {blobpath.rsplit('/', 1)[-1]} to {path} (or set TIKTOKEN_CACHE_DIR)"
        )

    tl.read_file = refuse
    try:
        yield
    finally:
        tl.read_file = original


def _load_tiktoken(name: str, spec: str) -> TiktokenTokenizer:
    import tiktoken

    if name not in tiktoken.list_encoding_names():
        known = ", ".join(sorted(tiktoken.list_encoding_names()))
        raise TokenizerError(f"unknown tiktoken encoding {name!r} (known: {known})")
    with _no_tiktoken_download(name):
        encoding = tiktoken.get_encoding(name)
    return TiktokenTokenizer(encoding, spec)


# --------------------------------------------------------------------------------------
# Loading


def load_tokenizer(spec: str) -> TextTokenizer:
    """Tokenizer SPEC -> :class:`TextTokenizer` (see the module docstring for SPEC forms)."""
    if not spec:
        raise TokenizerError("--tokenizer SPEC is required")
    if spec.startswith("tiktoken:"):
        return _load_tiktoken(spec.split(":", 1)[1], spec)
    data, name = read_tokenizer_json(spec, tiktoken=True)
    return HFTokenizer(data, spec, name)


def read_tokenizer_json(spec: str, tiktoken: bool = False) -> tuple[bytes, str]:
    """A Hugging Face tokenizer SPEC (a tokenizer.json, a directory holding one, with an
    optional ``hf:`` / ``builtin:`` prefix) -> (the file's bytes, the tokenizer's name).
    Raises :class:`TokenizerError` for a tiktoken or steerling SPEC (no tokenizer.json);
    ``tiktoken``: a missing file's error names ``tiktoken:NAME`` among the forms (the
    caller takes that form too)."""
    if spec.startswith("tiktoken:"):
        raise TokenizerError(f"{spec} is a tiktoken encoding, not a tokenizer.json")
    if spec.startswith("steerling:"):
        raise TokenizerError(
            "steerling models use tiktoken cl100k_base plus specials: pass "
            "--tokenizer tiktoken:cl100k_base"
        )
    location = spec
    for prefix in ("hf:", "builtin:"):
        if spec.startswith(prefix):
            location = spec[len(prefix) :]
    import fsspec

    forms = "a tokenizer.json, a directory holding one" + (", or tiktoken:NAME" if tiktoken
                                                           else "")  # fmt: skip
    fs, path = fsspec.core.url_to_fs(location)
    try:
        if fs.isdir(path):
            path = path.rstrip("/") + "/tokenizer.json"
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer not found: {spec} (give {forms})") from None
    except OSError as exc:
        raise TokenizerError(f"cannot read tokenizer {spec}: {exc}") from exc
    parent = path.rstrip("/").rsplit("/", 2)
    name = parent[-2] if len(parent) >= 2 and parent[-1] == "tokenizer.json" else parent[-1]
    return data, name


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int, out_dir: str) -> str:
    """Train a byte-level BPE tokenizer (GPT-2 style: no unknown tokens, exact offsets).

    texts: documents to learn merges from. Writes ``out_dir/tokenizer.json``; returns its path.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 260:
        raise TokenizerError(
            f"--vocab-size must be at least 260 (256 bytes + merges), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tmp = path + ".tmp"
    tok.save(tmp)
    os.replace(tmp, path)
    return path
