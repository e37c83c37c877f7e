"""AttributionRequest: one frozen, self-validating request with every default in one place."""

from __future__ import annotations

import dataclasses

import pytest

from tda.schemas import (
    DEFAULT_CANDIDATES,
    DEFAULT_QUERY_SPAN,
    DEFAULT_RERANK,
    IG_BASELINES,
    INPUT_ATTRIBUTIONS,
    MAX_OUTPUT_CHARS,
    QUERY_SPANS,
    RERANKS,
    AttributionRequest,
    ConfigError,
)


def test_defaults_live_on_the_request():
    r = AttributionRequest("The capital of", " France")
    assert AttributionRequest.defaults() == {
        "output": None,
        "generate": None,
        "temperature": 0.0,
        "top_p": None,
        "repetition_penalty": None,
        "seed": 0,
        "k": 10,
        "nprobe": None,
        "input_attribution": "grad",
        "ig_steps": 32,
        "ig_baseline": "mask",
        "top_concepts": 10,
        "chunk_size": None,
        "query_span": DEFAULT_QUERY_SPAN,
        "rerank": DEFAULT_RERANK,
        "candidates": DEFAULT_CANDIDATES,
        "channels": None,
    }
    assert (r.k, r.query_span, r.rerank) == (10, "output", "none")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.k = 3  # type: ignore[misc]


def test_token_ids_become_tuples_and_chunk_size_zero_means_the_index():
    r = AttributionRequest([1, 2, 3], output=range(4, 6), chunk_size=0)
    assert r.prompt == (1, 2, 3) and r.output == (4, 5) and r.chunk_size is None
    assert hash(r) == hash(AttributionRequest((1, 2, 3), output=(4, 5)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give an output"),
        ({"output": "x", "generate": 3}, "not both or neither"),
        ({"output": "x", "k": 0}, "-k must be at least 1, got 0"),
        ({"output": "x", "input_attribution": "shap"}, "--input-attribution must be one of"),
        ({"output": "x", "ig_steps": 0}, "--ig-steps must be at least 1"),
        ({"output": "x", "ig_baseline": "noise"}, "--ig-baseline must be one of mask, zero"),
        ({"output": "x", "top_concepts": 0}, "--top-concepts must be at least 1"),
        ({"output": "x" * (MAX_OUTPUT_CHARS + 1)}, "the limit is 200000"),
        ({"output": "x", "query_span": "prompt"}, "--query-span must be one of chunk, output"),
        (
            {"output": "x", "rerank": "bm25"},
            "--rerank must be one of none, concepts, span, evidence",
        ),
        ({"output": "x", "rerank": "span", "k": 10, "candidates": 5}, "at least -k"),
        ({"output": "x", "chunk_size": -1}, "--chunk-size must be at least 1, got -1"),
        ({"generate": 0}, "--generate must be at least 1, got 0"),
        ({"generate": 3, "seed": -1}, "--seed must be at least 0, got -1"),
        ({"generate": 3, "seed": 10**23}, "--seed must be at most 9223372036854775807"),
        ({"generate": 9000}, "--generate is limited to 8192 tokens"),
        ({"generate": 4, "temperature": -1.0}, "--temperature must be a finite number >= 0"),
        ({"generate": 4, "temperature": float("nan")}, "got nan"),
        ({"output": "x", "nprobe": 0}, "--nprobe must be at least 1, got 0"),
        ({"output": "x", "nprobe": 2**20 + 1}, "--nprobe must be at most 1048576"),
    ],
)
def test_bad_values_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        AttributionRequest("prompt", **kwargs)
    assert "\n" not in str(info.value)


def test_the_first_problem_is_reported_in_option_order():
    with pytest.raises(ConfigError, match="-k must"):
        AttributionRequest("p", "o", k=0, ig_steps=0, rerank="bm25")
    # a temperature is only checked when the model generates
    assert AttributionRequest("p", "o", temperature=-1.0).temperature == -1.0
    # candidates are what every channel returns for fusion: at least one
    with pytest.raises(ConfigError, match="--candidates must be at least 1, got 0"):
        AttributionRequest("p", "o", candidates=0)
    # channels: a comma list or names, each once, in the order given; unknown refused
    assert AttributionRequest("p", "o", channels="span, lexical,span").channels == (
        "span", "lexical",
    )  # fmt: skip
    assert AttributionRequest("p", "o").channels is None
    for bad, message in ((",", "needs at least one"), (("dense", "bm25"), "got 'bm25'")):
        with pytest.raises(ConfigError, match=message):
            AttributionRequest("p", "o", channels=bad)


def test_field_metadata_names_choices_and_minimums():
    meta = {f.name: f.metadata for f in dataclasses.fields(AttributionRequest)}
    assert meta["input_attribution"]["choices"] == INPUT_ATTRIBUTIONS
    assert meta["ig_baseline"]["choices"] == IG_BASELINES
    assert meta["query_span"]["choices"] == QUERY_SPANS
    assert meta["rerank"]["choices"] == RERANKS
    assert {n for n, m in meta.items() if "min" in m} == {
        "generate", "temperature", "seed", "k", "ig_steps", "top_concepts", "chunk_size",
        "top_p", "repetition_penalty",
    }  # fmt: skip
    assert {n: m["max"] for n, m in meta.items() if "max" in m} == {
        "seed": 2**63 - 1, "nprobe": 2**20, "top_p": 1.0, "repetition_penalty": 10.0,
    }  # fmt: skip
    assert all(m["doc"] for m in meta.values())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("top_p", 0.0, "--top-p must be at least 0.01"),
        ("top_p", 1.5, "--top-p must be at most 1.0"),
        ("top_p", float("nan"), "--top-p must be a finite number"),
        ("repetition_penalty", 0.5, "--repetition-penalty must be at least 1.0"),
        ("repetition_penalty", float("inf"), "--repetition-penalty must be a finite number"),
    ],
)
def test_generation_controls_are_range_checked(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AttributionRequest("Call me", generate=4, **{field: value})
    AttributionRequest("Call me", generate=4, top_p=0.9, repetition_penalty=1.3)  # fine
