"""Long texts are tokenized in pieces (bounded memory) with exactly the whole text's tokens.

The pieces are cut before a space that follows a non-space character, and only for
tokenizers whose pre-tokenizer never joins the two sides of such a place; every test
compares the pieces with the whole text encoded in one call.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from tda.attribution.corpus import tokenizer as tok_module
from tda.attribution.corpus.tokenizer import (
    HFTokenizer,
    TiktokenTokenizer,
    cut_points,
    load_tokenizer,
)
from tests.helpers import doc_topics

GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ODD = [
    "héllo wörld ",
    "日本語のテキスト。 ",
    " 🙂🙃 ",
    "  \t spaces  ",
    "a\u00a0b ",
    "x\u3000y ",
    "\r\n",
    "don't  ",
    "123 4567 ",
    "e\u0301 ",
    "\x1f ",
    " ",
]


@pytest.fixture
def small_pieces(monkeypatch):
    """Piece sizes small enough that a test text of ~50k characters is cut many times."""
    monkeypatch.setattr(tok_module, "LONG_TEXT_CHARS", 1000)
    monkeypatch.setattr(tok_module, "PIECE_CHARS", 300)
    monkeypatch.setattr(tok_module, "GROUP_BYTES", 2000)


def mixed_text(n_chars: int, seed: int = 0) -> str:
    """Real documentation text cut at random places, mixed with non-ASCII, emoji,
    combining marks, odd whitespace and runs of spaces."""
    rng = random.Random(seed)
    texts = [t for _, t in doc_topics()]
    parts, size = [], 0
    while size < n_chars:
        if rng.random() < 0.3:
            part = rng.choice(ODD)
        else:
            text = rng.choice(texts)
            start = rng.randrange(max(1, len(text) - 500))
            part = text[start : start + rng.randrange(500)]
        parts.append(part)
        size += len(part)
    return "".join(parts)


def assert_same_tokens(tokenizer, texts: list[str]) -> None:
    pieces = tokenizer.encode_batch(texts)
    whole = tokenizer._encode(texts)
    assert len(pieces) == len(whole) == len(texts)
    for p, w in zip(pieces, whole, strict=True):
        assert p.n_tokens == w.n_tokens
        assert np.array_equal(p.ids, w.ids)
        everywhere = list(range(w.n_tokens))
        assert p.char_starts(everywhere) == w.char_starts(everywhere)


def tiny_tiktoken(pat: str = GPT2_PAT) -> TiktokenTokenizer:
    """Byte-level tiktoken encoding with a few hundred merges learned from the topics."""
    ranks = {bytes([i]): i for i in range(256)}
    text = " ".join(t for _, t in doc_topics()[:5]).encode()
    pairs: dict[bytes, int] = {}
    for a, b in itertools.pairwise(text):
        pair = bytes([a, b])
        pairs[pair] = pairs.get(pair, 0) + 1
    for pair, _ in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:200]:
        ranks[pair] = len(ranks)
    encoding = tiktoken.Encoding("tiny", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
    return TiktokenTokenizer(encoding, "tiktoken:tiny")


# --------------------------------------------------------------------------------------


def test_cut_points_fall_before_a_space_after_a_non_space():
    text = mixed_text(20_000)
    cuts = cut_points(text, 300)
    assert cuts[0] == 0 and cuts[-1] == len(text) and cuts == sorted(set(cuts))
    for c in cuts[1:-1]:
        assert text[c] == " " and not text[c - 1].isspace()
    assert len(cut_points("x" * 5000, 300)) == 2  # no place to cut: one piece


def test_hf_pieces_match_the_whole_text(tokenizer_dir, small_pieces):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.segmentable
    long = mixed_text(50_000)
    # Long and short texts in one batch: order kept, every text as if encoded whole.
    assert_same_tokens(tokenizer, ["short one", long, "", mixed_text(3_000, seed=1), "x"])
    assert type(tokenizer.encode_batch([long])[0]).__name__ == "_PiecewiseEncoded"


def test_tiktoken_pieces_match_the_whole_text(small_pieces):
    tokenizer = tiny_tiktoken()
    assert tokenizer.segmentable
    assert_same_tokens(tokenizer, [mixed_text(50_000, seed=2), "tail"])


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    st.lists(
        st.sampled_from([*ODD, "word", "Word", "x", "'s", "12", ".", ",", "\n", "  ", "\t"]),
        min_size=1,
        max_size=600,
    )
)
def test_pieces_match_the_whole_text_for_any_mix(tokens):
    """Random mixes of the hard cases (spaces next to punctuation, newlines, digits,
    contractions, wide characters), cut every ~20 characters."""
    text = "".join(tokens)
    originals = (tok_module.LONG_TEXT_CHARS, tok_module.PIECE_CHARS, tok_module.GROUP_BYTES)
    tok_module.LONG_TEXT_CHARS, tok_module.PIECE_CHARS, tok_module.GROUP_BYTES = 50, 20, 200
    try:
        assert_same_tokens(_TIKTOKEN, [text])
    finally:
        tok_module.LONG_TEXT_CHARS, tok_module.PIECE_CHARS, tok_module.GROUP_BYTES = originals


_TIKTOKEN = tiny_tiktoken()


def _hf_config(tokenizer_dir: str) -> dict:
    with open(f"{tokenizer_dir}/tokenizer.json") as f:
        return json.load(f)


@pytest.mark.parametrize(
    ("change", "segmentable"),
    [
        ("none", True),
        ("prefix_space", False),  # a space added before every piece
        ("nfkc", False),  # compatibility forms can rewrite a character into a space
        ("metaspace", False),
        ("added_token_with_space", False),
        ("split_unknown_regex", False),
        ("llama3_split", True),
    ],
)
def test_which_hf_tokenizers_are_cut(tokenizer_dir, small_pieces, change, segmentable):
    config = _hf_config(tokenizer_dir)
    if change == "prefix_space":
        config["pre_tokenizer"]["add_prefix_space"] = True
    elif change == "nfkc":
        config["normalizer"] = {"type": "NFKC"}
    elif change == "metaspace":
        config["pre_tokenizer"] = {
            "type": "Metaspace",
            "replacement": "▁",
            "prepend_scheme": "always",
            "split": True,
        }
    elif change == "added_token_with_space":
        config["added_tokens"] = [
            {
                "id": 5000,
                "content": "if x",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        ]
    elif change in ("split_unknown_regex", "llama3_split"):
        pattern = (
            r"\S+\s?"
            if change == "split_unknown_regex"
            else r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
            r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        config["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        }
    tokenizer = HFTokenizer(json.dumps(config).encode(), "test", "test")
    assert tokenizer.segmentable is segmentable
    # Cut or not, a long text gets the whole text's tokens.
    assert_same_tokens(tokenizer, [mixed_text(20_000, seed=3)])
