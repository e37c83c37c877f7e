"""The attributor on an index built from real text with the builtin model trained in the
test: verbatim passages find their own chunk, logit splits add up, gradient x input
matches finite differences, integrated gradients are complete, a foreign encoder is
refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tda.attribution.attributor import Attributor
from tda.attribution.index.reader import IndexReadError
from tda.attribution.sequence import generate_tokens
from tda.pipeline.index import run_index
from tda.schemas import (
    AttributionReport,
    ConfigError,
    EmbedConfig,
    IndexConfig,
    Pooling,
    ReportError,
)
from tests.helpers import chunk_root, embed_root, make_tiny_steerling


@pytest.fixture(scope="module")
def root(tmp_path_factory, docs_jsonl, builtin_dir) -> Path:
    root = tmp_path_factory.mktemp("attr") / "root"
    chunk_root(root, [docs_jsonl], builtin_dir)
    # max:hidden: the 40-step test model's mean-pooled concept vectors are nearly collinear
    # (see test_cli); the attributor uses whatever pooling the index records.
    embed_root(EmbedConfig(root=str(root), model=builtin_dir, pooling=Pooling.parse("max:hidden")))
    run_index(IndexConfig(root=str(root), shards=2))
    return root


@pytest.fixture(scope="module")
def attributor(root) -> Attributor:
    return Attributor.from_root(str(root), device="cpu")


def _chunks(root: Path) -> list[dict]:
    return pq.read_table(root / "chunks" / "part-000000.parquet").to_pylist()


def _doc_texts(docs_jsonl) -> dict[str, str]:
    return {
        json.loads(line)["id"]: json.loads(line)["text"]
        for line in Path(docs_jsonl).read_text().splitlines()
    }


def _second_chunks(root: Path, n: int) -> list[dict]:
    """Chunks that are the second of their document (pooled from a window starting at the
    document's first token, so prompt = the first chunk reproduces their context)."""
    rows = [c for c in _chunks(root) if c["chunk_index"] == 1 and c["n_tokens"] == 64]
    return rows[:: max(1, len(rows) // n)][:n]


@pytest.fixture(scope="module")
def left_root(tmp_path_factory, root, builtin_dir) -> Path:
    """The same chunks embedded in windows with left context (--window 128 --context 32)."""
    import shutil

    left = tmp_path_factory.mktemp("attr-left") / "root"
    shutil.copytree(root / "chunks", left / "chunks")
    embed_root(
        EmbedConfig(root=str(left), model=builtin_dir, window=128, context=32,
                    pooling=Pooling.parse("max:hidden"))
    )  # fmt: skip
    run_index(IndexConfig(root=str(left), shards=2))
    return left


def test_the_default_index_encodes_each_chunk_alone(attributor, left_root):
    assert (attributor.manifest.context.window, attributor.manifest.context.context) == (64, 0)
    left = Attributor.from_root(str(left_root), device="cpu")
    assert (left.manifest.context.window, left.manifest.context.context) == (128, 32)


@pytest.mark.parametrize("index", ["default", "left context"])
def test_verbatim_passage_finds_its_training_chunk(root, left_root, docs_jsonl, index):
    """prompt = the document before a chunk, output = the chunk: the search vector is the
    stored vector (score 1) under either context policy: encoded alone (default), or after
    the document's first chunk, which the prompt reproduces (left context)."""
    attributor = Attributor.from_root(str(root if index == "default" else left_root), device="cpu")
    texts = _doc_texts(docs_jsonl)
    tokenizer = attributor.tokenizer
    found_ids, found_text = 0, 0
    cases = _second_chunks(root, 8)
    assert len(cases) == 8
    for row in cases:
        doc = texts[row["doc_id"]]
        (enc,) = tokenizer.encode_batch([doc])
        ids = enc.ids.tolist()
        # token ids: exactly the document's tokens, so the same forward as at index time
        report = attributor.attribute(
            ids[: row["token_start"]], ids[row["token_start"] : row["token_end"]], k=3
        )
        assert len(report.chunks) == 1
        hits = report.chunks[0].hits
        found_ids += row["chunk_id"] in [h.chunk_id for h in hits]
        assert hits[0].score == pytest.approx(1.0, abs=5e-3)
        # text: prompt = the document before the chunk, output = the chunk's text
        report = attributor.attribute(
            doc[: row["char_start"]], doc[row["char_start"] : row["char_end"]], k=3
        )
        found_text += any(h.doc_id == row["doc_id"] for c in report.chunks for h in c.hits)
    assert found_ids == len(cases)
    assert found_text >= len(cases) - 1  # the text's own tokenization may differ at the edge


def _long_rows(root: Path) -> list[dict]:
    """Second chunks whose document has a full third chunk: 128 output tokens after a
    one-chunk prompt."""
    rows = {(c["doc_id"], c["chunk_index"]): c for c in _chunks(root)}
    return [
        r for r in _second_chunks(root, 10**6)
        if rows.get((r["doc_id"], 2), {}).get("n_tokens") == 64
    ]  # fmt: skip


def test_chunks_encoded_alone_still_attribute_long_outputs_with_the_whole_prompt(
    root, attributor, docs_jsonl
):
    """With the default index (each chunk encoded alone, a 64-token window) the forward
    pass still runs over the whole prompt + output: nothing is cut, every prompt token is
    scored, a two-chunk output is attributed, and each full output chunk is encoded alone,
    exactly as indexed (its own training chunk at score 1)."""
    row = _long_rows(root)[0]
    third = next(c for c in _chunks(root) if c["doc_id"] == row["doc_id"] and c["chunk_index"] == 2)
    ids = _doc_ids(attributor, docs_jsonl, row)
    prompt, output = ids[: row["token_start"]], ids[row["token_start"] : third["token_end"]]
    assert len(prompt) == 64 and len(output) == 128
    report = attributor.attribute(prompt, output, k=3)
    assert report.prompt_token_count == len(prompt) and report.prompt_truncated == 0
    assert not report.warnings
    assert [(c.token_start, c.token_end) for c in report.chunks] == [(0, 64), (64, 128)]
    for chunk, want in zip(report.chunks, (row, third), strict=True):
        assert chunk.hits[0].chunk_id == want["chunk_id"]
        assert chunk.hits[0].score == pytest.approx(1.0, abs=5e-3)
        assert len(chunk.prompt_tokens) == len(prompt)
    # the second chunk's log-probability is conditioned on the prompt and the first chunk
    alone = attributor.attribute(output[:64], output[64:], k=3, input_attribution="none")
    assert alone.chunks[0].totals.log_prob != pytest.approx(
        report.chunks[1].totals.log_prob, abs=1e-3
    )


def test_a_short_output_searches_with_the_prompt_tokens_that_fit_the_index_window(
    root, attributor, docs_jsonl
):
    """A 10-token output after a 182-token prompt: its search vector sees the last 54 prompt
    tokens (64-token index window), so the prompt's first 128 tokens change the logits and
    prompt scores but not the hits; cutting them leaves the hits as they were."""
    row = _long_rows(root)[0]
    ids = _doc_ids(attributor, docs_jsonl, row)
    cut = row["token_end"] + 54
    prompt, output = ids[:cut], ids[cut : cut + 10]
    full = attributor.attribute(prompt, output, k=5)
    short = attributor.attribute(prompt[-54:], output, k=5)
    assert full.prompt_token_count == len(prompt) == 182
    assert len(full.chunks[0].prompt_tokens) == 182
    assert [h.chunk_id for h in full.chunks[0].hits] == [h.chunk_id for h in short.chunks[0].hits]
    for a, b in zip(full.chunks[0].hits, short.chunks[0].hits, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
    assert full.chunks[0].totals.log_prob != pytest.approx(
        short.chunks[0].totals.log_prob, abs=1e-3
    )


def test_report_fields_and_json_round_trip(root, attributor, docs_jsonl):
    row = _second_chunks(root, 1)[0]
    doc = _doc_texts(docs_jsonl)[row["doc_id"]]
    prompt, output = doc[: row["char_start"]], doc[row["char_start"] : row["char_start"] + 300]
    report = attributor.attribute(prompt, output, k=5, top_concepts=5)
    assert report.prompt_truncated == 0 and report.output_token_count > 64
    assert report.index_manifest_id == attributor.reader.manifest_id
    assert report.encoder_fingerprint == report.index_encoder_fingerprint
    assert report.settings.chunk_size == 64 and report.settings.input_attribution == "grad"
    assert len(report.chunks) == -(-report.output_token_count // 64)
    assert "".join(c.text for c in report.chunks) == output
    for c in report.chunks:
        assert 1 <= len(c.hits) <= 5 and [h.rank for h in c.hits] == list(range(1, len(c.hits) + 1))
        assert all(h.text and h.source and h.doc_id for h in c.hits)
        # every channel of the index searched and fused: best fused score first, each
        # hit naming the channels that found it, the chunk's confidence said
        fused = [h.fused_score for h in c.hits]
        assert fused == sorted(fused, reverse=True)
        assert all(h.channels and set(h.channels) <= {"dense", "span", "lexical"} for h in c.hits)
        assert c.confidence is not None and c.confidence.level in (
            "verbatim",
            "lexical",
            "weak",
            "none",
        )
        assert sum(c.sources.values()) == pytest.approx(1.0, abs=1e-5)
        assert len(c.prompt_tokens) == report.prompt_token_count
        assert prompt[c.prompt_tokens[0].char_start : c.prompt_tokens[-1].char_end] == prompt
        assert 1 <= len(c.concepts) <= 5
        for h in c.hits:  # shared concepts are in both top-k lists
            ids, _ = attributor.reader.concepts(h.chunk_id)
            assert {s.concept_id for s in h.shared_concepts} <= set(ids.tolist())
    t = report.timings
    assert t.forward > 0 and t.backward > 0 and t.search > 0 and t.total >= t.forward
    back = AttributionReport.from_json(report.to_json())
    assert back == report
    # a version-1 report (before query spans and re-ranks) reads with their defaults
    old = json.loads(report.to_json())
    old["schema_version"] = 1
    for key in ("query_span", "rerank", "candidates"):
        del old["settings"][key]
    for c in old["chunks"]:
        del c["query_token_start"]
        for h in c["hits"]:
            del h["rerank_score"]
    for key in ("channels", "fusion"):
        del old["settings"][key]
    for c in old["chunks"]:
        del c["confidence"]
        for h in c["hits"]:
            for key in ("channels", "fused_score", "match"):
                del h[key]
    read = AttributionReport.from_dict(old)
    assert read.schema_version == 4 and read.settings.rerank == "none"
    assert read.settings.channels == ("dense",) and read.chunks[0].confidence is None
    assert read.chunks[0].query_token_start is None and read.chunks[0].hits[0].rerank_score is None
    assert read.chunks[0].hits[0].channels == {} and read.chunks[0].hits[0].match is None
    with pytest.raises(ReportError, match="schema version 5"):
        AttributionReport.from_dict({**old, "schema_version": 5})


def test_concept_contributions_plus_residual_equal_the_logits(attributor):
    """Exact split (tolerance 1e-3 relative): every listed concept's contribution summed
    with the residual equals the chunk's summed target logits, which equal the model's
    real logits."""
    prompt, output = "The for statement iterates over", " the items of any sequence, in order."
    report = attributor.attribute(prompt, output, top_concepts=100_000, input_attribution="none")
    enc = attributor.encoder
    (p,) = attributor.tokenizer.encode_batch([prompt])
    (o,) = attributor.tokenizer.encode_batch([output])
    ids = torch.tensor([p.ids.tolist() + o.ids.tolist()])
    with torch.inference_mode():
        logits = enc.forward(ids, with_logits=True).logits[0]
    P = p.n_tokens
    for c in report.chunks:
        s, e = P + c.token_start, P + c.token_end
        real = float(logits[s - 1 : e - 1].gather(1, ids[0, s:e, None]).sum())
        tot = c.totals
        assert tot.logit == pytest.approx(real, rel=1e-3, abs=1e-3)
        assert tot.known_total + tot.unknown_total + tot.residual == pytest.approx(
            tot.logit, rel=1e-3, abs=1e-3
        )
        listed = sum(x.contribution for x in c.concepts)
        assert listed == pytest.approx(tot.known_total + tot.unknown_total, rel=1e-3, abs=1e-3)
        lp = torch.log_softmax(logits[s - 1 : e - 1].double(), -1)
        assert tot.log_prob == pytest.approx(float(lp.gather(1, ids[0, s:e, None]).sum()), abs=1e-3)


def _chunk_log_prob(enc, embeds: torch.Tensor, ids: torch.Tensor, s: int, e: int) -> float:
    with torch.inference_mode():
        logits = enc.forward(None, embeds=embeds).hidden @ enc.model.tok_emb.weight.T
        lp = torch.log_softmax(logits[0, s - 1 : e - 1].double(), -1)
        return float(lp.gather(1, ids[0, s:e, None]).sum())


def test_gradient_x_input_agrees_with_finite_differences(attributor, builtin_dir):
    """score_p = grad_p . e_p is the derivative of the chunk's log-probability along
    e_p: (L(E + eps e_p) - L(E - eps e_p)) / 2 eps (model in float64 so the difference
    quotient is not float32 noise)."""
    from tda.attribution.encoders import load_encoder

    enc = load_encoder(builtin_dir, "cpu")
    enc.model.double()
    attributor = Attributor(attributor.reader, enc)
    prompt, output = "Exceptions are raised when", " an error is detected during execution."
    report = attributor.attribute(prompt, output, input_attribution="grad")
    (p,) = attributor.tokenizer.encode_batch([prompt])
    (o,) = attributor.tokenizer.encode_batch([output])
    ids = torch.tensor([p.ids.tolist() + o.ids.tolist()])
    P = p.n_tokens
    with torch.no_grad():
        embeds = enc.token_embeddings(ids)
    chunk = report.chunks[0]
    s, e = P + chunk.token_start, P + chunk.token_end
    eps = 1e-5
    scores = np.array([t.score for t in chunk.prompt_tokens])
    numeric = []
    for pos in range(P):
        up, down = embeds.clone(), embeds.clone()
        up[0, pos] += eps * embeds[0, pos]
        down[0, pos] -= eps * embeds[0, pos]
        numeric.append(
            (_chunk_log_prob(enc, up, ids, s, e) - _chunk_log_prob(enc, down, ids, s, e))
            / (2 * eps)
        )
    numeric = np.array(numeric)
    np.testing.assert_allclose(scores, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())
    assert np.abs(scores).max() > 0


def test_integrated_gradients_are_complete(attributor):
    """IG's attributions sum to L(prompt) - L(baseline prompt) within tolerance."""
    prompt, output = "A class definition is", " an executable statement."
    for baseline in ("mask", "zero"):
        report = attributor.attribute(
            prompt, output, input_attribution="ig", ig_steps=64, ig_baseline=baseline
        )
        for c in report.chunks:
            total = sum(t.score for t in c.prompt_tokens)
            assert total == pytest.approx(c.completeness["sum"], abs=1e-4)
            delta = c.completeness["delta"]
            assert total == pytest.approx(delta, rel=0.05, abs=0.05)
            assert report.settings.ig_baseline == baseline


def test_generation_is_deterministic_and_attributed(attributor):
    report = attributor.attribute("The while statement", generate=20)
    again = attributor.attribute("The while statement", generate=20)
    assert report.output == again.output and report.output_token_count == 20
    # the builtin model's own defaults are recorded (docs/model.md, Generation)
    assert report.settings.generate == {
        "tokens": 20, "temperature": 0.0, "seed": 0, "top_p": 0.9, "repetition_penalty": 1.3,
    }  # fmt: skip
    sampled = [
        generate_tokens(attributor.encoder, [5, 6, 7], 12, temperature=1.0, seed=s)
        for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    assert report.chunks and report.chunks[0].hits


def test_long_prompt_is_cut_on_the_left_to_the_models_context(attributor):
    limit = attributor.encoder.info.max_window
    prompt = " ".join(["word"] * (limit * 2))
    report = attributor.attribute(prompt, " and more words follow here.", input_attribution="none")
    assert report.prompt_truncated > 0
    assert report.prompt_token_count + report.output_token_count == limit
    assert any("cut" in w and "model's context" in w for w in report.warnings)


def test_query_span_chunk_pools_an_index_sized_window(root, attributor, docs_jsonl):
    """A short output chunk borrows the prompt's last tokens: the search vector then pools
    the same 64 tokens as the training chunk they came from (score 1), where the output
    alone (10 tokens) is a different vector."""
    row = _second_chunks(root, 1)[0]
    doc_ids = _doc_ids(attributor, docs_jsonl, row)
    cut = row["token_end"] - 10
    prompt, output = doc_ids[:cut], doc_ids[cut : row["token_end"]]
    whole = attributor.attribute(prompt, output, k=3, query_span="chunk", input_attribution="none")
    alone = attributor.attribute(prompt, output, k=3, query_span="output", input_attribution="none")
    (chunk,) = whole.chunks
    assert chunk.query_token_start == -54 and alone.chunks[0].query_token_start == 0
    assert chunk.hits[0].chunk_id == row["chunk_id"]
    assert chunk.hits[0].score == pytest.approx(1.0, abs=1e-4)  # the stored vector itself
    # pooled over its 10 tokens only, the output is another vector
    assert not any(
        h.chunk_id == row["chunk_id"] and h.score > 1 - 1e-4 for h in alone.chunks[0].hits
    )
    assert whole.settings.query_span == "chunk" and alone.settings.query_span == "output"
    # the chunk's own logits and log-probability do not depend on the query span
    assert chunk.totals == alone.chunks[0].totals


def _doc_ids(attributor, docs_jsonl, row) -> list[int]:
    text = _doc_texts(docs_jsonl)[row["doc_id"]]
    return attributor.tokenizer.encode_batch([text])[0].ids.tolist()


def test_rerank_concepts_orders_the_candidates_by_concept_overlap(root, attributor, docs_jsonl):
    row = _second_chunks(root, 2)[1]
    ids = _doc_ids(attributor, docs_jsonl, row)
    prompt, output = ids[: row["token_start"]], ids[row["token_start"] : row["token_end"]]
    # the dense channel alone: its 20 nearest are the candidates the re-rank orders
    plain = attributor.attribute(prompt, output, k=20, input_attribution="none",
                                 channels=("dense",))  # fmt: skip
    ranked = attributor.attribute(
        prompt, output, k=5, input_attribution="none", rerank="concepts", candidates=20,
        channels=("dense",),
    )  # fmt: skip

    def overlap(hit):
        return sum(min(s.output_weight, s.training_weight) for s in hit.shared_concepts)

    candidates = {h.chunk_id: overlap(h) for h in plain.chunks[0].hits}
    hits = ranked.chunks[0].hits
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert {h.chunk_id for h in hits} <= set(candidates)
    scores = [h.rerank_score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    for h in hits:  # the signal is the overlap the shared concepts show
        assert h.rerank_score == pytest.approx(candidates[h.chunk_id], abs=2e-3)
    # the kept five are the five largest overlaps among the 20 candidates
    dropped = [v for cid, v in candidates.items() if cid not in {h.chunk_id for h in hits}]
    assert min(scores) >= max(dropped) - 2e-3
    assert ranked.settings.rerank == "concepts" and ranked.settings.candidates == 20
    assert all(h.rerank_score is None for h in plain.chunks[0].hits)
    assert plain.settings.candidates is None


def test_rerank_span_puts_the_verbatim_source_first(root, left_root):
    from tda.attribution.rerank import longest_shared_run, words

    # windows with left context: the chunk's text alone is not the vector the index holds
    attributor = Attributor.from_root(str(left_root), device="cpu")
    row = _second_chunks(root, 3)[2]
    dense = ("dense",)
    plain = attributor.attribute("", row["text"], k=3, input_attribution="none", channels=dense)
    assert plain.chunks[0].hits[0].chunk_id != row["chunk_id"]  # the vectors miss it here
    # every chunk a candidate: the exact match lifts the source to the top
    report = attributor.attribute(
        "", row["text"], k=3, input_attribution="none", rerank="span", candidates=100_000,
        channels=dense,
    )  # fmt: skip
    first = report.chunks[0].hits[0]
    assert first.chunk_id == row["chunk_id"]
    assert first.rerank_score == len(words(row["text"]))  # every word, in order
    for h in report.chunks[0].hits:
        assert h.rerank_score == longest_shared_run(words(row["text"]), words(h.text))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(output=None), "give an output"),
        (dict(output="x", generate=3), "not both"),
        (dict(output="x", k=0), "-k must be at least 1"),
        (dict(output="x", input_attribution="shap"), "--input-attribution must be"),
        (dict(output="x", ig_steps=0), "--ig-steps"),
        (dict(output=""), "no tokens"),
        (dict(output=[10**9]), "outside the model's vocabulary"),
        (dict(output="word " * 5000), "model's context holds"),
        (dict(output="x", query_span="prompt"), "--query-span must be"),
        (dict(output="x", rerank="bm25"), "--rerank must be"),
        (dict(output="x", rerank="concepts", k=10, candidates=5), "at least -k"),
    ],
)
def test_bad_requests_are_one_line_errors(attributor, kwargs, message):
    output = kwargs.pop("output")
    with pytest.raises(ConfigError, match=message):
        attributor.attribute("prompt", output, **kwargs)


def test_a_request_object_and_keyword_arguments_attribute_alike(attributor):
    """attribute(AttributionRequest(...)) is attribute(prompt, output, **fields): the
    same report (timings aside); a request does not mix with more arguments."""
    from dataclasses import replace

    from tda.schemas import AttributionRequest

    request = AttributionRequest("The for statement", " is used to iterate.", k=3,
                                 input_attribution="none")  # fmt: skip
    a = attributor.attribute(request)
    b = attributor.attribute("The for statement", " is used to iterate.", k=3,
                             input_attribution="none")  # fmt: skip
    assert replace(a, timings=b.timings) == b
    with pytest.raises(TypeError, match="alone"):
        attributor.attribute(request, k=4)


def test_another_encoder_is_refused_unless_forced(root, tmp_path, builtin_dir):
    """Same shape, other weights: refused, or attributed with --force (recorded); another
    shape is refused even with --force."""
    from tda.attribution.encoders import load_encoder
    from tda.attribution.encoders.builtin.concepts import load_concept_set
    from tda.attribution.encoders.builtin.model import save_builtin

    base = load_encoder(builtin_dir, "cpu")
    with torch.no_grad():
        base.model.tok_emb.weight[0] += 0.5
    other = tmp_path / "other"
    save_builtin(
        str(other),
        base.model,
        load_concept_set(str(Path(builtin_dir) / "concepts.yaml")),
        (Path(builtin_dir) / "tokenizer.json").read_bytes(),
        base.info.tokenizer_fingerprint,
        {"note": "perturbed copy"},
    )
    with pytest.raises(IndexReadError, match="pass --force"):
        Attributor.from_root(str(root), model=str(other), device="cpu")
    forced = Attributor.from_root(str(root), model=str(other), device="cpu", force=True)
    report = forced.attribute(
        "The for statement", " is used to iterate.", k=2, input_attribution="none"
    )
    assert report.settings.forced and any("--force" in w for w in report.warnings)
    assert report.encoder_fingerprint != report.index_encoder_fingerprint
    steerling = make_tiny_steerling(tmp_path / "steerling", builtin_dir)
    with pytest.raises(IndexReadError, match="128-d vectors"):
        Attributor.from_root(str(root), model=f"steerling:{steerling}", device="cpu", force=True)


def test_steerling_index_attribution_and_own_generator(tmp_path, docs_jsonl, steerling_dir):
    """The tiny random Steerling through the same attributor: chunks on its 64-token
    block grid, its own block-diffusion generator, exact logit split."""
    root = tmp_path / "root"
    write = tmp_path / "small.jsonl"
    write.write_text("".join(Path(docs_jsonl).read_text().splitlines(keepends=True)[:6]))
    chunk_root(root, [write], steerling_dir)
    embed_root(
        EmbedConfig(
            root=str(root), model=f"steerling:{steerling_dir}", pooling=Pooling.parse("max:hidden")
        )
    )
    run_index(IndexConfig(root=str(root)))
    attributor = Attributor.from_root(str(root), device="cpu")
    prompt = "The for statement is used to iterate over"  # not a multiple of 64 tokens
    report = attributor.attribute(prompt, generate=70, k=3)
    again = attributor.attribute(prompt, generate=70, k=3)
    assert report.output == again.output and report.output_token_count == 70
    P = report.prompt_token_count
    bounds = [(P + c.token_start, P + c.token_end) for c in report.chunks]
    assert all(s % 64 == 0 for s, _ in bounds[1:])  # whole blocks after the first
    assert bounds[0][0] == P and bounds[-1][1] == P + 70
    for c in report.chunks:
        t = c.totals
        assert t.known_total + t.unknown_total + t.residual == pytest.approx(
            t.logit, rel=1e-3, abs=1e-3
        )
        assert c.hits and len(c.prompt_tokens) == P


def test_repetition_penalty_and_top_p_change_what_is_generated(attributor):
    """Greedy with no penalty repeats tokens; the penalty changes the continuation, and a
    sampled one at a low temperature with top-p 0.01 equals greedy (the nucleus then holds
    the top token only)."""
    plain = attributor.attribute("The while statement", generate=24, repetition_penalty=1.0)
    penalised = attributor.attribute("The while statement", generate=24, repetition_penalty=3.0)
    assert plain.output != penalised.output
    ids = attributor.tokenizer.encode_batch([penalised.output])[0].ids.tolist()
    plain_ids = attributor.tokenizer.encode_batch([plain.output])[0].ids.tolist()
    assert len(set(ids)) >= len(set(plain_ids))
    nucleus = attributor.attribute(
        "The while statement", generate=24, temperature=0.05, top_p=0.01, repetition_penalty=1.0
    )
    assert nucleus.output == plain.output
