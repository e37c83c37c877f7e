"""Tokenizer loading, fingerprints, character offsets (attribution/tokenizer.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, processors

from tda.attribution.corpus.tokenizer import (
    Encoded,
    HFTokenizer,
    TiktokenTokenizer,
    TokenizerError,
    load_tokenizer,
    train_bpe_tokenizer,
)
from tests.helpers import MULTILINGUAL

ASCII_TEXTS = [
    "the theory of the thing: they thought the rest was there.",
    "In 1984, 42 + 17 == 59; isn't it?  Double  spaces\tand\ttabs\nnew lines\n\n",
    "x",
    " the",
    "   ",
]

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Merges in rank order; each is reachable from earlier tokens. Some deliberately stop inside
# a multi-byte character ("Z" + first byte of "ü", the first two bytes of a CJK character or
# of an emoji) so that token boundaries fall mid-character.
TINY_MERGES = [
    b"th",
    b"the",
    b" the",
    b"Z\xc3",
    b"\xc3\xbc",
    b"\xe6\x9d",
    b"in",
    b" m",
    b"\xf0\x9f",
    b"er",
    b" a",
    b" an",
    b" and",
    b"\xd0\xb8",
]


def tiny_encoding(name: str = "tiny", merges: list[bytes] = TINY_MERGES) -> tiktoken.Encoding:
    ranks = {bytes([b]): b for b in range(256)}
    for token in merges:
        ranks[token] = len(ranks)
    return tiktoken.Encoding(name, pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="module")
def tiny() -> tiktoken.Encoding:
    return tiny_encoding()


def oracle_char_starts(encoding: tiktoken.Encoding, text: str) -> tuple[list[int], int]:
    """Char index holding the first byte of every token, and how many tokens start mid-char.

    Computed from the tokens' bytes one by one, independently of the adapter.
    """
    byte_to_char: list[int] = []
    for index, char in enumerate(text):
        byte_to_char.extend([index] * len(char.encode("utf-8")))
    starts, offset, mid = [], 0, 0
    for token in encoding.encode_ordinary(text):
        starts.append(byte_to_char[offset])
        if offset and byte_to_char[offset - 1] == byte_to_char[offset]:
            mid += 1
        offset += len(encoding.decode_single_token_bytes(token))
    assert offset == len(byte_to_char)
    return starts, mid


# ---------------------------------------------------------------------------------------
# Loading Hugging Face tokenizers


def _file(tokenizer_dir: str) -> str:
    return os.path.join(tokenizer_dir, "tokenizer.json")


def _fingerprint(tokenizer_dir: str) -> str:
    return "sha256:" + hashlib.sha256(Path(_file(tokenizer_dir)).read_bytes()).hexdigest()


def test_load_from_file(tokenizer_dir):
    spec = _file(tokenizer_dir)
    tok = load_tokenizer(spec)
    assert isinstance(tok, HFTokenizer)
    assert tok.info.spec == spec
    assert tok.info.kind == "huggingface"
    assert tok.info.name == os.path.basename(tokenizer_dir)
    assert tok.info.vocab_size == 1000
    assert tok.info.fingerprint == _fingerprint(tokenizer_dir)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", tok.info.fingerprint)


@pytest.mark.parametrize(
    "make_spec",
    [
        lambda d: d,
        lambda d: d + "/",
        lambda d: "hf:" + d,
        lambda d: "hf:" + d + "/tokenizer.json",
        lambda d: "builtin:" + d,
        lambda d: "builtin:" + d + "/tokenizer.json",
        lambda d: "file://" + d + "/tokenizer.json",
    ],
    ids=["dir", "dir-slash", "hf-dir", "hf-file", "builtin-dir", "builtin-file", "file-url"],
)
def test_load_spec_forms(tokenizer_dir, make_spec, real_docs):
    spec = make_spec(tokenizer_dir)
    tok = load_tokenizer(spec)
    assert tok.info.spec == spec
    assert tok.info.name == os.path.basename(tokenizer_dir)
    assert tok.info.fingerprint == _fingerprint(tokenizer_dir)
    reference = load_tokenizer(_file(tokenizer_dir))
    text = real_docs[0][1]
    assert np.array_equal(tok.encode_batch([text])[0].ids, reference.encode_batch([text])[0].ids)


def test_fingerprint_is_stable_and_content_based(tokenizer_dir, tmp_path):
    a = load_tokenizer(_file(tokenizer_dir)).info.fingerprint
    b = load_tokenizer(tokenizer_dir).info.fingerprint
    assert a == b == _fingerprint(tokenizer_dir)
    # Same bytes elsewhere: same fingerprint. One byte more: another one.
    data = Path(_file(tokenizer_dir)).read_bytes()
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "tokenizer.json").write_bytes(data)
    assert load_tokenizer(str(tmp_path / "copy")).info.fingerprint == a
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenizer.json").write_bytes(data + b"\n")
    assert load_tokenizer(str(tmp_path / "other")).info.fingerprint != a


def test_load_from_memory_fsspec(tokenizer_dir, real_docs):
    fs = fsspec.filesystem("memory")
    root = f"/tda-test-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/mytok/tokenizer.json", Path(_file(tokenizer_dir)).read_bytes())
    try:
        by_file = load_tokenizer(f"memory://{root}/mytok/tokenizer.json")
        by_dir = load_tokenizer(f"memory://{root}/mytok")
        hf_prefixed = load_tokenizer(f"hf:memory://{root}/mytok")
    finally:
        fs.rm(root, recursive=True)
    reference = load_tokenizer(tokenizer_dir)
    text = real_docs[1][1]
    for tok in (by_file, by_dir, hf_prefixed):
        assert tok.info.name == "mytok"
        assert tok.info.fingerprint == _fingerprint(tokenizer_dir)
        assert tok.info.kind == "huggingface"
        assert np.array_equal(
            tok.encode_batch([text])[0].ids, reference.encode_batch([text])[0].ids
        )
    assert by_dir.info.spec == f"memory://{root}/mytok"


@pytest.mark.parametrize("prefix", ["", "hf:", "builtin:"])
def test_missing_path(tmp_path, prefix):
    for location in (str(tmp_path / "nope" / "tokenizer.json"), str(tmp_path / "nodir")):
        spec = prefix + location
        with pytest.raises(TokenizerError, match=f"tokenizer not found: {re.escape(spec)}"):
            load_tokenizer(spec)


def test_empty_directory(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer not found"):
        load_tokenizer(str(tmp_path))


def test_empty_spec():
    with pytest.raises(TokenizerError, match="--tokenizer SPEC is required"):
        load_tokenizer("")


@pytest.mark.parametrize(
    "content", [b'{"hello": "world"}', b"[1, 2, 3]", b"not json at all", b"\xff\xfe"]
)
def test_not_a_tokenizer(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError):
        load_tokenizer(str(path))
    if content.startswith(b"{"):
        with pytest.raises(TokenizerError, match=r"is not a valid tokenizer\.json"):
            load_tokenizer(str(tmp_path))


def test_steerling_spec_points_to_tiktoken():
    with pytest.raises(TokenizerError, match="tiktoken:cl100k_base"):
        load_tokenizer("steerling:x")


def test_unknown_tiktoken_lists_known_names():
    with pytest.raises(TokenizerError, match="unknown tiktoken encoding 'nope'") as err:
        load_tokenizer("tiktoken:nope")
    known = tiktoken.list_encoding_names()
    assert "cl100k_base" in known
    for name in known:
        assert name in str(err.value)


def test_tiktoken_not_cached_downloads_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    # A fresh registry: an encoding loaded earlier in this process must not answer instead.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    attempts: list[object] = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    original_read_file = tiktoken.load.read_file

    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    expected_path = os.path.join(str(cache), hashlib.sha1(url.encode()).hexdigest())
    with pytest.raises(TokenizerError) as err:
        load_tokenizer("tiktoken:cl100k_base")
    message = str(err.value)
    assert "not cached" in message
    assert expected_path in message
    assert "cl100k_base.tiktoken" in message
    assert attempts == []
    assert list(cache.iterdir()) == []
    assert tiktoken.load.read_file is original_read_file  # the guard is undone


# ---------------------------------------------------------------------------------------
# tiktoken adapter


def _tiny_tokenizer(encoding: tiktoken.Encoding) -> TiktokenTokenizer:
    return TiktokenTokenizer(encoding, f"tiktoken:{encoding.name}")


def test_tiny_encoding_splits_characters(tiny):
    # Guard for the tests below: the fixture really produces tokens that start mid-character.
    assert sum(oracle_char_starts(tiny, text)[1] for text in MULTILINGUAL) > 50
    assert tiny.encode_ordinary("Zürich")[:2] == [tiny.encode_single_token(b"Z\xc3"), 0xBC]
    assert tiny.encode_ordinary(" the")[0] == tiny.encode_single_token(b" the")


@pytest.mark.parametrize("text", MULTILINGUAL + ASCII_TEXTS)
def test_tiktoken_char_starts_match_oracle(tiny, text):
    tok = _tiny_tokenizer(tiny)
    (enc,) = tok.encode_batch([text])
    assert isinstance(enc, Encoded)
    expected_ids = tiny.encode_ordinary(text)
    assert enc.n_tokens == len(expected_ids)
    assert enc.ids.dtype == np.int64
    assert enc.ids.tolist() == expected_ids
    oracle, _ = oracle_char_starts(tiny, text)
    positions = list(range(enc.n_tokens))
    assert enc.char_starts(positions) == oracle
    # Any subset, in any order.
    assert enc.char_starts(positions[::-3]) == oracle[::-3]
    assert enc.char_starts([]) == []


def test_tiktoken_zurich_split_belongs_to_later_token(tiny):
    (enc,) = _tiny_tokenizer(tiny).encode_batch(["Zürich"])
    # Tokens: "Z\xc3" | "\xbc" | "r" | ...: the second token starts inside "ü" (char 1).
    assert enc.char_starts([0, 1, 2, 3]) == [0, 1, 2, 3]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_tiktoken_char_starts_property(tiny, texts):
    encs = _tiny_tokenizer(tiny).encode_batch(texts)
    assert len(encs) == len(texts)
    for text, enc in zip(texts, encs, strict=True):
        assert enc.ids.tolist() == tiny.encode_ordinary(text)
        assert enc.char_starts(range(enc.n_tokens)) == oracle_char_starts(tiny, text)[0]


def test_tiktoken_batch_order(tiny):
    texts = MULTILINGUAL + ASCII_TEXTS + [""]
    tok = _tiny_tokenizer(tiny)
    batch = tok.encode_batch(texts)
    assert [e.ids.tolist() for e in batch] == [tiny.encode_ordinary(t) for t in texts]
    assert [e.ids.tolist() for e in tok.encode_batch(texts[::-1])] == [
        e.ids.tolist() for e in batch[::-1]
    ]
    assert batch[-1].n_tokens == 0


def test_tiktoken_special_token_text_is_plain_text():
    ranks = {bytes([b]): b for b in range(256)}
    encoding = tiktoken.Encoding(
        "tiny-special",
        pat_str=GPT2_PAT,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 256},
    )
    (enc,) = _tiny_tokenizer(encoding).encode_batch(["a<|endoftext|>b"])
    assert 256 not in enc.ids.tolist()
    assert enc.n_tokens == len("a<|endoftext|>b")


def test_tiktoken_info(tiny):
    tok = _tiny_tokenizer(tiny)
    info = tok.info
    assert info.kind == "tiktoken"
    assert info.name == "tiny"
    assert info.spec == "tiktoken:tiny"
    assert info.vocab_size == 256 + len(TINY_MERGES) == tiny.n_vocab
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", info.fingerprint)
    # Stable for the same data, different for other merges.
    assert _tiny_tokenizer(tiny_encoding()).info.fingerprint == info.fingerprint
    other = _tiny_tokenizer(tiny_encoding(merges=TINY_MERGES[:-1]))
    assert other.info.fingerprint != info.fingerprint


# ---------------------------------------------------------------------------------------
# Hugging Face adapter


def test_hf_char_starts_match_offsets(tokenizer_dir, real_docs):
    tok = load_tokenizer(tokenizer_dir)
    raw = Tokenizer.from_file(_file(tokenizer_dir))
    texts = [text for _, text in real_docs]
    encs = tok.encode_batch(texts)
    split = 0
    for text, enc in zip(texts, encs, strict=True):
        reference = raw.encode(text, add_special_tokens=False)
        assert enc.n_tokens == len(reference.ids) > 0
        assert enc.ids.tolist() == reference.ids
        starts = enc.char_starts(range(enc.n_tokens))
        assert starts == [start for start, _ in reference.offsets]
        # Independent oracle: byte-level token strings have one character per byte.
        byte_to_char: list[int] = []
        for index, char in enumerate(text):
            byte_to_char.extend([index] * len(char.encode("utf-8")))
        offset, oracle = 0, []
        for token in reference.tokens:
            oracle.append(byte_to_char[offset])
            if offset and byte_to_char[offset - 1] == byte_to_char[offset]:
                split += 1
            offset += len(token)
        assert offset == len(byte_to_char)
        assert starts == oracle
    assert split > 0  # some byte-level tokens do split a character


def test_hf_encode_batch_order(tokenizer_dir, real_docs):
    tok = load_tokenizer(tokenizer_dir)
    texts = [text for _, text in real_docs[:20]] + MULTILINGUAL
    batch = tok.encode_batch(texts)
    assert len(batch) == len(texts)
    singles = [tok.encode_batch([t])[0].ids.tolist() for t in texts]
    assert [e.ids.tolist() for e in batch] == singles
    reverse = tok.encode_batch(texts[::-1])
    assert [e.ids.tolist() for e in reverse] == singles[::-1]
    assert tok.encode_batch([]) == []
    assert tok.encode_batch([""])[0].n_tokens == 0


def test_hf_adds_no_special_tokens_and_never_truncates(tokenizer_dir, tmp_path, real_docs):
    raw = Tokenizer.from_file(_file(tokenizer_dir))
    raw.add_special_tokens(["<s>", "</s>"])
    bos, eos = raw.token_to_id("<s>"), raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    raw.enable_truncation(max_length=8)
    raw.enable_padding(pad_id=eos, pad_token="</s>")
    out = tmp_path / "special"
    out.mkdir()
    raw.save(str(out / "tokenizer.json"))
    config = json.loads((out / "tokenizer.json").read_text())
    assert config["post_processor"] is not None and config["truncation"] is not None

    # Sanity: used as saved, this tokenizer adds, truncates and pads.
    saved = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert saved.encode("hello world").ids[0] == bos
    assert len(saved.encode(real_docs[0][1]).ids) == 8
    assert len(saved.encode_batch(["hi", real_docs[0][1]])[0].ids) == 8

    plain = Tokenizer.from_file(_file(tokenizer_dir))
    tok = load_tokenizer(str(out))
    assert tok.info.vocab_size == 1002
    texts = [real_docs[0][1], "hi", MULTILINGUAL[1]]
    for text, enc in zip(texts, tok.encode_batch(texts), strict=True):
        expected = plain.encode(text, add_special_tokens=False).ids
        assert enc.ids.tolist() == expected
        assert bos not in enc.ids.tolist() and eos not in enc.ids.tolist()
        assert enc.n_tokens == len(expected)
    assert tok.encode_batch(texts)[0].n_tokens > 400


# ---------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("vocab_size", [259, 256, 0, -1])
def test_train_rejects_small_vocab(tmp_path, vocab_size):
    message = rf"--vocab-size must be at least 260 .*, got {vocab_size}$"
    with pytest.raises(TokenizerError, match=message):
        train_bpe_tokenizer(iter(["some text"]), vocab_size, str(tmp_path / "tok"))
    assert not (tmp_path / "tok").exists()


def test_train_is_deterministic(tmp_path, real_docs, tokenizer_dir):
    texts = [text for _, text in real_docs] * 2  # the conftest fixture's recipe
    a = train_bpe_tokenizer(iter(texts), 1000, str(tmp_path / "a"))
    b = train_bpe_tokenizer(iter(texts), 1000, str(tmp_path / "nested" / "b"))
    assert a == str(tmp_path / "a" / "tokenizer.json")
    assert b == str(tmp_path / "nested" / "b" / "tokenizer.json")
    data = Path(a).read_bytes()
    assert Path(b).read_bytes() == data
    assert Path(_file(tokenizer_dir)).read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["tokenizer.json"]


def test_trained_tokenizer_is_lossless_byte_level(tmp_path):
    path = train_bpe_tokenizer(iter(MULTILINGUAL * 3), 300, str(tmp_path / "t"))
    raw = Tokenizer.from_file(path)
    assert raw.get_vocab_size() <= 300
    for text in [*MULTILINGUAL, "never seen: ☃ 𝄞 \u0000 ok"]:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert raw.decode(ids) == text
