"""The encoder interface: windows, batches, pooling against numpy references, the one code
path against direct forward passes, and the exact logit decomposition, for builtin and
tiny Steerling alike."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tda.attribution.encoders import (
    ConceptActivations,
    DocumentTokens,
    EncoderError,
    batch_windows,
    default_context_policy,
    encode_documents,
    load_encoder,
    logit_split,
    plan_windows,
    pool_chunks,
)
from tda.schemas import ConfigError, ContextPolicy, EncoderInfo, Pooling


def _spans(n_tokens: int, size: int, step: int) -> np.ndarray:
    starts = list(range(0, n_tokens, step))
    spans = []
    for s in starts:
        spans.append((s, min(s + size, n_tokens)))
        if s + size >= n_tokens:
            break
    return np.asarray(spans, dtype=np.int64)


@settings(max_examples=200, deadline=None)
@given(
    n_tokens=st.integers(1, 3000),
    size_blocks=st.integers(1, 3),
    overlap=st.booleans(),
    window_blocks=st.integers(3, 20),
    context_blocks=st.integers(0, 2),
    align=st.sampled_from([1, 8, 64]),
)
def test_plan_windows_properties(
    n_tokens, size_blocks, overlap, window_blocks, context_blocks, align
):
    size = size_blocks * 64
    step = size // 2 if overlap and size_blocks % 2 == 0 else size
    policy = ContextPolicy(window=window_blocks * 64, context=context_blocks * 64, align=align)
    spans = _spans(n_tokens, size, step)
    windows = plan_windows(spans, n_tokens, policy)
    assigned = [c for w in windows for c in range(w.first, w.last)]
    assert assigned == list(range(len(spans)))  # every chunk exactly once, in order
    for w in windows:
        assert w.start % align == 0 and 0 < w.length <= policy.window and w.end <= n_tokens
        assert w.last > w.first  # no empty window
        for c in range(w.first, w.last):
            assert w.start <= spans[c, 0] and spans[c, 1] <= w.end  # whole chunk inside
    for prev, w in itertools.pairwise(windows):
        assert w.start > prev.start
        # a later window gives its first chunk the left context the policy asks for, as
        # far as moving at least one alignment step past the previous window allows,
        # and as far as the chunk still fits in the window
        head, tail = spans[w.first]
        room = (policy.window - (tail - head)) // align * align
        assert head - w.start >= min(policy.context, head - prev.start - align, room)


def test_plan_windows_context_and_errors():
    spans = _spans(1000, 64, 64)
    windows = plan_windows(spans, 1000, ContextPolicy(window=256, context=64, align=64))
    assert [(w.start, w.end, w.first, w.last) for w in windows][:3] == [
        (0, 256, 0, 4),
        (192, 448, 4, 7),  # starts 64 tokens before chunk 4
        (384, 640, 7, 10),
    ]
    with pytest.raises(EncoderError, match="does not fit"):
        plan_windows(_spans(500, 128, 128), 500, ContextPolicy(window=64, context=0))
    with pytest.raises(EncoderError, match="off the model's 64-token blocks"):
        plan_windows(_spans(500, 50, 50), 500, ContextPolicy(window=256, context=0, align=64))
    with pytest.raises(ConfigError):
        ContextPolicy(window=100, context=0, align=64)
    with pytest.raises(ConfigError):
        ContextPolicy(window=128, context=128, align=64)


def _info(max_window: int, align: int) -> EncoderInfo:
    return EncoderInfo(
        name="t", spec="t", fingerprint="sha256:0", tokenizer_fingerprint="sha256:0",
        hidden_size=8, n_known=4, n_unknown=4, max_window=max_window, block_align=align,
    )  # fmt: skip


def test_default_context_policy_encodes_each_chunk_alone():
    builtin, steerling = _info(256, 1), _info(4096, 64)
    # neither --window nor --context: one chunk per window, no left context
    assert default_context_policy(builtin, chunk_size=64) == ContextPolicy(64, 0, 1)
    assert default_context_policy(builtin, chunk_size=50) == ContextPolicy(50, 0, 1)
    assert default_context_policy(steerling, chunk_size=64) == ContextPolicy(64, 0, 64)
    # --window alone: a quarter of left context; --context alone: the model's limit <= 1024
    assert default_context_policy(builtin, 128, chunk_size=64) == ContextPolicy(128, 32, 1)
    assert default_context_policy(steerling, None, 128, 64) == ContextPolicy(1024, 128, 64)
    assert default_context_policy(builtin, None, 0, 64) == ContextPolicy(256, 0, 1)
    with pytest.raises(ConfigError, match="exceed the model's context limit"):
        default_context_policy(builtin, chunk_size=512)


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    budget=st.integers(1, 2000),
    equal=st.booleans(),
)
def test_batch_windows(lengths, budget, equal):
    batches = batch_windows(lengths, budget, equal)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = lengths[b[0]]
        assert all(lengths[i] <= longest for i in b)
        assert len(b) == 1 or len(b) * longest <= budget
        if equal:
            assert {lengths[i] for i in b} == {longest}
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)  # longest first: least padding


def _fake_acts(B=3, T=40, D=16, C=30, k=5, seed=0) -> ConceptActivations:
    g = torch.Generator().manual_seed(seed)
    weights, ids = torch.topk(torch.rand(B, T, C, generator=g), k)
    return ConceptActivations(
        hidden=torch.randn(B, T, D, generator=g),
        known_features=torch.randn(B, T, D, generator=g),
        unknown_features=torch.randn(B, T, D, generator=g),
        known_ids=ids,
        known_weights=weights,
        unknown_ids=ids,
        unknown_weights=weights,
    )


def _reference_pool(acts, rows, starts, ends, pooling: Pooling, C: int):
    """Per chunk, straight numpy: the definition in schemas.Pooling's docstring."""
    vecs, tops = [], []
    for b, s, e in zip(rows, starts, ends, strict=True):
        dense = np.zeros((e - s, C))
        ids = acts.known_ids[b, s:e].numpy()
        w = acts.known_weights[b, s:e].numpy()
        for t in range(e - s):
            dense[t, ids[t]] = w[t]
        if acts.known_all is not None:  # every concept's weight, not the top-k
            dense = acts.known_all[b, s:e].numpy().astype(np.float64)
        if pooling.method == "weights":
            v = dense.mean(0)
        else:
            feats = {
                "concepts": (acts.known_features + acts.unknown_features),
                "known": acts.known_features,
                "hidden": acts.hidden,
            }[pooling.features][b, s:e].numpy()
            if pooling.features == "hidden" and acts.pool_mean is not None:
                # standardised by the model's pooling statistics first (docs/model.md)
                feats = (feats - acts.pool_mean.numpy()) / acts.pool_scale.numpy()
            v = {"mean": feats.mean(0), "max": feats.max(0), "last": feats[-1]}[pooling.method]
        vecs.append(v / np.linalg.norm(v))
        cw = dense.max(0) if pooling.concept_reducer == "max" else dense.mean(0)
        order = np.argsort(-cw, kind="stable")[: pooling.top_k]
        tops.append((order[cw[order] > 0], cw[order][cw[order] > 0]))
    return np.stack(vecs), tops


@pytest.mark.parametrize(
    "name", ["mean", "max", "last", "mean:known", "max:hidden", "last:hidden", "weights"]
)
@pytest.mark.parametrize("reducer", ["max", "mean"])
def test_pool_chunks_matches_reference(name, reducer):
    acts = _fake_acts()
    pooling = Pooling.parse(name, concept_reducer=reducer, top_k=7)
    # overlapping chunks, chunks in every row, one single-token chunk
    rows = np.array([0, 0, 0, 1, 2, 2])
    starts = np.array([0, 10, 20, 5, 0, 39])
    ends = np.array([16, 26, 40, 37, 39, 40])
    got = pool_chunks(acts, rows, starts, ends, pooling, n_known=30)
    want_vecs, want_tops = _reference_pool(acts, rows, starts, ends, pooling, 30)
    np.testing.assert_allclose(got.vectors, want_vecs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
    for ids, weights, (want_ids, want_w) in zip(
        got.concept_ids, got.concept_weights, want_tops, strict=True
    ):
        np.testing.assert_allclose(weights, want_w, atol=1e-6)
        # ties may order differently; the weights per id must agree
        assert dict(zip(ids.tolist(), weights.tolist(), strict=True)) == pytest.approx(
            dict(zip(want_ids.tolist(), want_w.tolist(), strict=True))
        )
        assert ids.dtype == np.uint16


def test_weights_pooling_with_no_active_concept_gives_a_counted_zero_vector():
    acts = _fake_acts()
    acts.known_weights = torch.zeros_like(acts.known_weights)
    got = pool_chunks(acts, np.array([0]), np.array([0]), np.array([8]), Pooling("weights"), 30)
    assert got.zero_vectors == 1 and not got.vectors.any()
    assert len(got.concept_ids[0]) == 0  # no concept with weight 0 is reported


# --------------------------------------------------------------------------------------
# Real encoders (builtin and tiny Steerling through the same tests)


@pytest.fixture(scope="module")
def encoder(model_spec):
    return load_encoder(model_spec, device="cpu")


def _docs(encoder, texts: list[str], chunk: int = 64) -> list[DocumentTokens]:
    tok = encoder.load_tokenizer()
    return [
        DocumentTokens(ids=e.ids, spans=_spans(e.n_tokens, chunk, chunk))
        for e in tok.encode_batch(texts)
    ]


def _direct(encoder, ids: np.ndarray, spans: np.ndarray, pooling: Pooling) -> np.ndarray:
    """The encoder called directly on one whole window, pooled by the reference."""
    with torch.inference_mode():
        acts = encoder.forward(torch.from_numpy(ids)[None])
    vecs, _ = _reference_pool(
        acts, np.zeros(len(spans), int), spans[:, 0], spans[:, 1], pooling, encoder.info.n_known
    )
    return vecs


@pytest.mark.parametrize("pooling", ["mean", "max:known", "weights"])
def test_encode_documents_equals_direct_forward(encoder, real_docs, pooling):
    """Windows, batching (with padding for builtin, equal lengths for Steerling) and
    pooling change nothing: every chunk's vector equals one direct forward pass over its
    document, to 1e-4."""
    pool = Pooling.parse(pooling)
    texts = [t[: 150 + 25 * i] for i, (_, t) in enumerate(real_docs[:12])]  # < one window each
    docs = _docs(encoder, texts)
    policy = encoder.context_policy(window=256, context=64)
    assert all(len(d.ids) <= 256 for d in docs)
    pooled, stats = encode_documents(encoder, docs, pool, policy, batch_tokens=600)
    assert stats.batches > 1 and stats.windows == len(docs)
    want = np.concatenate([_direct(encoder, d.ids, d.spans, pool) for d in docs])
    np.testing.assert_allclose(pooled.vectors, want, atol=1e-4)
    if encoder.pad_safe:
        assert stats.padded_tokens > 0  # mixed lengths were padded, harmlessly
    else:
        assert stats.padded_tokens == 0  # Steerling: never padded


def test_long_document_chunks_get_left_context(encoder, real_docs):
    """A chunk pooled from a later window equals a direct forward over that window."""
    text = max((t for _, t in real_docs), key=len)
    (doc,) = _docs(encoder, [text])
    policy = encoder.context_policy(window=256, context=128)
    pooled, stats = encode_documents(encoder, [doc], Pooling(), policy, batch_tokens=4096)
    windows = plan_windows(doc.spans, len(doc.ids), policy)
    assert stats.windows == len(windows) > 3
    w = windows[2]
    assert doc.spans[w.first, 0] - w.start == 128
    local = doc.spans[w.first : w.last] - w.start
    want = _direct(encoder, doc.ids[w.start : w.end], local, Pooling())
    np.testing.assert_allclose(pooled.vectors[w.first : w.last], want, atol=1e-4)


def test_logit_split_reconstructs_the_logits(encoder, real_docs):
    """sum of concept contributions + residual == the LM logit, at every position."""
    (doc,) = _docs(encoder, [real_docs[3][1][:600]])
    ids = torch.from_numpy(doc.ids[:128])[None]
    with torch.inference_mode():
        acts = encoder.forward(ids, with_logits=True)
        targets = torch.roll(ids, -1, dims=1)
        split = logit_split(encoder, acts, targets)
    logits = acts.logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    total = split.known.sum(-1) + split.unknown.sum(-1) + split.residual
    torch.testing.assert_close(split.logit, logits.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(total, logits.float(), atol=1e-4, rtol=1e-4)
    # the concepts carry real signal: not everything is in the residual
    assert split.known.abs().sum() > 0 and split.unknown.abs().sum() > 0


def test_embeds_path_equals_ids_path(encoder, real_docs):
    """forward(embeds=token_embeddings(ids)) == forward(ids) (attribution uses embeds)."""
    (doc,) = _docs(encoder, [real_docs[5][1][:400]])
    ids = torch.from_numpy(doc.ids[:64])[None]
    with torch.inference_mode():
        a = encoder.forward(ids)
        b = encoder.forward(None, embeds=encoder.token_embeddings(ids))
    torch.testing.assert_close(a.hidden, b.hidden)


def test_load_encoder_errors(tmp_path):
    with pytest.raises(EncoderError, match=r"no config\.json"):
        load_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"kind": "something-else"}')
    with pytest.raises(EncoderError, match="not a model SPEC"):
        load_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"interpretable": true}')
    with pytest.raises(EncoderError, match="steerling:"):
        load_encoder(f"builtin:{tmp_path}")
    with pytest.raises(EncoderError, match="required"):
        load_encoder("")
