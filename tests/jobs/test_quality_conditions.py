"""The quality harness's newer conditions and tables: passages (long output, near
duplicate) with their probes and relevance, the short output, per-chunk rankings, the
default's confidence precision and the targets table."""

from __future__ import annotations

import itertools
import json

import pytest

from tda.jobs.quality.chunks import ChunkTable
from tda.jobs.quality.counterfactual import CounterfactualRow
from tda.jobs.quality.facts import (
    MIN_SHORT_PROMPT_TOKENS,
    build_corpus,
    long_prompt,
    make_facts,
    short_answer,
    short_prompt,
)
from tda.jobs.quality.outputs import Outputs, Query, describe_conditions
from tda.jobs.quality.passages import (
    OFFSET_TOKENS,
    OUTPUT_TOKENS,
    UNIQUE_WORDS,
    Passage,
    PassageError,
    Probe,
    make_passages,
    make_probes,
    output_spans,
)
from tda.jobs.quality.rankers import (
    BM25Ranker,
    BM25Rerank,
    ExactSpanRanker,
    Prefetch,
    RandomRanker,
    chunk_query,
    rank_probes,
)
from tda.jobs.quality.report import Tables, markdown_tables, targets
from tda.jobs.quality.scoring import (
    FactRank,
    MethodRow,
    Metrics,
    Option,
    confidence_precision,
    score,
)


def _write_chunks(root, docs: dict[str, str], bounds: dict[str, list[int]]) -> ChunkTable:
    """A ChunkTable of ``docs`` (doc id -> text) cut at the character ``bounds`` of each
    (chunk ids from 1, in doc order), with a chunk manifest of chunk size 4."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "chunks").mkdir(parents=True)
    cols = {k: [] for k in ("chunk_id", "source", "doc_id", "record_index", "char_start",
                            "char_end", "text")}  # fmt: skip
    for record, (doc, text) in enumerate(docs.items()):
        cuts = bounds[doc] + [len(text)]
        for a, b in itertools.pairwise(cuts):
            cols["chunk_id"].append(len(cols["chunk_id"]) + 1)
            cols["source"].append(doc.split("-")[0])
            cols["doc_id"].append(doc)
            cols["record_index"].append(record)
            cols["char_start"].append(a)
            cols["char_end"].append(b)
            cols["text"].append(text[a:b])
    pq.write_table(pa.table(cols), root / "chunks" / "part-000000.parquet")
    (root / "chunks" / "manifest.json").write_text(json.dumps({"chunking": {"chunk_size": 4}}))
    return ChunkTable(root)


def test_passages_are_seeded_unique_text_and_odd_ones_mirrored(tmp_path):
    from tda.attribution.rerank import words
    from tda.jobs.quality.facts import background_sentences

    passages = make_passages(4, seed=0)
    assert passages == make_passages(4, seed=0) != make_passages(4, seed=1)
    assert [p.mirrored for p in passages] == [False, True, False, True]
    assert [p.condition for p in passages] == ["long output", "near duplicate"] * 2
    assert passages[1].copies == ("passage-1", "mirror-1") and passages[0].copies == ("passage-0",)
    assert all(len(p.text) >= 3000 for p in passages)

    def grams(text):
        w = words(text)
        return {tuple(w[i : i + UNIQUE_WORDS]) for i in range(len(w) - UNIQUE_WORDS + 1)}

    # no run of UNIQUE_WORDS words shared with the filler, the background or each other
    others = set().union(*(grams(s) for s in background_sentences()))
    from pydoc_data.topics import topics

    others |= set().union(*(grams(t[:4000]) for t in topics.values() if len(t) > 2000))
    seen: set = set()
    for p in passages:
        mine = grams(p.text)
        assert not mine & others and not mine & seen
        seen |= mine
    with pytest.raises(PassageError, match="ask for fewer"):
        make_passages(1000, seed=0)


def test_corpus_adds_passage_files_and_leaves_the_others_unchanged(tmp_path):
    facts = make_facts(3, 0)
    plain = build_corpus(tmp_path / "a", facts, copies=2, seed=0, paraphrase_docs=2, lead=2)
    passages = make_passages(2, seed=0)
    corpus = build_corpus(tmp_path / "b", facts, copies=2, seed=0, paraphrase_docs=2, lead=2,
                          passages=passages)  # fmt: skip
    for name in ("background", "facts", "distractors"):
        assert (corpus / f"{name}.jsonl").read_bytes() == (plain / f"{name}.jsonl").read_bytes()
    stored = [json.loads(x) for x in (corpus / "passages.jsonl").read_text().splitlines()]
    mirror = [json.loads(x) for x in (corpus / "mirror.jsonl").read_text().splitlines()]
    assert stored == [{"id": p.doc_id, "text": p.text} for p in passages]
    assert mirror == [{"id": "mirror-1", "text": passages[1].text}]
    assert not (plain / "passages.jsonl").exists()


def test_short_prompt_holds_50_tokens_and_short_answer_keeps_the_place(builtin_dir):
    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality.facts import background_sentences

    tokenizer = load_encoder(builtin_dir, "cpu").load_tokenizer()

    def count(text):
        return tokenizer.encode_batch([text])[0].n_tokens

    sentences = background_sentences()
    for fact in make_facts(6, 0):
        prompt = short_prompt(fact, sentences, 0, count)
        assert count(prompt) >= MIN_SHORT_PROMPT_TOKENS
        assert prompt.endswith(" " + fact.verbatim_prompt)
        # the long prompt's background, with more sentences only when it is too short
        two = long_prompt(fact, sentences, 0)
        assert prompt == two or (count(two) < MIN_SHORT_PROMPT_TOKENS and len(prompt) > len(two))
    assert short_answer(" Ashgate. The first", "Ashgate") == " Ashgate."
    assert short_answer(" Ashgate was", "Ashgate") == " Ashgate"


def _passage_table(tmp_path, tokenizer, passage: Passage, chunk_size: int) -> ChunkTable:
    """``passage`` (and its mirror) chunked every ``chunk_size`` tokens of ``tokenizer``,
    as the chunk stage cuts it."""
    (encoded,) = tokenizer.encode_batch([passage.text])
    starts = encoded.char_starts(range(encoded.n_tokens))
    bounds = [starts[t] for t in range(0, encoded.n_tokens, chunk_size)]
    docs = {doc: passage.text for doc in passage.copies}
    return _write_chunks(tmp_path, docs, {doc: bounds for doc in docs})


def test_long_output_probes_cut_several_unaligned_chunks_per_passage(tmp_path, builtin_dir):
    from tda.attribution.encoders import load_encoder

    tokenizer = load_encoder(builtin_dir, "cpu").load_tokenizer()
    passage = make_passages(2, seed=0)[1]  # mirrored: both copies chunked alike
    table = _passage_table(tmp_path, tokenizer, passage, 64)
    probes = make_probes([passage], table, tokenizer, 64)
    assert probes["long output"] == [] and len(probes["near duplicate"]) >= 1
    starts = {r["char_start"] for r in table.doc_chunks(passage.doc_id)}
    for probe in probes["near duplicate"]:
        assert probe.copies == passage.copies
        assert probe.prompt + probe.output == passage.text[: probe.offset + len(probe.output)]
        assert len(probe.prompt) == probe.offset and probe.offset not in starts  # unaligned
        n = tokenizer.encode_batch([probe.output])[0].n_tokens
        assert abs(n - OUTPUT_TOKENS) <= 2
        # >= 3 output chunks, each one scored item, tiling the output
        assert len(probe.spans) >= 3
        assert probe.spans[0][0] == 0 and probe.spans[-1][1] == len(probe.output)
        assert all(a[1] == b[0] for a, b in zip(probe.spans, probe.spans[1:], strict=False))
        # every output chunk overlaps two training chunks of each copy (17 tokens in)
        for a, b in probe.spans[:-1]:
            sources = table.span_sources(probe.copies, probe.offset + a, probe.offset + b)
            assert sorted(sources) == sorted(probe.copies)
            assert all(len(ids) == 2 for ids in sources.values())
    first = probes["near duplicate"][0]
    (encoded,) = tokenizer.encode_batch([passage.text])
    assert first.offset == encoded.char_starts([64 + OFFSET_TOKENS])[0]
    # another tokenizer's grid, or another chunk size: refused
    with pytest.raises(PassageError, match="do not start every 32 tokens"):
        make_probes([passage], table, tokenizer, 32)


def test_span_sources_are_the_overlapping_chunks_of_every_copy_and_identical_texts(tmp_path):
    text = "aaaa bbbb cccc dddd eeee ffff"
    docs = {"passage-1": text, "mirror-1": text, "bg-0": "bbbb cccc ", "bg-1": "zzzz"}
    bounds = {"passage-1": [0, 5, 15, 25], "mirror-1": [0, 5, 15, 25], "bg-0": [0], "bg-1": [0]}
    table = _write_chunks(tmp_path, docs, bounds)
    # chunks: passage-1 1-4, mirror-1 5-8, bg-0 9 ("bbbb cccc " = passage chunk 2's text)
    assert [r["chunk_id"] for r in table.doc_chunks("mirror-1")] == [5, 6, 7, 8]
    assert table.span_sources(("passage-1", "mirror-1"), 12, 16) == {
        "passage-1": {2, 3}, "mirror-1": {6, 7}, "bg-0": {9}
    }  # fmt: skip
    # a copy not named is still relevant: its chunk's text is identical
    assert table.span_sources(("passage-1",), 25, 29) == {"passage-1": {4}, "mirror-1": {8}}
    assert table.span_sources(("bg-1",), 0, 2) == {"bg-1": {10}}
    assert table.span_sources(("passage-1", "mirror-1"), 15, 25) == {
        "passage-1": {3}, "mirror-1": {7}
    }  # fmt: skip  # character ranges end exclusive
    assert table.chunk_size == 4

    # scored per output chunk: relevance, and whether both copies came back
    probe = Probe("near duplicate", 1, ("passage-1", "mirror-1"), "aaaa ", text[5:], 5,
                  ((0, 10), (10, 20), (20, 24)))  # fmt: skip
    outputs = Outputs({"verbatim": []}, {"verbatim": 0},
                      {"long output": [], "near duplicate": [probe]})  # fmt: skip
    ranked = [[6, 2, 11], [11, 3, 1], [12, 13]]  # chunk 1: both; chunk 2: one copy; 3: none
    row = score("m", {}, outputs, table, {probe: ranked})
    m = row.conditions["near duplicate"]
    assert m.ranks == (1, 2, None) and m.n == 3
    assert m.distractor_first is None  # a passage has no distractor documents
    assert m.both_at_10 == round(1 / 3, 4) and m.to_json()["both@10"] == m.both_at_10
    assert (
        row.conditions["long output"].n == 0
        and "both@10" not in row.conditions["verbatim"].to_json()
    )
    assert FactRank.of(0, [6, 2], {2, 6}, set(), [{2}, {6}]).both is True
    assert FactRank.of(0, [6, 2], {2, 6}, set()).both is None


def test_chunk_rankers_rank_each_output_chunk(tmp_path):
    text = ("The amber falcon guild kept copper bells in the northern tower. " * 3
            + "Rivers run under the old stone bridge near the quiet mill. " * 3)  # fmt: skip
    half = text.index("Rivers")
    docs = {"passage-0": text, "bg-0": "Loops, classes and exceptions in Python. " * 4}
    table = _write_chunks(tmp_path, docs, {"passage-0": [0, half], "bg-0": [0]})
    output = text[20:]
    spans = ((0, half - 20), (half - 20, len(output)))
    before, chunk = chunk_query(text[:20], output, spans[1], context=3)
    assert chunk == output[spans[1][0] :] and before == "the northern tower. "
    assert chunk_query("", "one two", (4, 7)) == ("one ", "two")  # fewer words: all of them
    bm25, exact = BM25Ranker(table), ExactSpanRanker(table)
    for ranker in (bm25, exact):
        assert [r[0] for r in ranker.rank_chunks(text[:20], output, spans, 2)] == [1, 2]
    drawn = RandomRanker(table, 0).rank_chunks("", output, spans, 2)
    assert len(drawn) == 2 and all(len(set(d)) == 2 for d in drawn)

    class Reversed:
        """A stand-in dense ranker: every chunk, last first."""

        def rank_output(self, prompt, output, k):
            return list(reversed(table.ids))[:k]

        def rank_chunks(self, prompt, output, spans, k):
            return [list(reversed(table.ids))[:k] for _ in spans]

    dense = Prefetch(Reversed(), fetch=3)
    assert dense.rank_chunks("", output, spans, 1) == [[3], [3]]
    hybrid = BM25Rerank(dense, bm25).rank_chunks(text[:20], output, spans, 1)
    assert hybrid == [[1], [2]]  # BM25 lifts each chunk's own source out of the candidates
    outputs = Outputs({}, {}, {"long output": [Probe("long output", 0, ("passage-0",),
                                                     text[:20], output, 20, spans)]})  # fmt: skip
    assert list(rank_probes(bm25, outputs, 1).values()) == [[[1], [2]]]


def test_describe_conditions_counts_items_and_tokens(builtin_dir):
    from tda.attribution.encoders import load_encoder

    tokenizer = load_encoder(builtin_dir, "cpu").load_tokenizer()
    fact = make_facts(1, 0)[0]
    output = " one two three four five six seven eight nine ten eleven twelve"
    spans = output_spans(tokenizer, output, 4)
    n = tokenizer.encode_batch([output])[0].n_tokens
    assert len(spans) == -(-n // 4) and spans[-1][1] == len(output)
    outputs = Outputs(
        {"verbatim": [Query("verbatim", fact, fact.verbatim_prompt, " Ashgate.")]},
        {"verbatim": 3},
        {"long output": [Probe("long output", 0, ("passage-0",), "Some text", output, 9, spans)]},
    )
    info = {c.condition: c for c in describe_conditions(outputs, tokenizer)}
    assert list(info) == ["verbatim", "long output"]
    v, lo = info["verbatim"], info["long output"]
    assert (v.probed, v.scored, v.items) == (3, 1, 1)
    assert v.prompt_tokens == tokenizer.encode_batch([fact.verbatim_prompt])[0].n_tokens
    assert (lo.probed, lo.scored, lo.items) == (1, 1, len(spans))
    assert lo.item_tokens == (n % 4 or 4, 4)


def test_confidence_precision_counts_first_hits_per_level():
    fact = make_facts(2, 0)
    queries = [Query("verbatim", f, f.verbatim_prompt, f" {f.place}.") for f in fact]
    probe = Probe("long output", 0, ("passage-0",), "p", "o" * 20, 1, ((0, 10), (10, 20)))
    outputs = Outputs({"verbatim": queries}, {"verbatim": 2},
                      {"long output": [probe], "near duplicate": []})  # fmt: skip
    row = MethodRow("tda", {"verbatim": Metrics.of([FactRank(0, 1, False), FactRank(1, 3, False)]),
                            "long output": Metrics.of([FactRank(0, 1, False),
                                                       FactRank(1, None, False)]),
                            "near duplicate": Metrics.of([])})  # fmt: skip
    levels = {(q.prompt, q.output): ("verbatim",) for q in queries}
    levels[("p", "o" * 20)] = ("verbatim", "none")
    got = {c.level: (c.items, c.first_relevant, c.precision)
           for c in confidence_precision(levels, row, outputs)}  # fmt: skip
    assert got == {"verbatim": (3, 2, 0.6667), "lexical": (0, 0, None), "weak": (0, 0, None),
                   "none": (1, 0, 0.0)}  # fmt: skip


def _metrics(mrr, r10, both=None) -> Metrics:
    return Metrics(4, mrr, mrr, r10, 0.0, (1, 1, 1, 1), both_at_10=both)


def test_targets_table_says_met_or_missed_by_how_much():
    from tda.jobs.quality.scoring import LevelPrecision

    default = "tda channels dense+span+lexical (default)"
    rows = [
        MethodRow(default, {"verbatim": _metrics(1.0, 1.0), "long prompt": _metrics(0.9, 0.95),
                            "paraphrase": Metrics(0, None, None, None),
                            "near duplicate": _metrics(0.97, 1.0, both=0.5)}),
        MethodRow("BM25", {"verbatim": _metrics(1.0, 1.0)}),
    ]  # fmt: skip
    cf = [
        CounterfactualRow(f"{default} top-10", 40, 4, -3.0, 4, 0.6, default),
        CounterfactualRow("BM25 top-10", 40, 4, -2.0, 4, 0.4, "BM25"),
        CounterfactualRow("exact span top-10", 40, 4, -4.0, 4, 0.8, "exact span"),
        CounterfactualRow("oracle: true sources", 30, 4, -5.0, 4, 1.0),
    ]
    tables = Tables(rows, default=Option(default, "none", default), counterfactual=cf,
                    confidence=[LevelPrecision("verbatim", 3, 3, 1.0)])  # fmt: skip
    found = {t.target: (t.measured, t.result, t.met) for t in targets(tables)}
    assert found["verbatim: MRR >= 0.95"] == (1.0, "met", True)
    assert found["long prompt: MRR >= 0.95"] == (0.9, "missed by 0.050", False)
    assert found["long prompt: recall@10 >= 0.98"] == (0.95, "missed by 0.030", False)
    assert found["paraphrase: MRR >= 0.95"] == (None, "not measured (no scored item)", None)
    assert found["near duplicate: both copies in the top 10 >= 0.98"][1] == "missed by 0.480"
    share = "counterfactual: removing the default's top chunks recovers >= 0.5 of the oracle's drop"
    assert found[share] == (0.6, "met", True)
    assert found["counterfactual: the default's share beats BM25's"][1:] == (
        "met (+0.200 against 0.400)", True
    )  # fmt: skip
    assert found["counterfactual: the default's share beats exact span's"][1:] == (
        "missed by 0.200 (exact span: 0.800)", False
    )  # fmt: skip
    lines = markdown_tables(tables).splitlines()
    # the Markdown ends with the targets, after the confidence levels
    assert lines[-1] == ("| counterfactual: the default's share beats exact span's | 0.600 "
                         "| missed by 0.200 (exact span: 0.800) |")  # fmt: skip
    assert f"Targets ({default}):" in lines
    assert lines.index(f"Targets ({default}):") > lines.index("| verbatim | 3 | 3 | 1.000 |")
    assert "| long prompt: MRR >= 0.95 | 0.900 | missed by 0.050 |" in lines
    assert (
        "| near duplicate: both copies in the top 10 >= 0.98 | 0.500 | missed by 0.480 |" in lines
    )
    assert f"| {default} | 4 | 1.000 | 0.500 |" in lines  # the both-copies table
    # no counterfactual run: said so
    found = {t.target: t.result for t in targets(Tables(rows, default=Option(default, "none")))}
    assert found[share] == "not measured (counterfactual not run)"
    assert targets(Tables(rows)) == []


class _CharTokenizer:
    """One token per character (id = its code point), as the fake attributor's."""

    class _Encoded:
        def __init__(self, text):
            import numpy as np

            self.ids = np.array([ord(c) for c in text], dtype=np.int64)
            self.n_tokens = len(text)

        def char_starts(self, positions):
            return list(positions)

    def encode_batch(self, texts):
        return [self._Encoded(t) for t in texts]


class _FakeAttributor:
    """Records each ``attribute`` call; every output chunk's hits are the code points of
    its first character and of the last prompt character (so a test can tell which
    part was asked after which prompt)."""

    def __init__(self, window: int, chunk_size: int) -> None:
        from types import SimpleNamespace

        self.tokenizer = _CharTokenizer()
        self.encoder = SimpleNamespace(info=SimpleNamespace(max_window=window))
        self.manifest = SimpleNamespace(chunking=SimpleNamespace(chunk_size=chunk_size))
        self.calls = []

    def attribute(self, prompt, output, **options):
        from types import SimpleNamespace

        self.calls.append((prompt, output, options))
        ids = [ord(c) for c in output] if isinstance(output, str) else list(output)
        p = [ord(c) for c in prompt] if isinstance(prompt, str) else list(prompt)
        size = self.manifest.chunking.chunk_size
        chunks = [
            SimpleNamespace(
                hits=[SimpleNamespace(chunk_id=ids[a]), SimpleNamespace(chunk_id=p[-1])],
                confidence=SimpleNamespace(level="verbatim" if a == 0 else "lexical"),
            )
            for a in range(0, len(ids), size)
        ]
        return SimpleNamespace(chunks=chunks)


def test_tda_ranker_attributes_a_long_output_in_parts_of_whole_chunks():
    from tda.jobs.quality.rankers import QualityError, TdaRanker

    prompt, output = "xyz", "abcdefghij"  # 10 tokens: chunks of 4 -> abcd efgh ij
    spans = ((0, 4), (4, 8), (8, 10))
    # a context of 8 holds one chunk after a chunk of prompt: three parts, as token ids
    fake = _FakeAttributor(window=8, chunk_size=4)
    ranker = TdaRanker(fake, "output", "none", 50, ("dense", "span"))
    got = ranker.rank_chunks(prompt, output, spans, 5)
    assert got == [[ord("a"), ord("z")], [ord("e"), ord("d")], [ord("i"), ord("h")]]
    asked = [(list(p), list(o)) for p, o, _ in fake.calls]
    ids = [ord(c) for c in prompt + output]
    assert asked == [(ids[:3], ids[3:7]), (ids[:7], ids[7:11]), (ids[:11], ids[11:])]
    options = fake.calls[0][2]
    assert options == {
        "k": 5, "input_attribution": "none", "query_span": "output", "rerank": "none",
        "candidates": 50, "channels": ("dense", "span"),
    }  # fmt: skip
    # each part's levels, in order: the first chunk of each part says "verbatim" here
    assert ranker.levels[(prompt, output)] == ("verbatim", "verbatim", "verbatim")
    # a context of 16 holds the three chunks after a chunk of prompt: one call, as text
    fake = _FakeAttributor(window=16, chunk_size=4)
    ranker = TdaRanker(fake, "output")
    assert [r[0] for r in ranker.rank_chunks(prompt, output, spans, 5)] == [97, 101, 105]
    assert [(p, o) for p, o, _ in fake.calls] == [(prompt, output)]
    assert ranker.levels[(prompt, output)] == ("verbatim", "lexical", "lexical")
    assert ranker.rank_output(prompt, output, 3) == [97, ord("z")]
    # the harness's spans disagree with the product's chunks: refused, in one line
    with pytest.raises(QualityError, match="into 3 chunks, the harness into 2"):
        ranker.rank_chunks(prompt, output, spans[:2], 5)


def test_only_the_default_variants_index_gets_the_channels(tmp_path):
    from tda.jobs.quality.variants import build_roots, default_variant, make_variants

    class Recording:
        """A stand-in for the tda commands: records them, writes what build_roots reads."""

        def __init__(self) -> None:
            self.commands: list[tuple[str, ...]] = []

        def run(self, *args):
            self.commands.append(args)
            if args[0] == "embed":
                (tmp_path / args[1] / "embeddings").mkdir(parents=True, exist_ok=True)
                (tmp_path / args[1] / "embeddings" / "manifest.json").write_text('{"dim": 8}')

    (tmp_path / "base" / "chunks").mkdir(parents=True)
    variants = make_variants(["mean:hidden", "max:hidden"], more=True)
    tda = Recording()
    roots = build_roots(tda, tmp_path / "base", tmp_path / "model", tmp_path, variants, 1,
                        channels=default_variant(variants))  # fmt: skip
    builds = {c[2]: c for c in tda.commands if c[:2] == ("index", "build")}
    default_root = str(roots[default_variant(variants)])
    assert len(builds) == len(set(roots.values())) > 2
    for root, command in builds.items():
        assert ("--channels" in command) == (root != default_root), root
        if root != default_root:
            assert command[command.index("--channels") + 1] == "dense"


def test_options_need_the_default_pooling_and_non_negative_counts(capsys):
    from tda.jobs.quality.harness import parse_options

    options = parse_options(["--pooling", "mean:hidden", "--pooling", "max:hidden"])
    assert (options.passages, options.counterfactual_k) == (4, 10)  # the defaults
    for argv, said in (
        (["--pooling", "max:hidden"], "must include the default pooling mean:hidden"),
        (["--passages", "-1"], "--passages must be 0 or more"),
        (["--counterfactual-k", "-2"], "--counterfactual-k must be 0 or more"),
    ):
        with pytest.raises(SystemExit):
            parse_options(argv, prog="quality.py")
        assert said in capsys.readouterr().err
