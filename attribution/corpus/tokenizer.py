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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

from tda.schemas import TokenizerInfo
from tda.schemas.errors import UserError

__all__ = ["Encoded", "TextTokenizer", "TokenizerError", "load_tokenizer", "train_bpe_tokenizer"]


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


class TextTokenizer(ABC):
    """Encodes batches of documents (no special tokens added)."""

    info: TokenizerInfo

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        """len(texts) documents -> one :class:`Encoded` each, same order."""

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
        self.info = TokenizerInfo(
            spec=spec,
            kind="huggingface",
            name=name,
            fingerprint="sha256:" + hashlib.sha256(data).hexdigest(),
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
        )

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [_HFEncoded(e) for e in encs]

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
        self.info = TokenizerInfo(
            spec=spec,
            kind="tiktoken",
            name=encoding.name,
            fingerprint="sha256:" + digest.hexdigest(),
            vocab_size=encoding.n_vocab,
        )

    def encode_batch(self, texts: Sequence[str]) -> list[Encoded]:
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


def _read_tokenizer_json(location: str, spec: str) -> tuple[bytes, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    try:
        if fs.isdir(path):
            path = path.rstrip("/") + "/tokenizer.json"
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TokenizerError(
            f"tokenizer not found: {spec} (give a tokenizer.json, a directory holding one, "
            f"or tiktoken:NAME)"
        ) from None
    except OSError as exc:
        raise TokenizerError(f"cannot read tokenizer {spec}: {exc}") from exc
    parent = path.rstrip("/").rsplit("/", 2)
    name = parent[-2] if len(parent) >= 2 and parent[-1] == "tokenizer.json" else parent[-1]
    return data, name


def load_tokenizer(spec: str) -> TextTokenizer:
    """Tokenizer SPEC -> :class:`TextTokenizer` (see the module docstring for SPEC forms)."""
    if not spec:
        raise TokenizerError("--tokenizer SPEC is required")
    if spec.startswith("tiktoken:"):
        return _load_tiktoken(spec.split(":", 1)[1], spec)
    location = spec
    for prefix in ("hf:", "builtin:"):
        if spec.startswith(prefix):
            location = spec[len(prefix) :]
    if spec.startswith("steerling:"):
        raise TokenizerError(
            "steerling models use tiktoken cl100k_base plus specials: pass "
            "--tokenizer tiktoken:cl100k_base"
        )
    data, name = _read_tokenizer_json(location, spec)
    return HFTokenizer(data, spec, name)


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
