"""The quality harness's parts: planted facts, corpus, the rankers (one protocol),
re-ranking, scoring into typed rows, the counterfactual's removals, prune list and
log-probability, the tables; and a smoke run of its ``main`` with tiny options (the full
run is `make eval`; its table is in docs/quality.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from tda.jobs.quality.chunks import ChunkTable
from tda.jobs.quality.counterfactual import CounterfactualRow, removals, write_prune_list
from tda.jobs.quality.facts import build_corpus, make_facts, taught_paraphrase
from tda.jobs.quality.gradients import GradCosRanker
from tda.jobs.quality.outputs import Query, answer_log_prob
from tda.jobs.quality.rankers import BM25Ranker, ExactSpanRanker, RandomRanker, rerank
from tda.jobs.quality.report import Tables, markdown_tables
from tda.jobs.quality.scoring import (
    BestOption,
    Comparison,
    FactRank,
    MethodRow,
    Metrics,
    Option,
    best_option,
    compare_to_best,
    default_option,
    variant_options,
)
from tda.jobs.quality.variants import Variant, make_variants


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
    row = next(v for v in variants if v.name == default.row)
    want = (Pooling().name, None, IndexConfig(root="-").whiten, DEFAULT_QUERY_SPAN)
    assert (row.pooling, row.factory, row.whiten, row.query_span) == want
    assert default.rerank == DEFAULT_RERANK
    with pytest.raises(ValueError, match="no variant is the default"):
        default_option([v for v in variants if v.name != default.row])


def _m(ranks, concept_rerank=None) -> Metrics:
    """Metrics of a method that ranked each fact's first source at ``ranks``."""
    facts = [FactRank(i, r, False) for i, r in enumerate(ranks)]
    return replace(Metrics.of(facts), concept_rerank=concept_rerank)


def _row(name, **conditions) -> MethodRow:
    """A tda row: condition (underscores for spaces) -> (ranks, ranks with concepts)."""
    return MethodRow(name, {c.replace("_", " "): _m(r, _m(cr)) for c, (r, cr) in
                            conditions.items()})  # fmt: skip


def test_best_option_pools_every_condition_and_compares_the_concept_rerank():
    variants = [Variant("a", "mean:hidden"), Variant("b", "max:hidden")]
    results = [
        _row("a", verbatim=([1, 2], [1, 1]), long_prompt=([None, 2], [2, None]),
             paraphrase=([], [])),
        _row("b", verbatim=([1, 1], [3, 3]), long_prompt=([1, None], [3, 3]),
             paraphrase=([], [])),
    ]  # fmt: skip
    options = variant_options(variants)
    assert [(o.row, o.rerank) for o in options] == [
        ("a", "none"), ("a", "concepts"), ("b", "none"), ("b", "concepts")
    ]  # fmt: skip
    # over the four (condition, fact) pairs: a 0.5, a + concepts 0.625, b 0.75
    assert asdict(best_option(options, results)) == {
        "row": "b", "rerank": "none", "label": "b", "mrr": 0.75
    }  # fmt: skip
    results[1] = _row("b", verbatim=([1, 1], [3, 3]), long_prompt=([None, None], [3, 3]),
                      paraphrase=([], []))  # b: 0.5  # fmt: skip
    assert asdict(best_option(options, results)) == {
        "row": "a",
        "rerank": "concepts",
        "label": "a, --rerank concepts",
        "mrr": 0.625,
    }


def test_channel_rows_are_options_read_in_their_own_metrics():
    """A channel row attributed with a re-rank is one option, read in its own metrics;
    the product default is the fused row once it is scored."""
    from tda.jobs.quality.scoring import pooled_ranks
    from tda.jobs.quality.variants import channel_row

    variants = make_variants(["mean:hidden"], more=False)
    fused, spanned = channel_row(), channel_row(rerank="span")
    assert fused == "tda channels dense+span+lexical (default)"
    assert spanned == "tda channels dense+span+lexical, --rerank span"
    assert channel_row(("span",)) == "tda channels span"
    rows = [
        _row(variants[0].name, verbatim=([2, 2], [1, 1])),
        _row(variants[1].name, verbatim=([3, None], [None, None])),
        MethodRow(fused, {"verbatim": _m([1, 2])}),
        MethodRow(spanned, {"verbatim": _m([1, 1])}, rerank="span"),
    ]
    assert pooled_ranks(rows[3], "span") == [1, 1]
    with pytest.raises(ValueError, match="not attributed with --rerank concepts"):
        pooled_ranks(rows[3], "concepts")
    options = variant_options(variants) + [Option(r.name, r.rerank, r.name) for r in rows[2:]]
    best = best_option(options, rows)
    # the variant's concept re-rank ties the span re-rank at 1.0: the first listed wins
    assert (best.row, best.rerank, best.mrr) == (variants[0].name, "concepts", 1.0)
    assert default_option(variants, rows) == Option(fused, "none", fused)
    assert default_option(variants) == Option(variants[1].name, "none")  # dense only
    versus = compare_to_best(options, rows, best, seed=0)
    assert [c.label for c in versus][-2:] == [fused, spanned]
    assert next(c for c in versus if c.row == spanned).tied


def test_long_prompt_ends_with_the_verbatim_prompt_and_is_seeded():
    from tda.jobs.quality.facts import background_sentences, long_prompt

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
    from tda.jobs.quality.scoring import paired_bootstrap

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
    variants = [Variant("a", "mean:hidden"), Variant("b", "max:hidden")]
    results = [
        _row("a", verbatim=([1] * 30, [1] * 29 + [2])),
        _row("b", verbatim=([None] * 30, [None] * 30)),
    ]
    rows = compare_to_best(variant_options(variants), results, Option("a", "none"), seed=0)
    tied = {(r.row, r.rerank) for r in rows if r.tied}
    assert tied == {("a", "none"), ("a", "concepts")}
    assert next(r for r in rows if r.row == "b").delta == -1.0


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
    fact = make_facts(3, 0)[1]
    assert _fact_table(tmp_path, fact).relevant(fact) == {1, 3}


def test_chunk_table_relevant_takes_both_chunks_of_a_place_cut_between_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fact = make_facts(3, 0)[1]
    (tmp_path / "chunks").mkdir()
    cut = 3  # "... founded in Mil" | "lhaven. ..."
    text = f"{fact.entity} was founded in {fact.place}. Then filler. More filler."
    at = text.index(fact.place) + cut
    parts = [text[:at], text[at : at + 14], text[at + 14 :]]
    starts = [0, at, at + 14]
    rows = {"chunk_id": [7, 8, 9], "source": ["s"] * 3, "doc_id": [f"fact-{fact.index}-0"] * 3,
            "record_index": [0] * 3, "char_start": starts,
            "char_end": [s + len(p) for s, p in zip(starts, parts, strict=True)],
            "text": parts}  # fmt: skip
    pq.write_table(pa.table(rows), tmp_path / "chunks" / "part-000000.parquet")
    assert fact.place not in parts[0] and fact.place not in parts[1]
    assert ChunkTable(tmp_path).relevant(fact) == {7, 8}


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
    m = _m([1, 2, None, 10])
    assert (m.n, m.mrr, m.recall_at_1, m.recall_at_10) == (
        4, pytest.approx((1 + 0.5 + 0.1) / 4, abs=1e-4), 0.25, 0.75
    )  # fmt: skip
    assert _m([]).mrr is None


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
    from tda.jobs.quality.gradients import TRAKRanker

    encoder = load_encoder(builtin_dir, "cpu")
    encoder.model.requires_grad_(False)  # as the encoder is loaded (and Grad-Cos leaves it)
    table = _Table(TEXTS)
    ranker = TRAKRanker(table, encoder, seed=0, proj_dim=8, length=32, batch_size=8)
    for i in (0, 1, 2, 3):  # the distinct texts (the "Unrelated note" ones are near-copies)
        assert ranker.rank_output("", TEXTS[i], 3)[0] == table.ids[i]
    again = TRAKRanker(table, encoder, seed=0, proj_dim=8, length=32, batch_size=8)
    assert again.rank_output("", TEXTS[0], 16) == ranker.rank_output("", TEXTS[0], 16)
    # outputs scored in one batch (one random projection) rank as when asked one by one
    pairs = [("", TEXTS[i]) for i in (1, 2, 3)] + [("The amber falcon guild", " was founded")]
    batched = TRAKRanker(table, encoder, seed=0, proj_dim=8, length=32, batch_size=8)
    batched.prepare(pairs)
    assert set(batched._scored) == set(pairs)
    for prompt, output in pairs:
        assert batched.rank_output(prompt, output, 16) == ranker.rank_output(prompt, output, 16)


def test_markdown_tables_publish_every_row_and_the_counterfactual():
    m = {"n": 2, "mrr": 0.75, "recall_at_1": 0.5, "recall_at_10": 1.0, "distractor_first": 0.0}
    rows = [
        MethodRow("tda mean:hidden", {
            "verbatim": Metrics(**m, concept_rerank=Metrics(**{**m, "mrr": 1.0})),
            "paraphrase": Metrics(n=0, mrr=None, recall_at_1=None, recall_at_10=None,
                                  distractor_first=None),
        }),
        MethodRow("BM25", {"verbatim": Metrics(**m)}),
    ]  # fmt: skip
    oracle = CounterfactualRow("oracle: true sources", chunks_removed=6, facts=2,
                               mean_delta_log_prob=-2.5, facts_dropped=2,
                               share_of_oracle=1.0)  # fmt: skip
    report = Tables(rows, counterfactual=[oracle])
    lines = markdown_tables(report).splitlines()
    assert (
        "| tda mean:hidden | verbatim | 2 | 0.750 | 0.500 | 1.000 | 0.000 | 1.000 | 0.500 |"
        in lines
    )
    assert not lines[0].startswith("Best")  # no best / default recorded: no verdict line
    report = replace(
        report, best=BestOption("tda x", "none", mrr=0.8), default=Option("y", "concepts")
    )
    assert not report.default_is_best
    lines = markdown_tables(report).splitlines()
    assert lines[0] == (
        "Best tda option by MRR (then recall@1, recall@10) over every scored item and "
        "condition: **tda x** (MRR 0.800)."
    )
    assert "**y, --rerank concepts**" in lines[2] and "not the best" in lines[2]
    versus = [
        Comparison("tda x", "none", mrr=0.8, delta=0.0, lo=0.0, hi=0.0, tied=True),
        Comparison("y", "concepts", mrr=0.75, delta=-0.05, lo=-0.1, hi=0.02, tied=True),
    ]
    report = replace(report, versus_best=versus)
    lines = markdown_tables(report).splitlines()
    assert "-0.050 against the best" in lines[2] and "**tied with the best**" in lines[2]
    assert "| y, --rerank concepts | 0.750 | -0.050 | [-0.100, +0.020] |" in lines
    assert "| tda mean:hidden | paraphrase | 0 | - | - | - | - | - | - |" in lines
    assert "| BM25 | verbatim | 2 | 0.750 | 0.500 | 1.000 | 0.000 | - | - |" in lines
    assert "| oracle: true sources | 6 | 2 | -2.500 | 2 | 1.000 |" in lines


def _fact_table(tmp_path, fact):
    """A ChunkTable of five chunks: 1 and 3 are ``fact``'s sources, 4 its distractor."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "chunks").mkdir()
    docs = [f"fact-{fact.index}-0", f"fact-{fact.index}-0", f"fact-{fact.index}-p1",
            f"distractor-{fact.index}-0", f"fact-{fact.index + 10}-0"]  # fmt: skip
    texts = [f"in {fact.place}.", " later filler", f"is {fact.place}.", fact.place, fact.place]
    # chunks 1 and 2 are one document's two chunks; the others a document each
    starts = [0, len(texts[0]), 0, 0, 0]
    rows = {"chunk_id": [1, 2, 3, 4, 5], "source": ["s"] * 5, "doc_id": docs,
            "record_index": [0] * 5, "char_start": starts,
            "char_end": [s + len(t) for s, t in zip(starts, texts, strict=True)],
            "text": texts}  # fmt: skip
    pq.write_table(pa.table(rows), tmp_path / "chunks" / "part-000000.parquet")
    return ChunkTable(tmp_path)


def test_score_ranks_each_fact_against_its_sources_and_distractors(tmp_path):
    from tda.jobs.quality.outputs import Outputs
    from tda.jobs.quality.scoring import score

    fact = make_facts(3, 0)[1]
    table = _fact_table(tmp_path, fact)
    assert table.distractors(fact) == {4}
    verbatim = Query("verbatim", fact, fact.verbatim_prompt, f" {fact.place}.")
    longer = Query("long prompt", fact, "Some words. " + fact.verbatim_prompt, f" {fact.place}.")
    outputs = Outputs({"verbatim": [verbatim], "long prompt": [longer], "paraphrase": []},
                      {"verbatim": 1, "long prompt": 1, "paraphrase": 1})  # fmt: skip
    row = score("m", {verbatim: [2, 3, 1], longer: [4, 5, 1]}, outputs, table)
    # the passage conditions are always there; without probes, nothing scored in them
    assert list(row.conditions) == [
        "verbatim", "long prompt", "paraphrase", "long output", "near duplicate"
    ]  # fmt: skip
    assert row.conditions["long output"] == Metrics(0, None, None, None, None, ())
    assert row.conditions["verbatim"] == Metrics(1, 0.5, 0.0, 1.0, 0.0, (2,))
    assert row.conditions["long prompt"] == Metrics(1, 0.3333, 0.0, 1.0, 1.0, (3,))
    assert row.conditions["paraphrase"] == Metrics(0, None, None, None, None, ())
    assert row.conditions["verbatim"].to_json() == {
        "n": 1, "mrr": 0.5, "recall@1": 0.0, "recall@10": 1.0, "distractor_first": 0.0,
        "ranks": [2],
    }  # fmt: skip


def test_counterfactual_retrains_with_the_original_model_s_tokenizer(
    tmp_path, builtin_dir, monkeypatch
):
    """Every retraining of the counterfactual keeps the original model's tokenizer, so
    only the training data differs (a tokenizer learned again on a pruned corpus cuts
    the removed facts' names into more tokens and deepens their drops by itself)."""
    import shutil
    from pathlib import Path

    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality.commands import Tda, Training
    from tda.jobs.quality.counterfactual import run_counterfactual

    fact = make_facts(3, 0)[1]
    (tmp_path / "t").mkdir()
    table = _fact_table(tmp_path / "t", fact)
    query = Query("verbatim", fact, fact.verbatim_prompt, f" {fact.place}.")
    calls = []

    def train(self, corpus: Path, model: Path) -> None:
        calls.append((model.parent.name, self.training))
        shutil.copytree(builtin_dir, model)  # the same weights: every change is 0

    monkeypatch.setattr(Tda, "run", lambda self, *args: None)  # tda prune apply
    monkeypatch.setattr(Tda, "train", train)
    tda = Tda(1, Training(5, 0, 0.003, 128))
    rows = run_counterfactual(tda, 2, 0, 1, [query], {"m": {query: [2, 4]}}, table,
                              load_encoder(builtin_dir, "cpu"), tmp_path / "root",
                              tmp_path / "corpus", tmp_path / "out", Path(builtin_dir))  # fmt: skip
    assert sorted(name for name, _ in calls) == [f"counterfactual-{i}" for i in range(3)]
    assert {t.tokenizer for _, t in calls} == {builtin_dir}
    assert {(t.steps, t.seed, t.lr, t.max_seq) for _, t in calls} == {(5, 0, 0.003, 128)}
    assert tda.training.tokenizer is None  # the caller's Tda is not changed
    assert [r.name for r in rows][-1] == "nothing (the original model)"
    assert all(r.mean_delta_log_prob == 0 for r in rows)


def test_counterfactual_removals_in_table_order(tmp_path):
    facts = make_facts(3, 0)
    table = _fact_table(tmp_path, facts[1])
    queries = [Query("verbatim", f, f.verbatim_prompt, f" {f.place}.") for f in facts[:2]]
    ranked = {
        "tda best": {queries[0]: [5, 2, 1], queries[1]: [2, 3]},
        "BM25": {queries[0]: [1, 2], queries[1]: [3, 1]},
    }
    cut = removals(2, queries, ranked, table, seed=0)
    assert list(cut) == ["tda best top-2", "BM25 top-2", "oracle: true sources",
                         "random 3 chunks", "nothing (the original model)"]  # fmt: skip
    assert cut["tda best top-2"] == {5, 2, 3} and cut["BM25 top-2"] == {1, 2, 3}
    assert cut["oracle: true sources"] == {1, 3}  # fact 1's sources; fact 0 has none here
    assert len(cut["random 3 chunks"]) == 3 and cut["random 3 chunks"] <= set(table.ids)
    assert cut["nothing (the original model)"] == set()
    assert removals(2, queries, ranked, table, seed=0) == cut  # seeded


def test_every_method_is_a_ranker_of_outputs():
    from tda.jobs.quality.rankers import BM25Rerank, Prefetch, Ranker, rank_all

    table = _Table(TEXTS)
    prompt, output = "The amber falcon guild was founded in", " Stonebridge."
    bm25 = BM25Ranker(table)

    class Reversed:
        """A stand-in dense ranker: every chunk, last first; counts its calls."""

        calls = 0

        def rank_output(self, prompt, output, k):
            Reversed.calls += 1
            return list(reversed(table.ids))[:k]

    dense = Prefetch(Reversed(), fetch=len(table.ids))
    rankers: list[Ranker] = [bm25, ExactSpanRanker(table), RandomRanker(table, 0), dense,
                             BM25Rerank(dense, bm25)]  # fmt: skip
    for ranker in rankers:
        ranked = ranker.rank_output(prompt, output, 3)
        assert len(ranked) == 3 and set(ranked) <= set(table.ids)
    assert bm25.rank_output(prompt, output, 1) == [100]  # the planted statement
    assert dense.rank_output(prompt, output, 2) == [115, 114]
    # the hybrid re-ranks the kept dense candidates (source last): no second search
    assert BM25Rerank(dense, bm25).rank_output(prompt, output, 1) == [100]
    assert Reversed.calls == 1
    facts = make_facts(2, 0)
    queries = [Query("verbatim", f, f.verbatim_prompt, " x") for f in facts]

    class Fixed:
        def __iter__(self):
            return iter(queries)

    assert list(rank_all(bm25, Fixed(), k=2)) == queries


def test_smoke_harness_main_writes_every_row(tmp_path, monkeypatch, capsys):
    """The harness's ``main`` end to end with tiny options (real ``tda`` commands, a model
    trained for a few steps): every row of the tables is written and holds what the
    planted corpus implies. A model trained in seconds reproduces no fact, so the model's
    answer is replaced by the planted one; the passage outputs are given, not generated,
    so they are scored whatever the model. About 45 s of CPU (train 2 steps, chunk,
    embed, index build with the channels as subprocesses, then every ranker); about a
    minute on 2 idle cores."""
    from tda.jobs.quality import harness, outputs
    from tda.jobs.quality.variants import channel_row

    monkeypatch.setattr(
        outputs, "reproduce", lambda encoder, tokenizer, fact, prompt: f" {fact.place}. The"
    )
    report = harness.main(
        ["--out", str(tmp_path / "eval"), "--facts", "2", "--copies", "2", "--steps", "2",
         "--max-seq", "64", "--pooling", "mean:hidden", "--no-variants", "--gradients", "none",
         "--counterfactual-k", "0", "--jobs", "1", "--passages", "2"]
    )  # fmt: skip
    out = tmp_path / "eval"
    written = json.loads((out / "quality.json").read_text())
    assert written == json.loads(json.dumps(report.to_json()))
    assert (out / "quality.md").read_text() == markdown_tables(report.tables)
    reproduced = {"verbatim": 2, "long prompt": 2, "short output": 2, "paraphrase": 1}
    assert written["reproduced"] == reproduced
    assert written["chunks"] == len(ChunkTable(out / "root-chunks").ids) > 0
    best = harness.best_option(
        harness.variant_options(harness.make_variants(["mean:hidden"], more=False)),
        report.tables.rows,
    ).row  # the hybrids re-rank the best dense option's candidates
    fused = channel_row()
    channel_rows = [
        "tda channels dense", "tda channels span", "tda channels lexical",
        "tda channels dense+span", "tda channels dense+lexical", "tda channels span+lexical",
        fused, f"{channel_row(rerank='concepts')}", f"{channel_row(rerank='span')}",
        f"{channel_row(rerank='evidence')}",
    ]  # fmt: skip
    assert channel_rows[-3:] == [
        "tda channels dense+span+lexical, --rerank concepts",
        "tda channels dense+span+lexical, --rerank span",
        "tda channels dense+span+lexical, --rerank evidence",
    ]
    assert list(written["results"]) == [
        "tda mean:hidden, query span chunk",
        "tda mean:hidden, query span output",
        *channel_rows,
        f"hybrid: {best}, --rerank span (top 100)",
        f"hybrid: {best} top 100, BM25 re-rank",
        "BM25",
        "exact span",
        "random",
    ]
    conditions = {c["condition"]: c for c in written["conditions"]}
    assert list(conditions) == [
        "verbatim", "long prompt", "short output", "paraphrase", "long output", "near duplicate"
    ]  # fmt: skip
    # one passage each, cut into probes of >= 3 output chunks, each a scored item
    passage_items = {}
    for c in ("long output", "near duplicate"):
        info = conditions[c]
        assert info["scored"] >= 1 and info["items"] >= 3 * info["scored"], c
        assert info["item_tokens"][1] == 64 and info["prompt_tokens"] > 64, c
        passage_items[c] = info["items"]
    assert conditions["short output"]["item_tokens"][1] <= 7
    assert conditions["short output"]["prompt_tokens"] >= 50
    assert conditions["long prompt"]["item_tokens"] == [
        conditions["verbatim"]["item_tokens"][0], conditions["verbatim"]["item_tokens"][1]
    ]  # fmt: skip
    for name, by_condition in written["results"].items():
        assert list(by_condition) == list(conditions), name
        assert [m["n"] for m in by_condition.values()] == [
            *reproduced.values(), *passage_items.values()
        ], name  # fmt: skip
        variant = name.startswith("tda mean:hidden")
        assert ("concept_rerank" in by_condition["verbatim"]) == variant, name
        assert (
            "both@10" in by_condition["near duplicate"]
            and "both@10" not in by_condition["long output"]
        )
    # the verbatim statement is in its source's text: both lexical methods find it first;
    # a passage output chunk is in its sources' text: they find a source first, and both
    # copies of the near duplicate (same text, same score)
    for name in ("BM25", "exact span", "tda channels lexical"):
        results = written["results"][name]
        if name != "tda channels lexical":
            assert results["verbatim"]["ranks"] == [1, 1], name
        for c in ("long output", "near duplicate"):
            assert results[c]["mrr"] == 1.0, (name, c)
        assert results["near duplicate"]["both@10"] == 1.0, name
    # the product default fuses every channel: each passage chunk's sources in its top 10
    for c in ("long output", "near duplicate"):
        assert written["results"][fused][c]["recall@10"] == 1.0, c
    assert written["default_tda"] == {"row": fused, "rerank": "none", "label": fused}
    variant_options = [
        (f"tda mean:hidden, query span {span}", rr)
        for span in ("chunk", "output")
        for rr in ("none", "concepts")
    ]
    rerank = {fused: "none", channel_rows[-3]: "concepts", channel_rows[-2]: "span",
              channel_rows[-1]: "evidence"}  # fmt: skip
    assert [(c["row"], c["rerank"]) for c in written["versus_best"]] == variant_options + [
        (name, rerank.get(name, "none")) for name in channel_rows
    ]
    assert written["counterfactual"] is None
    # the default's confidence levels cover every item it scored
    levels = {c["level"]: c for c in written["confidence"]}
    assert list(levels) == ["verbatim", "lexical", "weak", "none"]
    assert sum(c["items"] for c in levels.values()) == sum(reproduced.values()) + sum(
        passage_items.values()
    )
    md = (out / "quality.md").read_text().splitlines()
    assert md[0].startswith("Best tda option by MRR")
    assert "| BM25 | verbatim | 2 | 1.000 | 1.000 | 1.000 | 0.000 | - | - |" in md
    assert md[-1] == (
        "| counterfactual: the default's share beats exact span's | - "
        "| not measured (counterfactual not run) |"
    )
    assert f"Targets ({fused}):" in md and "| long output: recall@10 >= 0.98 | 1.000 | met |" in md
    printed = capsys.readouterr().out
    assert f"facts reproduced: {reproduced}" in printed
    assert "$ tda.jobs.cli model train" in printed and "$ tda.jobs.cli index build" in printed
    # the default index holds the channels `tda index build` builds by default
    (root,) = [p for p in out.glob("root-*") if p.name != "root-chunks"]
    manifest = json.loads((root / "index" / "manifest.json").read_text())
    assert [c["name"] for c in manifest["channels"]] == ["span", "lexical"]


def test_reproduce_keeps_an_output_only_when_it_starts_with_the_place(builtin_dir):
    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality.facts import Fact
    from tda.jobs.quality.outputs import probe_outputs, reproduce, reproduced_verbatim

    encoder = load_encoder(builtin_dir, "cpu")
    tokenizer = encoder.load_tokenizer()
    fact = make_facts(1, 0)[0]
    said = reproduce(encoder, tokenizer, Fact(0, fact.entity, "", "x"), fact.verbatim_prompt)
    assert said is not None  # every output starts with the empty place
    place = said.split()[0]
    known = Fact(0, fact.entity, place, fact.thing)  # a fact whose place the model says
    assert reproduce(encoder, tokenizer, known, fact.verbatim_prompt) == said
    assert reproduce(encoder, tokenizer, fact, fact.verbatim_prompt) is None
    assert reproduced_verbatim(encoder, tokenizer, [fact, known]) == {0: said}
    probed = probe_outputs(encoder, [known], paraphrase_docs=0, seed=0)
    assert probed.probed == {"verbatim": 1, "long prompt": 1, "short output": 1, "paraphrase": 1}
    assert [q.output for q in probed.queries["verbatim"]] == [said]
    # the short output: the place alone (said has no full stop right after it, or has)
    short = probed.queries["short output"]
    assert [q.output for q in short] in ([], [said[: said.index(place) + len(place) + 1]],
                                         [said[: said.index(place) + len(place)]])  # fmt: skip
    if short:
        assert tokenizer.encode_batch([short[0].prompt])[0].n_tokens >= 50
