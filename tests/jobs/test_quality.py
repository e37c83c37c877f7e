"""The quality harness's parts: planted facts, corpus, baselines and metrics (the full
run is `make eval`, ~10 minutes; its table is in docs/quality.md)."""

from __future__ import annotations

import json

import pytest

from tda.jobs.quality import (
    BM25Ranker,
    ExactSpanRanker,
    GradCosRanker,
    RandomRanker,
    _metrics,
    build_corpus,
    make_facts,
)


class _Table:
    def __init__(self, texts):
        self.texts = texts
        self.ids = [100 + i for i in range(len(texts))]
        self.rows = [{"chunk_id": i, "source": "s", "doc_id": f"d{i}", "text": t}
                     for i, t in zip(self.ids, texts, strict=True)]  # fmt: skip


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


def test_baselines_rank_the_matching_chunk_first():
    table = _Table(TEXTS)
    query = "The amber falcon guild was founded in Stonebridge"
    assert BM25Ranker(table).rank(query, 2)[0] == 100
    spans = ExactSpanRanker(table).rank(query, 4)
    assert spans[0] == 100  # 9 words in a row, against 5 for the distractor
    assert 102 not in spans  # no shared 3-word run at all
    picked = RandomRanker(table, 0).rank(query, 4)
    assert len(set(picked)) == 4 and set(picked) <= set(table.ids)


def test_metrics():
    m = _metrics([1, 2, None, 10])
    assert m == {"n": 4, "mrr": pytest.approx((1 + 0.5 + 0.1) / 4, abs=1e-4),
                 "recall@1": 0.25, "recall@10": 0.75}  # fmt: skip
    assert _metrics([])["mrr"] is None


def test_grad_cos_finds_the_chunk_whose_gradient_it_is(builtin_dir):
    from tda.attribution.encoder import load_encoder

    encoder = load_encoder(builtin_dir, "cpu")
    table = _Table(TEXTS)
    ranker = GradCosRanker(table, encoder, seed=0, width=1024)
    assert ranker.sketches.shape == (len(TEXTS), 1024)
    for i in (0, 2, 5):  # the chunk's own text as the output (empty prompt): cosine 1
        assert ranker.rank_output("", TEXTS[i], 3)[0] == table.ids[i]
    again = GradCosRanker(table, encoder, seed=0, width=1024)
    assert (again.sketches == ranker.sketches).all()  # seeded sketch, same vectors
