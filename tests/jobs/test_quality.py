"""The quality harness's parts: planted facts, corpus, baselines, re-ranking, the
counterfactual's prune list and log-probability, and metrics (the full run is `make
eval`; its table is in docs/quality.md)."""

from __future__ import annotations

import json

import pytest

from tda.jobs.quality import (
    BM25Ranker,
    ChunkTable,
    ExactSpanRanker,
    GradCosRanker,
    RandomRanker,
    Variant,
    _metrics,
    answer_log_prob,
    best_option,
    build_corpus,
    default_option,
    make_facts,
    make_variants,
    markdown_tables,
    rerank,
    taught_paraphrase,
    write_prune_list,
)


class _Table:
    def __init__(self, texts):
        self.texts = texts
        self.ids = [100 + i for i in range(len(texts))]
        self.rows = [{"chunk_id": i, "source": "s", "doc_id": f"d{i}", "text": t,
                      "file_index": 0, "record_index": n, "char_start": 0, "char_end": len(t)}
                     for n, (i, t) in enumerate(zip(self.ids, texts, strict=True))]  # fmt: skip
        self.position = {cid: n for n, cid in enumerate(self.ids)}


TEXTS = [
    "The amber falcon guild was founded in Stonebridge. It kept bells.",
    "The amber falcon guild is known for its copper bells.",
    "Rivers and bridges: the stone bridge over the river was old.",
    "Founded in Stonebridge, the market sold winter goods.",
] + [f"Unrelated note {i} about loops, classes and exceptions in Python." for i in range(12)]


def test_facts_are_unique_and_seeded():
    facts = make_facts(48, seed=0)
    assert len({f.entity for f in facts}) == 48 and len({f.place for f in facts}) == 48
    assert facts == make_facts(48, seed=0) and facts != make_facts(48, seed=1)
    f = facts[0]
    assert f.statement.startswith(f.verbatim_prompt) and f.statement.endswith(f"{f.place}.")
    assert f.entity in f.paraphrase_prompt and f.place not in f.paraphrase_prompt


def test_corpus_states_each_fact_at_document_starts(tmp_path):
    facts = make_facts(5, seed=3)
    corpus = build_corpus(tmp_path, facts, copies=3, seed=3)
    docs = [json.loads(line) for line in (corpus / "facts.jsonl").read_text().splitlines()]
    assert len(docs) == 15
    for f in facts:
        mine = [d for d in docs if d["id"].startswith(f"fact-{f.index}-")]
        assert len(mine) == 3 and all(d["text"].startswith(f.statement) for d in mine)
    distractors = (corpus / "distractors.jsonl").read_text().splitlines()
    assert len(distractors) == 10 and all(f.place not in d for f in facts for d in distractors)


def test_paraphrase_documents_teach_even_facts_only(tmp_path):
    facts = make_facts(5, seed=3)
    plain = build_corpus(tmp_path / "a", facts, copies=3, seed=3)
    corpus = build_corpus(tmp_path / "b", facts, copies=3, seed=3, paraphrase_docs=2)
    docs = [json.loads(line) for line in (corpus / "facts.jsonl").read_text().splitlines()]
    extra = [d for d in docs if "-p" in d["id"]]
    assert [d["id"] for d in extra] == [f"fact-{i}-p{c}" for i in (0, 2, 4) for c in range(2)]
    for d in extra:
        f = facts[int(d["id"].split("-")[1])]
        assert d["text"].startswith(f.paraphrase_statement)
        assert f.paraphrase_statement.startswith("The place where") and f.place in d["text"]
    assert [taught_paraphrase(f, 2) for f in facts] == [True, False, True, False, True]
    assert not any(taught_paraphrase(f, 0) for f in facts)
    # the documents every corpus shares are the same bytes: the option only adds
    assert (corpus / "distractors.jsonl").read_text() == (plain / "distractors.jsonl").read_text()
    assert docs[:15] == [json.loads(x) for x in (plain / "facts.jsonl").read_text().splitlines()]


def test_baselines_rank_the_matching_chunk_first():
    table = _Table(TEXTS)
    query = "The amber falcon guild was founded in Stonebridge"
    assert BM25Ranker(table).rank(query, 2)[0] == 100
    spans = ExactSpanRanker(table).rank(query, 4)
    assert spans[0] == 100  # 8 words in a row, against 4 for the distractor
    assert 102 not in spans  # no shared 3-word run at all
    picked = RandomRanker(table, 0).rank(query, 4)
    assert len(set(picked)) == 4 and set(picked) <= set(table.ids)
    assert ExactSpanRanker(table).longest(query, 0) == 8  # the whole query
    assert ExactSpanRanker(table).longest(query, 2) == 1  # "the"


def test_rerank_orders_by_score_and_keeps_tda_order_on_ties():
    assert rerank([7, 8, 9, 10], [0.0, 2.0, 0.5, 2.0]) == [8, 10, 9, 7]
    assert rerank([7, 8, 9, 10], [0, 0, 0, 0], k=2) == [7, 8]  # no signal: tda's order


def test_hybrid_bm25_rerank_lifts_the_source_out_of_tda_candidates():
    table = _Table(TEXTS)
    bm25 = BM25Ranker(table)
    query = "The amber falcon guild was founded in Stonebridge"
    cands = list(reversed(table.ids))  # source last
    every = bm25.scores(query)
    scores = [float(every[table.position[c]]) for c in cands]
    assert rerank(cands, scores, k=1) == [100]


def test_variants_share_a_root_only_when_their_index_is_the_same():
    plain = Variant("tda mean:hidden", "mean:hidden")
    whole = Variant("tda mean:hidden, query span chunk", "mean:hidden", query_span="chunk")
    centred = Variant("c", "mean:hidden", factory="IDMap2,PCA{D},L2norm,Flat")
    white = Variant("w", "mean:hidden", whiten=True)
    left = Variant("n", "mean:hidden", window=128, context=32)
    assert plain.slug == whole.slug
    slugs = {plain.slug, centred.slug, white.slug, left.slug, Variant("m", "max:hidden").slug}
    assert len(slugs) == 5
    assert all(ch.isalnum() or ch == "-" for ch in centred.slug)


def test_variants_cover_both_query_spans_and_one_is_the_default():
    from tda.schemas import DEFAULT_QUERY_SPAN, DEFAULT_RERANK, IndexConfig, Pooling

    variants = make_variants(["mean:hidden", "mean:concepts", "last:hidden"])
    names = [v.name for v in variants]
    assert len(names) == len(set(names)) == 2 * (3 + 3 + 1) + 2
    assert {v.query_span for v in variants} == {"chunk", "output"}
    default = default_option(variants)
    row = next(v for v in variants if v.name == default["row"])
    want = (Pooling().name, None, IndexConfig(root="-").whiten, DEFAULT_QUERY_SPAN)
    assert (row.pooling, row.factory, row.whiten, row.query_span) == want
    assert default["rerank"] == DEFAULT_RERANK
    with pytest.raises(ValueError, match="no variant is the default"):
        default_option([v for v in variants if v.name != default["row"]])


def test_best_option_pools_every_condition_and_compares_the_concept_rerank():
    def m(ranks):
        return {"n": len(ranks), "ranks": ranks}

    variants = [Variant("a", "mean:hidden"), Variant("b", "max:hidden")]
    results = {
        "a": {"verbatim": {**m([1, 2]), "concept_rerank": m([1, 1])},
              "long prompt": {**m([None, 2]), "concept_rerank": m([2, None])},
              "paraphrase": {**m([]), "concept_rerank": m([])}},
        "b": {"verbatim": {**m([1, 1]), "concept_rerank": m([3, 3])},
              "long prompt": {**m([1, None]), "concept_rerank": m([3, 3])},
              "paraphrase": {**m([]), "concept_rerank": m([])}},
    }  # fmt: skip
    # over the four (condition, fact) pairs: a 0.5, a + concepts 0.625, b 0.75
    assert best_option(variants, results) == {"row": "b", "rerank": "none", "mrr": 0.75}
    results["b"]["long prompt"]["ranks"] = [None, None]  # b: 0.5
    assert best_option(variants, results) == {"row": "a", "rerank": "concepts", "mrr": 0.625}


def test_long_prompt_ends_with_the_verbatim_prompt_and_is_seeded():
    from tda.jobs.quality import background_sentences, long_prompt

    sentences = background_sentences()
    fact = make_facts(3, 0)[2]
    prompt = long_prompt(fact, sentences, 0)
    assert prompt.endswith(" " + fact.verbatim_prompt) and len(prompt) > 80
    assert prompt == long_prompt(fact, sentences, 0) != long_prompt(fact, sentences, 1)


def test_lead_puts_background_before_every_statement_and_keeps_lead_0(tmp_path):
    facts = make_facts(4, 0)
    plain = build_corpus(tmp_path / "a", facts, copies=2, seed=0, paraphrase_docs=2)
    led = build_corpus(tmp_path / "b", facts, copies=2, seed=0, paraphrase_docs=2, lead=2)
    again = build_corpus(tmp_path / "c", facts, copies=2, seed=0, paraphrase_docs=2, lead=0)
    for name in ("facts", "distractors"):
        assert (plain / f"{name}.jsonl").read_text() == (again / f"{name}.jsonl").read_text()
        for a, b in zip(
            (plain / f"{name}.jsonl").read_text().splitlines(),
            (led / f"{name}.jsonl").read_text().splitlines(),
            strict=True,
        ):
            opening = json.loads(a)["text"].split(". ")[0]  # the planted statement
            text = json.loads(b)["text"]
            assert not text.startswith(opening) and opening in text
            # the rest of the document is the same filler as with lead 0
            assert text.endswith(json.loads(a)["text"][len(opening) :])


def test_paired_bootstrap_interval():
    from tda.jobs.quality import paired_bootstrap

    same = [1, 2, None, 1, 3] * 4
    assert paired_bootstrap(same, same, seed=0) == (0.0, 0.0, 0.0)
    better = [1] * 20
    delta, lo, hi = paired_bootstrap(better, same, seed=0)
    assert delta == pytest.approx(1 - (1 + 0.5 + 0 + 1 + 1 / 3) / 5, abs=1e-4)
    assert 0 < lo < delta < hi  # always at least as good: the interval excludes 0
    assert paired_bootstrap(better, same, seed=0) == (delta, lo, hi)  # seeded
    one_fact_apart = [1] * 19 + [2]
    _, lo, hi = paired_bootstrap(one_fact_apart, [1] * 20, seed=0)
    assert lo < 0 <= hi  # a difference of one fact is a tie
    assert paired_bootstrap([], [], seed=0) == (None, None, None)


def test_compare_to_best_marks_ties():
    from tda.jobs.quality import compare_to_best

    variants = [Variant("a", "mean:hidden"), Variant("b", "max:hidden")]
    good, bad = {"ranks": [1] * 30}, {"ranks": [None] * 30}
    results = {
        "a": {"verbatim": {**good, "concept_rerank": {"ranks": [1] * 29 + [2]}}},
        "b": {"verbatim": {**bad, "concept_rerank": bad}},
    }
    rows = compare_to_best(variants, results, {"row": "a", "rerank": "none"}, seed=0)
    tied = {(r["row"], r["rerank"]) for r in rows if r["tied"]}
    assert tied == {("a", "none"), ("a", "concepts")}
    assert next(r for r in rows if r["row"] == "b")["delta"] == -1.0


def test_prune_list_for_counterfactual_reads_back_as_chunk_level(tmp_path):
    from tda.attribution.curation.prune import read_prune_list

    table = _Table(TEXTS)
    write_prune_list(tmp_path / "prune.parquet", table, {100, 103}, "oracle")
    pruned, level, digest = read_prune_list(str(tmp_path / "prune.parquet"))
    assert level == "chunk" and digest.startswith("sha256:")
    assert pruned["chunk_id"].to_pylist() == [100, 103]
    assert pruned["char_end"].to_pylist() == [len(TEXTS[0]), len(TEXTS[3])]
    assert set(pruned["reason"].to_pylist()) == {"oracle"}


def test_chunk_table_reads_spans_and_file_index(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "chunks").mkdir()
    rows = {"chunk_id": [5, 6], "source": ["s", "s"], "doc_id": ["a", "b"], "record_index": [0, 1],
            "char_start": [0, 3], "char_end": [3, 9], "text": ["x", None]}  # fmt: skip
    pq.write_table(pa.table(rows), tmp_path / "chunks" / "part-000002.parquet")
    table = ChunkTable(tmp_path)
    assert table.ids == [5, 6] and table.texts == ["x", ""] and table.position == {5: 0, 6: 1}
    assert [r["file_index"] for r in table.rows] == [2, 2] and table.rows[1]["char_end"] == 9


def test_chunk_table_relevant_is_the_facts_own_chunks_holding_its_place(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fact = make_facts(3, 0)[1]
    (tmp_path / "chunks").mkdir()
    docs = [f"fact-{fact.index}-0", f"fact-{fact.index}-0", f"fact-{fact.index}-p1",
            f"distractor-{fact.index}-0", f"fact-{fact.index + 10}-0"]  # fmt: skip
    texts = [f"in {fact.place}.", "later filler", f"is {fact.place}.", fact.place, fact.place]
    z = [0] * 5
    rows = {"chunk_id": [1, 2, 3, 4, 5], "source": ["s"] * 5, "doc_id": docs,
            "record_index": z, "char_start": z, "char_end": z, "text": texts}  # fmt: skip
    pq.write_table(pa.table(rows), tmp_path / "chunks" / "part-000000.parquet")
    assert ChunkTable(tmp_path).relevant(fact) == {1, 3}


def test_answer_log_prob_is_the_answer_tokens_log_probability(builtin_dir):
    import torch

    from tda.attribution.encoders import load_encoder

    encoder = load_encoder(builtin_dir, "cpu")
    tokenizer = encoder.load_tokenizer()
    prompt, answer = "The amber falcon guild was founded in", "Stonebridge"
    p = tokenizer.encode_batch([prompt])[0].ids.tolist()
    a = tokenizer.encode_batch([" " + answer])[0].ids.tolist()
    logits = encoder.forward(torch.tensor([p + a]), with_logits=True).logits[0]
    expected = sum(
        float(torch.log_softmax(logits[len(p) - 1 + j], -1)[tok]) for j, tok in enumerate(a)
    )
    got = answer_log_prob(encoder, prompt, answer)
    assert got == pytest.approx(expected, abs=1e-4) and got < 0


def test_metrics():
    m = _metrics([1, 2, None, 10])
    assert m == {"n": 4, "mrr": pytest.approx((1 + 0.5 + 0.1) / 4, abs=1e-4),
                 "recall@1": 0.25, "recall@10": 0.75}  # fmt: skip
    assert _metrics([])["mrr"] is None


def test_grad_cos_finds_the_chunk_whose_gradient_it_is(builtin_dir):
    from tda.attribution.encoders import load_encoder

    encoder = load_encoder(builtin_dir, "cpu")
    table = _Table(TEXTS)
    ranker = GradCosRanker(table, encoder, seed=0, width=1024)
    assert ranker.sketches.shape == (len(TEXTS), 1024)
    for i in (0, 2, 5):  # the chunk's own text as the output (empty prompt): cosine 1
        assert ranker.rank_output("", TEXTS[i], 3)[0] == table.ids[i]
    again = GradCosRanker(table, encoder, seed=0, width=1024)
    assert (again.sketches == ranker.sketches).all()  # seeded sketch, same vectors


def test_trak_finds_the_chunk_whose_gradient_it_is(builtin_dir):
    pytest.importorskip("dattri", reason="dattri is not installed (the TRAK baseline is optional)")
    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality import TRAKRanker

    encoder = load_encoder(builtin_dir, "cpu")
    encoder.model.requires_grad_(False)  # as the encoder is loaded (and Grad-Cos leaves it)
    table = _Table(TEXTS)
    ranker = TRAKRanker(table, encoder, seed=0, proj_dim=8, length=32, batch_size=8)
    for i in (0, 1, 2, 3):  # the distinct texts (the "Unrelated note" ones are near-copies)
        assert ranker.rank_output("", TEXTS[i], 3)[0] == table.ids[i]
    again = TRAKRanker(table, encoder, seed=0, proj_dim=8, length=32, batch_size=8)
    assert again.rank_output("", TEXTS[0], 16) == ranker.rank_output("", TEXTS[0], 16)


def test_markdown_tables_publish_every_row_and_the_counterfactual():
    m = {"n": 2, "mrr": 0.75, "recall@1": 0.5, "recall@10": 1.0, "distractor_first": 0.0}
    report = {
        "results": {
            "tda mean:hidden": {"verbatim": {**m, "concept_rerank": {**m, "mrr": 1.0}},
                                "paraphrase": {"n": 0, "mrr": None, "recall@1": None,
                                               "recall@10": None, "distractor_first": None}},
            "BM25": {"verbatim": m},
        },
        "counterfactual": {"oracle: true sources": {"chunks_removed": 6, "facts": 2,
                           "mean_delta_log_prob": -2.5, "facts_dropped": 2,
                           "share_of_oracle": 1.0}},
    }  # fmt: skip
    lines = markdown_tables(report).splitlines()
    assert (
        "| tda mean:hidden | verbatim | 2 | 0.750 | 0.500 | 1.000 | 0.000 | 1.000 | 0.500 |"
        in lines
    )
    assert not lines[0].startswith("Best")  # no best / default recorded: no verdict line
    report["best_tda"] = {"row": "x", "rerank": "none", "label": "tda x", "mrr": 0.8}
    report["default_tda"] = {"row": "y", "rerank": "concepts"}
    report["default_is_best"] = False
    lines = markdown_tables(report).splitlines()
    assert lines[0] == (
        "Best tda option by MRR (then recall@1, recall@10) over every scored fact and "
        "condition: **tda x** (MRR 0.800)."
    )
    assert "**y, --rerank concepts**" in lines[2] and "not the best" in lines[2]
    report["versus_best"] = [
        {"row": "x", "rerank": "none", "mrr": 0.8, "delta": 0.0, "lo": 0.0, "hi": 0.0,
         "tied": True},
        {"row": "y", "rerank": "concepts", "mrr": 0.75, "delta": -0.05, "lo": -0.1, "hi": 0.02,
         "tied": True},
    ]  # fmt: skip
    lines = markdown_tables(report).splitlines()
    assert "-0.050 against the best" in lines[2] and "**tied with the best**" in lines[2]
    assert "| y, --rerank concepts | 0.750 | -0.050 | [-0.100, +0.020] |" in lines
    assert "| tda mean:hidden | paraphrase | 0 | - | - | - | - | - | - |" in lines
    assert "| BM25 | verbatim | 2 | 0.750 | 0.500 | 1.000 | 0.000 | - | - |" in lines
    assert "| oracle: true sources | 6 | 2 | -2.500 | 2 | 1.000 |" in lines
