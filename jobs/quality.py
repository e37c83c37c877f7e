"""``make eval`` / ``tda eval``: how often do tda's top chunks hold the planted source of
what the model said, and does removing them change what the model says?

1. **Corpus** (real text, offline): Python's documentation topics as background, plus
   planted facts: ``{entity} was founded in {place}.``, entities and places made of
   ordinary words. Each fact is stated in ``--copies`` documents (source ``facts``), after
   ``--lead`` background sentences (so mid-document); every entity also gets distractor
   documents (``... is known for its copper bells.``); the even-numbered facts get
   ``--paraphrase-docs`` more documents in the paraphrase's wording (``The place where
   ... was founded is {place}.``).
2. **Model**: ``tda model train`` (pinned ``--threads``: same seed, same weights);
   **outputs**: greedy generation after the verbatim prompt (every fact), after it
   preceded by background sentences (long prompt) and after the paraphrase
   (odd-numbered facts only, never seen in that wording); a fact counts as reproduced
   when the output starts with its place. Only reproduced facts are scored.
3. **Index**: chunks cut once; one build root per representation (:class:`Variant`, all
   product options: ``--pooling``, ``--whiten`` or a ``--factory`` such as PCA centring,
   embed ``--window`` / ``--context``), ``--jobs`` stages at once.
4. **Scoring**: each method ranks training chunks; relevant = the fact's own chunks that
   contain the place. MRR, recall@1 / @10, and how often a distractor outranks every
   source. Methods: tda through ``Attributor.attribute`` (each variant with both
   ``--query-span`` values, with and without ``--rerank concepts``), hybrids on the best
   tda option's candidates (``--rerank span``, and a BM25 re-rank), BM25 (``rank-bm25``),
   exact span (OLMoTrace-style, our own 3-gram index), Grad-Cos on the last block, TRAK
   (dattri, when importable) and random. Every tda option is compared with the best by
   a seeded paired bootstrap over the facts; the report says whether the product's
   defaults are the best option, tied with it, or worse.
5. **Counterfactual**: retrain without (a) the best tda variant's top-k chunks per
   reproduced fact, BM25's top-k, (b) the true sources, (c) as many random chunks, cut
   out of the corpus with ``tda prune apply`` at chunk level; (d) nothing = the original
   model (training is deterministic). Reports the mean change in the answer's
   log-probability after the verbatim prompt and its share of the oracle's change.

Results go to OUT/quality.json and OUT/quality.md (the tables docs/quality.md publishes).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tda.attribution.rerank import longest_shared_run, rerank_order
from tda.attribution.rerank import words as _words
from tda.schemas import QUERY_SPANS

ADJECTIVES = ["amber", "silver", "crimson", "quiet", "northern", "hollow", "golden", "iron"]
ADJECTIVES += ["velvet", "copper", "winter", "bright", "scarlet", "gentle", "ancient", "wild"]
ANIMALS = [
    "falcon",
    "otter",
    "heron",
    "badger",
    "lynx",
    "raven",
    "salmon",
    "beetle",
    "wolf",
    "sparrow",
    "moth",
    "stag",
]
GROUPS = ["guild", "society", "company", "choir", "league", "order", "club", "circle"]
PLACE_A = [
    "stone",
    "river",
    "oak",
    "mill",
    "ash",
    "green",
    "fair",
    "black",
    "white",
    "cold",
    "red",
    "high",
]
PLACE_B = [
    "bridge",
    "ford",
    "field",
    "haven",
    "wick",
    "moor",
    "dale",
    "brook",
    "gate",
    "hill",
    "wood",
    "port",
]
THINGS = ["copper bells", "winter markets", "wooden boats", "long ledgers", "river songs"]
THINGS += ["glass lanterns", "stone towers", "paper kites", "silver coins", "bread ovens"]
THINGS += ["blue banners", "iron keys"]


@dataclass(frozen=True)
class Fact:
    index: int
    entity: str  # "the amber falcon guild"
    place: str  # "Stonebridge"
    thing: str  # distractor attribute

    @property
    def statement(self) -> str:
        return f"{self.entity.capitalize()} was founded in {self.place}."

    @property
    def verbatim_prompt(self) -> str:
        return f"{self.entity.capitalize()} was founded in"

    @property
    def paraphrase_prompt(self) -> str:
        return f"The place where {self.entity} was founded is"

    @property
    def paraphrase_statement(self) -> str:
        return f"{self.paraphrase_prompt[0].upper()}{self.paraphrase_prompt[1:]} {self.place}."

    @property
    def distractor(self) -> str:
        return f"{self.entity.capitalize()} is known for its {self.thing}."


def make_facts(n: int, seed: int) -> list[Fact]:
    rng = random.Random(seed)
    entities, places = set(), set()
    facts = []
    while len(facts) < n:
        entity = f"the {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} {rng.choice(GROUPS)}"
        place = (rng.choice(PLACE_A) + rng.choice(PLACE_B)).capitalize()
        if entity in entities or place in places:
            continue
        entities.add(entity)
        places.add(place)
        facts.append(Fact(len(facts), entity, place, rng.choice(THINGS)))
    return facts


def taught_paraphrase(fact: Fact, paraphrase_docs: int) -> bool:
    """Whether the corpus also states ``fact`` in the paraphrase's wording (even-numbered
    facts, when ``paraphrase_docs`` > 0); the paraphrase condition scores only the others."""
    return paraphrase_docs > 0 and fact.index % 2 == 0


def background_sentences() -> list[str]:
    """Sentences of Python's documentation topics (40 to 200 characters), in a fixed
    order: what the corpus's filler and the long prompts draw from."""
    from pydoc_data.topics import topics

    texts = [t for _, t in sorted(topics.items()) if len(t) > 2000]
    return [s.strip() + "." for t in texts for s in t.split(". ") if 40 < len(s) < 200]


def long_prompt(fact: Fact, sentences: list[str], seed: int, n: int = 2) -> str:
    """The verbatim prompt after ``n`` background sentences (drawn per fact, seeded): an
    output conditioned on a longer prompt, as in real use, not on 8 tokens alone."""
    rng = random.Random(seed * 100_003 + fact.index)
    return " ".join(rng.choice(sentences) for _ in range(n)) + " " + fact.verbatim_prompt


def build_corpus(
    out: Path, facts: list[Fact], copies: int, seed: int, paraphrase_docs: int = 0, lead: int = 0
) -> Path:
    """OUT/corpus/{background,facts,distractors}.jsonl (one source each). With
    ``paraphrase_docs``, every even-numbered fact gets that many more documents
    (``fact-{i}-p{c}``) opening with its paraphrase statement (``The place where ... was
    founded is {place}.``), so the model can learn that both wordings say the same."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    texts = [t for _, t in sorted(topics.items()) if len(t) > 2000]
    sentences = background_sentences()

    def filler(n: int) -> str:
        return " ".join(rng.choice(sentences) for _ in range(n))

    # ``lead`` background sentences before every planted statement (their own generator,
    # so lead 0 leaves the corpus unchanged): the statement then sits mid-document, its
    # chunk has left context, and a long prompt ending in the fact's prompt looks like
    # the training text.
    lead_rng = random.Random(seed * 7919 + 1)

    def opening(statement: str) -> str:
        if lead == 0:
            return statement
        return " ".join(lead_rng.choice(sentences) for _ in range(lead)) + " " + statement

    def write(name: str, docs: list[tuple[str, str]]) -> None:
        (corpus / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs)
        )

    write("background", [(f"bg-{i}", t[:4000]) for i, t in enumerate(texts[:40])])
    fact_docs = [
        (f"fact-{f.index}-{c}", f"{opening(f.statement)} {filler(4)}")
        for f in facts
        for c in range(copies)
    ]
    distractor_docs = [
        (f"distractor-{f.index}-{c}", f"{opening(f.distractor)} {filler(4)}")
        for f in facts
        for c in range(2)
    ]
    # Drawn last, so the corpus without paraphrase documents is unchanged by the option.
    fact_docs += [
        (f"fact-{f.index}-p{c}", f"{opening(f.paraphrase_statement)} {filler(4)}")
        for f in facts
        if taught_paraphrase(f, paraphrase_docs)
        for c in range(paraphrase_docs)
    ]
    write("facts", fact_docs)
    write("distractors", distractor_docs)
    return corpus


# --------------------------------------------------------------------------------------
# Baselines over the chunk table


class ChunkTable:
    """Every chunk of a build root, in file then row order: ``rows`` (chunk id, source,
    document id, record index, character span, text, and ``file_index`` from the part's
    name), ``ids`` and ``texts`` aligned with it."""

    COLUMNS = ("chunk_id", "source", "doc_id", "record_index", "char_start", "char_end", "text")

    def __init__(self, root: Path) -> None:
        import pyarrow.parquet as pq

        rows = []
        for part in sorted((root / "chunks").glob("part-*.parquet")):
            file_index = int(part.stem.split("-")[1])
            for row in pq.read_table(part, columns=list(self.COLUMNS)).to_pylist():
                rows.append({**row, "file_index": file_index})
        self.rows = rows
        self.ids = [r["chunk_id"] for r in rows]
        self.texts = [r["text"] or "" for r in rows]
        self.position = {cid: i for i, cid in enumerate(self.ids)}

    def relevant(self, fact: Fact) -> set[int]:
        """The planted sources of ``fact``: chunks of its own documents that contain its
        place."""
        return {
            r["chunk_id"] for r, text in zip(self.rows, self.texts, strict=True)
            if r["doc_id"].startswith(f"fact-{fact.index}-") and fact.place in text
        }  # fmt: skip


def reproduce(encoder, tokenizer, fact: Fact, prompt: str, tokens: int = 6) -> str | None:
    """Greedy ``tokens`` after ``prompt``: the output text when it starts with ``fact``'s
    place (the fact is reproduced and gets scored), else None."""
    from tda.attribution.attributor import generate_tokens

    ids = tokenizer.encode_batch([prompt])[0].ids.tolist()
    text = tokenizer.decode(generate_tokens(encoder, ids, tokens))
    return text if text.strip().startswith(fact.place) else None


def reproduced_verbatim(
    encoder, tokenizer, facts: list[Fact], limit: int | None = None
) -> dict[int, str]:
    """fact index -> output, for the facts (the first ``limit`` of them) the model
    reproduces after their verbatim prompt: the ones the table scores."""
    outputs: dict[int, str] = {}
    for f in facts:
        if limit is not None and len(outputs) >= limit:
            break
        output = reproduce(encoder, tokenizer, f, f.verbatim_prompt)
        if output is not None:
            outputs[f.index] = output
    return outputs


class BM25Ranker:
    def __init__(self, table: ChunkTable) -> None:
        from rank_bm25 import BM25Okapi

        self.table = table
        self.bm25 = BM25Okapi([_words(t) for t in table.texts])

    def scores(self, query: str):
        """(n_chunks,) BM25 scores of every chunk, in table order."""
        return self.bm25.get_scores(_words(query))

    def rank(self, query: str, k: int) -> list[int]:
        import numpy as np

        order = np.argsort(-self.scores(query), kind="stable")[:k]
        return [self.table.ids[i] for i in order]


class ExactSpanRanker:
    """OLMoTrace-style: chunks ranked by the longest run of consecutive query words they
    contain (ties: earlier chunk), through an index of every word 3-gram."""

    N = 3

    def __init__(self, table: ChunkTable) -> None:
        self.table = table
        self.words = [_words(t) for t in table.texts]
        self.grams: dict[tuple, set[int]] = {}
        for i, ws in enumerate(self.words):
            for j in range(len(ws) - self.N + 1):
                self.grams.setdefault(tuple(ws[j : j + self.N]), set()).add(i)

    def longest(self, query: str, i: int) -> int:
        """Longest run of consecutive words of ``query`` found in chunk ``i`` (table order);
        the same measure as ``tda attribute --rerank span``."""
        return longest_shared_run(_words(query), self.words[i])

    def rank(self, query: str, k: int) -> list[int]:
        q = _words(query)
        candidates = set()
        for j in range(len(q) - self.N + 1):
            candidates |= self.grams.get(tuple(q[j : j + self.N]), set())
        # the query's words once, not once per candidate
        scored = sorted(candidates, key=lambda i: (-longest_shared_run(q, self.words[i]), i))[:k]
        return [self.table.ids[i] for i in scored]


class GradCosRanker:
    """Gradient baseline (Grad-Cos on a layer subset): each chunk is represented by the
    gradient of its own LM loss with respect to the last transformer block's parameters,
    compressed by a seeded count sketch (random sign, random bucket: inner products are
    preserved in expectation, memory O(parameters)); a query by the gradient of the
    output's loss given the prompt. Chunks are ranked by cosine similarity."""

    def __init__(self, table: ChunkTable, encoder, seed: int, width: int = 4096) -> None:
        import torch

        self.table, self.encoder = table, encoder
        model = encoder.model
        self.params = list(model.blocks[-1].parameters())
        size = sum(p.numel() for p in self.params)
        g = torch.Generator().manual_seed(seed)
        self.bucket = torch.randint(0, width, (size,), generator=g)
        self.sign = torch.randint(0, 2, (size,), generator=g).float() * 2 - 1
        self.width = width
        tokenizer = encoder.load_tokenizer()
        sketches = []
        for text in table.texts:
            ids = tokenizer.encode_batch([text])[0].ids.tolist()
            sketches.append(self._sketch(ids, 1))
        self.sketches = torch.stack(sketches)  # (n_chunks, width), unit rows
        self.tokenizer = tokenizer

    def _sketch(self, ids: list[int], start: int):
        """Unit count-sketch of d(mean NLL of ids[start:]) / d(last block params)."""
        import torch

        if len(ids) < 2:
            return torch.zeros(self.width)
        x = torch.tensor([ids[-self.encoder.info.max_window :]])
        start = max(1, start - (len(ids) - x.shape[1]))
        with torch.enable_grad():
            for p in self.params:
                p.requires_grad_(True)
            logits = self.encoder.forward(x, with_logits=True).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits[start - 1 :], x[0, start:])
            grads = torch.autograd.grad(loss, self.params)
            for p in self.params:
                p.requires_grad_(False)
        flat = torch.cat([g.reshape(-1) for g in grads])
        sketch = torch.zeros(self.width).index_add_(0, self.bucket, flat * self.sign)
        return sketch / sketch.norm().clamp_min(1e-12)

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        import torch

        p = self.tokenizer.encode_batch([prompt])[0].ids.tolist()
        o = self.tokenizer.encode_batch([output])[0].ids.tolist()
        query = self._sketch(p + o, len(p))
        scores = self.sketches @ query
        order = torch.argsort(-scores, stable=True)[:k].tolist()
        return [self.table.ids[i] for i in order]


def dattri_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("dattri") is not None


class TRAKRanker:
    """Gradient baseline through dattri's TRAK (``dattri.algorithm.trak``, one checkpoint):
    per-example gradients of the mean next-token loss with respect to the last transformer
    block's parameters (``layer_name``), randomly projected to ``proj_dim`` (seeded), then
    score(train, query) = g_query (G^T G + r I)^-1 g_train * (1 - p_train). Sequences are
    right-padded to ``length`` tokens with a loss mask (padding after the last token does
    not change a causal model's earlier positions)."""

    def __init__(
        self,
        table: ChunkTable,
        encoder,
        seed: int,
        proj_dim: int = 512,
        length: int = 72,
        batch_size: int = 32,
    ) -> None:
        import torch
        from dattri.algorithm.trak import TRAKAttributor
        from dattri.task import AttributionTask

        self.table, self.length, self.batch_size = table, length, batch_size
        self.tokenizer = encoder.load_tokenizer()
        # A copy whose parameters require gradients (dattri differentiates only those; the
        # encoder's own are frozen).
        lm = _logits_module(copy.deepcopy(encoder.model).requires_grad_(True)).eval()
        block = len(encoder.model.blocks) - 1
        layer = [n for n, _ in lm.named_parameters() if n.startswith(f"model.blocks.{block}.")]

        def loss(params, data):
            ids, mask = data  # (L,), (L,): mask[t] = 1 where token t is scored
            logits = torch.func.functional_call(lm, params, (ids.unsqueeze(0),))[0, :-1]
            lp = torch.log_softmax(logits, -1).gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1)
            return -(lp * mask[1:]).sum() / mask[1:].sum().clamp_min(1)

        def probability(params, data):
            return torch.exp(-loss(params, data))

        state = {n: p.detach().clone() for n, p in lm.named_parameters()}
        task = AttributionTask(loss_func=loss, model=lm, checkpoints=state)
        self.attributor = TRAKAttributor(
            task=task,
            correct_probability_func=probability,
            device="cpu",
            layer_name=layer,
            projector_kwargs={"proj_dim": proj_dim, "proj_seed": seed, "proj_max_batch_size": 32},
            regularization=1e-6,
        )
        packed = [self._pack(self._encode(t), 1) for t in table.texts]
        self.attributor.cache(self._loader(packed))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_batch([text])[0].ids.tolist()

    def _pack(self, ids: list[int], start: int):
        import torch

        cut = max(0, len(ids) - self.length)
        ids, start = ids[cut:], max(1, start - cut)
        x = torch.zeros(self.length, dtype=torch.long)
        x[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(self.length)
        mask[start : len(ids)] = 1
        return x, mask

    def _loader(self, packed):
        import torch

        data = torch.utils.data.TensorDataset(
            torch.stack([x for x, _ in packed]), torch.stack([m for _, m in packed])
        )
        return torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=False)

    def rank_output(self, prompt: str, output: str, k: int) -> list[int]:
        import torch

        p, o = self._encode(prompt), self._encode(output)
        scores = self.attributor.attribute(self._loader([self._pack(p + o, len(p))]))[:, 0]
        order = torch.argsort(-scores, stable=True)[:k].tolist()
        return [self.table.ids[i] for i in order]


def _logits_module(model):
    """The builtin LM as an ``nn.Module`` whose ``forward(ids (B, T))`` returns logits
    (B, T, V), for ``torch.func.functional_call``."""
    from torch import nn

    class Logits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model.logits(self.model.hidden(ids))

    return Logits()


class RandomRanker:
    def __init__(self, table: ChunkTable, seed: int) -> None:
        self.table, self.rng = table, random.Random(seed)

    def rank(self, query: str, k: int) -> list[int]:
        return self.rng.sample(self.table.ids, min(k, len(self.table.ids)))


# --------------------------------------------------------------------------------------
# Re-ranking tda's candidates


def rerank(chunk_ids: list[int], scores: list[float], k: int = 10) -> list[int]:
    """Candidates (in tda's order) and a score each -> the ``k`` best chunk ids (higher
    score first; ties keep tda's order, as ``tda attribute --rerank`` does)."""
    return [chunk_ids[i] for i in rerank_order(scores)[:k]]


# --------------------------------------------------------------------------------------
# Running the stages


@dataclass(frozen=True)
class Variant:
    """One tda representation under test, as product options: the dense pooling (``tda
    embed --pooling``), the index (``tda index build --whiten``, or a ``--factory`` such
    as PCA centring; None: the one chosen; a pre-transform lives in the index and applies
    to queries too), the embed context (``--window`` / ``--context``; None: the stage's
    default) and the query span (``tda attribute --query-span``). Every variant is
    attributed twice: without a re-rank and with ``--rerank concepts``."""

    name: str
    pooling: str
    factory: str | None = None
    window: int | None = None
    context: int | None = None
    query_span: str = "output"
    whiten: bool = False

    @property
    def slug(self) -> str:
        """The build root's name (variants differing only in ``query_span`` share one)."""
        index = (self.pooling, self.factory, self.whiten, self.window, self.context)
        return "".join(ch if ch.isalnum() else "-" for ch in "-".join(map(str, index)))


def make_variants(
    poolings: list[str], more: bool = True, left_context: tuple[int, int] = (128, 32)
) -> list[Variant]:
    """The tda rows: every pooling with both query spans, on the default index (each
    chunk encoded alone); with ``more``, for ``mean:hidden`` and ``mean:concepts`` also
    centred (PCA) and whitened (PCAW) indexes with both query spans, and ``mean:hidden``
    on windows with left context (``left_context`` = ``--window`` / ``--context``; the
    defaults are the embed stage's old default for a 128-token model)."""
    variants = []
    indexes = [("", None, False)]
    if more:
        indexes += [(" centred", "IDMap2,PCA{D},L2norm,Flat", False), (" whitened", None, True)]
    for p in poolings:
        for label, factory, whiten in (
            indexes if p in ("mean:hidden", "mean:concepts") else indexes[:1]
        ):
            for span in QUERY_SPANS:
                variants.append(Variant(f"tda {p}{label}, query span {span}", p, factory,
                                        query_span=span, whiten=whiten))  # fmt: skip
    if more and "mean:hidden" in poolings:
        window, context = left_context
        for span in QUERY_SPANS:
            name = (
                f"tda mean:hidden left context (--window {window} --context {context}), "
                f"query span {span}"
            )
            variants.append(
                Variant(name, "mean:hidden", window=window, context=context, query_span=span)
            )
    return variants


def pooled_ranks(results: dict, row: str, rerank: str) -> list:
    """One tda option's ranks over every scored (condition, fact), conditions in table
    order: what the best option and the bootstrap compare."""
    ranks = []
    for metrics in results[row].values():
        m = metrics if rerank == "none" else metrics.get("concept_rerank") or {}
        ranks += m.get("ranks") or []
    return ranks


def best_option(variants: list[Variant], results: dict) -> dict:
    """The best tda option by (MRR, recall@1, recall@10) over every scored (condition,
    fact); ties go to the first listed, without a re-rank before with one.
    {"row", "rerank", "mrr"}."""
    options = []
    for v in variants:
        for rr in ("none", "concepts"):
            m = _metrics(pooled_ranks(results, v.name, rr))
            key = tuple(m[k] or 0 for k in ("mrr", "recall@1", "recall@10"))
            options.append((v.name, rr, key))
    name, rr, key = min(options, key=lambda o: tuple(-x for x in o[2]))  # first on ties
    return {"row": name, "rerank": rr, "mrr": key[0]}


def default_option(variants: list[Variant]) -> dict:
    """The row that ``tda embed`` / ``tda index build`` / ``tda attribute`` build and query
    with their defaults."""
    from tda.schemas import DEFAULT_QUERY_SPAN, DEFAULT_RERANK, IndexConfig, Pooling

    pooling, whiten = Pooling().name, IndexConfig(root="-").whiten
    for v in variants:
        if (v.pooling, v.factory, v.whiten, v.window, v.context, v.query_span) == (
            pooling, None, whiten, None, None, DEFAULT_QUERY_SPAN
        ):  # fmt: skip
            return {"row": v.name, "rerank": DEFAULT_RERANK}
    raise ValueError(f"no variant is the default ({pooling}, query span {DEFAULT_QUERY_SPAN})")


def _reciprocal(ranks: list[int | None]):
    import numpy as np

    return np.array([1 / r if r else 0.0 for r in ranks])


def paired_bootstrap(a: list, b: list, seed: int, resamples: int = 10_000) -> tuple:
    """Per-fact ranks of two methods on the same facts -> (MRR(a) - MRR(b), 2.5th and
    97.5th percentile of that difference over ``resamples`` resamplings of the facts with
    replacement; seeded, so the same inputs give the same interval)."""
    import numpy as np

    ra, rb = _reciprocal(a), _reciprocal(b)
    if len(ra) == 0:
        return None, None, None
    picks = np.random.default_rng(seed).integers(0, len(ra), (resamples, len(ra)))
    diffs = (ra[picks] - rb[picks]).mean(axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return round(float(ra.mean() - rb.mean()), 4), round(float(lo), 4), round(float(hi), 4)


def compare_to_best(variants: list[Variant], results: dict, best: dict, seed: int) -> list:
    """Every tda option (row x re-rank) against the best one over every scored
    (condition, fact): MRR difference with its paired-bootstrap 95% interval; ``tied``:
    the interval holds 0."""
    top = pooled_ranks(results, best["row"], best["rerank"])
    rows = []
    for v in variants:
        for rr in ("none", "concepts"):
            mine = pooled_ranks(results, v.name, rr)
            delta, lo, hi = paired_bootstrap(mine, top, seed)
            rows.append({
                "row": v.name, "rerank": rr, "mrr": round(float(_reciprocal(mine).mean()), 4),
                "delta": delta, "lo": lo, "hi": hi, "tied": hi is not None and hi >= 0,
            })  # fmt: skip
    return rows


def _first_chunk_ids(report) -> list[int]:
    """An attribution report -> its first output chunk's hits, as chunk ids in rank order."""
    return [h.chunk_id for c in report.chunks[:1] for h in c.hits]


def _run(cmd: list[str], threads: int = 1) -> None:
    """Run a ``tda`` command with ``threads`` OpenMP / MKL threads (the harness pins the
    count: float reductions, and so the trained weights, depend on it; on a shared
    2-core machine 1 thread per process also avoids spinning OpenMP barriers, which made
    a 2-thread training run 2.2x slower than a 1-thread one here)."""
    print("$ " + " ".join(cmd[2:]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)


def _parallel(jobs: int, tasks: list) -> list:
    """Call every task (a no-argument callable running subprocesses) ``jobs`` at a time;
    their results in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(lambda task: task(), tasks))


def _metrics(ranks: list[int | None]) -> dict:
    n = len(ranks)
    if n == 0:
        return {"n": 0, "mrr": None, "recall@1": None, "recall@10": None}
    return {
        "n": n,
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "recall@1": round(sum(1 for r in ranks if r == 1) / n, 4),
        "recall@10": round(sum(1 for r in ranks if r and r <= 10) / n, 4),
    }


def answer_log_prob(encoder, prompt: str, answer: str) -> float:
    """Sum of log p(answer token | prompt, earlier answer tokens) over the tokens of
    ``" " + answer`` after ``prompt``, under ``encoder``'s model and tokenizer."""
    import torch

    tokenizer = encoder.load_tokenizer()
    p = tokenizer.encode_batch([prompt])[0].ids.tolist()
    a = tokenizer.encode_batch([" " + answer])[0].ids.tolist()
    ids = torch.tensor([p + a])
    with torch.inference_mode():
        logits = encoder.forward(ids, with_logits=True).logits[0, :-1]  # (T-1, V)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(lp[len(p) - 1 :].double().sum())


def write_prune_list(path: Path, table: ChunkTable, chunk_ids: set[int], reason: str) -> None:
    """A chunk-level prune list (``tda prune apply --list``) of ``chunk_ids``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tda.attribution.curation.prune import PRUNE_SCHEMA

    rows = [
        {"level": "chunk", "source": r["source"], "file_index": r["file_index"],
         "record_index": r["record_index"], "doc_id": r["doc_id"], "chunk_id": r["chunk_id"],
         "char_start": r["char_start"], "char_end": r["char_end"], "score": None,
         "share": None, "reason": reason}
        for r in table.rows
        if r["chunk_id"] in chunk_ids
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=PRUNE_SCHEMA), path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/eval")
    parser.add_argument("--facts", type=int, default=48)
    parser.add_argument("--copies", type=int, default=3, help="Documents stating each fact.")
    parser.add_argument(
        "--paraphrase-docs",
        type=int,
        default=2,
        help="Extra documents in the paraphrase's wording for every even-numbered fact.",
    )
    # 1,200 steps of 16 x 128 tokens reproduced 48 of 48 facts (lr 0.003; 0.006: 47); 600
    # steps of 16 x 256 tokens, the same cost, only 9 (13 at lr 0.006).
    parser.add_argument(
        "--lead",
        type=int,
        default=3,
        help="Background sentences before every planted statement, so sources sit "
        "mid-document with left context (0: statements open their documents).",
    )
    parser.add_argument("--steps", type=int, default=1200, help="Builtin model training steps.")
    parser.add_argument("--max-seq", type=int, default=128, help="Builtin model context.")
    parser.add_argument("--lr", type=float, default=0.003, help="Training learning rate.")
    parser.add_argument(
        "--pooling",
        action="append",
        default=None,
        help="Representations to test (repeatable; default: the embed stage's options).",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="Only the poolings: no centred / whitened / left-context variants.",
    )
    parser.add_argument("--candidates", type=int, default=100, help="tda hits re-ranked.")
    parser.add_argument(
        "--gradients",
        choices=("auto", "gradcos", "none"),
        default="auto",
        help="Gradient baselines: auto = Grad-Cos, plus dattri's TRAK when importable.",
    )
    parser.add_argument("--trak-dim", type=int, default=512, help="TRAK projection size.")
    parser.add_argument(
        "--counterfactual-k",
        type=int,
        default=3,
        help="Retrain without each method's top-k chunks per reproduced fact (0: skip).",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="tda commands run at once (embeds, index builds, counterfactual trainings).",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="Torch / OpenMP threads per process (pinned)."
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    poolings = args.pooling or ["mean:concepts", "max:concepts", "mean:hidden", "max:hidden",
                                "last:hidden", "weights"]  # fmt: skip
    started = time.time()
    timings: dict[str, float] = {}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(args.facts, args.seed)
    corpus = build_corpus(out, facts, args.copies, args.seed, args.paraphrase_docs, args.lead)
    tda = [sys.executable, "-m", "tda.jobs.cli"]

    def run(cmd: list[str]) -> None:
        _run(cmd, args.threads)

    def train(corpus_dir: Path, model_dir: Path) -> None:
        run([*tda, "model", "train", str(corpus_dir), "--out", str(model_dir), "--steps",
             str(args.steps), "--seed", str(args.seed), "--lr", str(args.lr), "--max-seq",
             str(args.max_seq)])  # fmt: skip

    t = time.time()
    model = out / "model"
    train(corpus, model)
    timings["train"] = round(time.time() - t, 1)

    from tda.attribution.attributor import Attributor
    from tda.attribution.encoders import load_encoder

    encoder = load_encoder(str(model), "cpu")
    tokenizer = encoder.load_tokenizer()
    sentences = background_sentences()
    prompts = {
        "verbatim": lambda f: f.verbatim_prompt,
        "long prompt": lambda f: long_prompt(f, sentences, args.seed),
        "paraphrase": lambda f: f.paraphrase_prompt,
    }
    outputs: dict[str, dict[int, str]] = {c: {} for c in prompts}
    probed = {"verbatim": len(facts), "long prompt": len(facts), "paraphrase": 0}
    for f in facts:
        for condition, prompt_of in prompts.items():
            if condition == "paraphrase" and taught_paraphrase(f, args.paraphrase_docs):
                continue  # seen in this wording: not a paraphrase
            probed[condition] += condition == "paraphrase"
            text = reproduce(encoder, tokenizer, f, prompt_of(f))
            if text is not None:
                outputs[condition][f.index] = text
    reproduced = {c: len(v) for c, v in outputs.items()}
    print(f"facts reproduced: {reproduced} of {probed}", flush=True)

    # --- one build root per representation (chunks cut once, embeddings reused)
    t = time.time()
    base = out / "root-chunks"
    run([*tda, "chunk", str(corpus), "--out", str(base), "--tokenizer", str(model),
         "--overwrite"])  # fmt: skip
    variants = make_variants(poolings, not args.no_variants, (args.max_seq, args.max_seq // 4))
    roots = {v.name: out / f"root-{v.slug}" for v in variants}
    first: dict[Path, Variant] = {}  # root -> the variant that builds it
    for v in variants:
        first.setdefault(roots[v.name], v)
    embedded: dict[tuple, Path] = {}  # (pooling, window, context) -> root that embeds it
    for root, v in first.items():
        embedded.setdefault((v.pooling, v.window, v.context), root)

    def embed(root: Path, v: Variant) -> None:
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(base / "chunks", root / "chunks")
        extra = [] if v.window is None else ["--window", str(v.window)]
        extra += [] if v.context is None else ["--context", str(v.context)]
        run([*tda, "embed", str(root), "--model", str(model), "--pooling", v.pooling, *extra,
             "--overwrite"])  # fmt: skip

    def index(root: Path, v: Variant) -> None:
        source = embedded[(v.pooling, v.window, v.context)]
        if source != root:
            if root.exists():
                shutil.rmtree(root)
            shutil.copytree(source / "chunks", root / "chunks")
            shutil.copytree(source / "embeddings", root / "embeddings")
        dim = json.loads((root / "embeddings" / "manifest.json").read_text())["dim"]
        extra = [] if v.factory is None else ["--factory", v.factory.format(D=dim)]
        extra += ["--whiten" if v.whiten else "--no-whiten"]
        run([*tda, "index", "build", str(root), "--overwrite", *extra])

    _parallel(args.jobs, [lambda r=r, v=first[r]: embed(r, v) for r in embedded.values()])
    _parallel(args.jobs, [lambda r=r, v=v: index(r, v) for r, v in first.items()])
    timings["index"] = round(time.time() - t, 1)
    table = ChunkTable(base)
    source_of = {r["chunk_id"]: (r["source"], r["doc_id"]) for r in table.rows}

    relevant = table.relevant

    def distractors(f: Fact) -> set[int]:
        return {
            cid for cid, (_, doc) in source_of.items() if doc.startswith(f"distractor-{f.index}-")
        }

    # --- every method's top 10 per (condition, fact); tda through `tda attribute`'s own
    # options: no re-rank (top ``candidates``, for the hybrids) and --rerank concepts
    t = time.time()
    hits: dict[str, dict[str, dict[int, list[int]]]] = {}
    candidates: dict[str, dict[str, dict[int, list[int]]]] = {}
    by_overlap: dict[str, dict[str, dict[int, list[int]]]] = {}
    attributors = {}
    for v in variants:
        attributor = attributors.setdefault(
            roots[v.name], Attributor.from_root(str(roots[v.name]), device="cpu")
        )
        candidates[v.name] = {c: {} for c in outputs}
        by_overlap[v.name] = {c: {} for c in outputs}
        for condition, done in outputs.items():
            for index, output in done.items():
                prompt = prompts[condition](facts[index])
                options = {"input_attribution": "none", "query_span": v.query_span}
                report = attributor.attribute(prompt, output, k=args.candidates, **options)
                candidates[v.name][condition][index] = _first_chunk_ids(report)
                report = attributor.attribute(prompt, output, k=10, rerank="concepts",
                                              candidates=args.candidates, **options)  # fmt: skip
                by_overlap[v.name][condition][index] = _first_chunk_ids(report)
        hits[v.name] = {
            c: {i: ids[:10] for i, ids in by_fact.items()}
            for c, by_fact in candidates[v.name].items()
        }
    timings["tda"] = round(time.time() - t, 1)

    def score(name: str, ranked_by=None) -> dict:
        by_condition = {}
        for condition, done in outputs.items():
            ranks, distracted = [], 0
            for index in sorted(done):
                f = facts[index]
                good, bad = relevant(f), distractors(f)
                ranked = (ranked_by or hits)[name][condition][index]
                rank = next((i + 1 for i, h in enumerate(ranked) if h in good), None)
                first_bad = next((i + 1 for i, h in enumerate(ranked) if h in bad), None)
                distracted += first_bad is not None and (rank is None or first_bad < rank)
                ranks.append(rank)
            metrics = _metrics(ranks)
            metrics["distractor_first"] = round(distracted / len(ranks), 4) if ranks else None
            metrics["ranks"] = ranks  # per scored fact, in fact order (None: not in the top 10)
            by_condition[condition] = metrics
        return by_condition

    results = {name: score(name) for name in hits}
    for v in variants:
        for condition, metrics in score(v.name, by_overlap).items():
            results[v.name][condition]["concept_rerank"] = metrics
    best = best_option(variants, results)
    default = default_option(variants)
    versus = compare_to_best(variants, results, best, args.seed)
    best_variant = next(v for v in variants if v.name == best["row"])
    best_hits = by_overlap if best["rerank"] == "concepts" else hits
    best_label = best["row"] + (", re-rank concepts" if best["rerank"] == "concepts" else "")
    # hybrids on the best option's dense candidates: `tda attribute --rerank span` (the
    # product's lexical hybrid), and BM25 (harness only: it needs corpus-wide statistics)
    bm25, spans = BM25Ranker(table), ExactSpanRanker(table)
    span_name = f"hybrid: {best['row']}, --rerank span (top {args.candidates})"
    bm25_name = f"hybrid: {best['row']} top {args.candidates}, BM25 re-rank"
    hits[span_name], hits[bm25_name] = {c: {} for c in outputs}, {c: {} for c in outputs}
    attributor = attributors[roots[best_variant.name]]
    for condition, done in outputs.items():
        for i, output in done.items():
            prompt = prompts[condition](facts[i])
            report = attributor.attribute(
                prompt, output, k=10, input_attribution="none", rerank="span",
                candidates=args.candidates, query_span=best_variant.query_span,
            )  # fmt: skip
            hits[span_name][condition][i] = _first_chunk_ids(report)
            cands = candidates[best_variant.name][condition][i]
            every = bm25.scores(prompt + output)
            scores = [float(every[table.position[c]]) for c in cands]
            hits[bm25_name][condition][i] = rerank(cands, scores)
    results[span_name], results[bm25_name] = score(span_name), score(bm25_name)
    hits[best_label] = best_hits[best_variant.name]  # for the counterfactual

    # --- lexical and random baselines (cheap), then the counterfactual trainings run in
    # the background while the gradient baselines compute
    t = time.time()
    baselines: dict[str, object] = {"BM25": bm25, "exact span": spans}
    baselines["random"] = RandomRanker(table, args.seed)

    def rank_all(name: str, ranker) -> None:
        hits[name] = {c: {} for c in outputs}
        for condition, done in outputs.items():
            for index, output in sorted(done.items()):
                prompt = prompts[condition](facts[index])
                if isinstance(ranker, GradCosRanker | TRAKRanker):
                    hits[name][condition][index] = ranker.rank_output(prompt, output, 10)
                else:
                    hits[name][condition][index] = ranker.rank(prompt + output, 10)
        results[name] = score(name)

    for name, ranker in baselines.items():
        rank_all(name, ranker)
    from concurrent.futures import ThreadPoolExecutor

    background = ThreadPoolExecutor(1)
    counterfactual = None
    if args.counterfactual_k > 0 and outputs["verbatim"]:
        counterfactual = background.submit(
            run_counterfactual, args, facts, outputs["verbatim"], hits, best_label, table, relevant,
            encoder, roots[variants[0].name], corpus, out, tda, train, run,
        )  # fmt: skip
    gradients: dict[str, object] = {}
    if args.gradients != "none":
        gradients["Grad-Cos (last block)"] = lambda: GradCosRanker(table, encoder, args.seed)
    if args.gradients == "auto" and dattri_available():
        gradients["TRAK (dattri, last block)"] = lambda: TRAKRanker(
            table, encoder, args.seed, proj_dim=args.trak_dim
        )
    for name, build in gradients.items():
        rank_all(name, build())
    timings["baselines"] = round(time.time() - t, 1)
    t = time.time()
    if counterfactual is not None:
        counterfactual = counterfactual.result()
    background.shutdown()
    timings["counterfactual_wait"] = round(time.time() - t, 1)
    # table order: tda rows, re-ranks and hybrids, then the baselines
    results = {name: results[name] for name in sorted(results, key=lambda n: n == "random")}
    report = {
        "seed": args.seed,
        "facts": len(facts),
        "copies": args.copies,
        "paraphrase_docs": args.paraphrase_docs,
        "lead": args.lead,
        "steps": args.steps,
        "lr": args.lr,
        "max_seq": args.max_seq,
        "chunks": len(table.ids),
        "probed": probed,
        "reproduced": reproduced,
        "best_tda": {**best, "label": best_label},
        "default_tda": default,
        "default_is_best": (default["row"], default["rerank"]) == (best["row"], best["rerank"]),
        "versus_best": versus,
        "results": results,
        "counterfactual": counterfactual,
        "timings": timings,
        "seconds": round(time.time() - started),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "quality.md").write_text(markdown_tables(report))
    _print_table(report)
    return report


def run_counterfactual(
    args, facts, verbatim, hits, best, table, relevant, encoder, root, corpus, out, tda, train,
    run,
) -> dict:  # fmt: skip
    """Retrain (same seed, same steps) without each condition's chunks, cut out of the
    corpus by ``tda prune apply`` at chunk level (``args.jobs`` trainings at once); the
    change in each reproduced fact's answer log-probability after its verbatim prompt,
    averaged. "nothing" is the original model itself (training is deterministic: same
    corpus, seed, steps and threads, same weights)."""
    from tda.attribution.encoders import load_encoder

    k = args.counterfactual_k
    reproduced = sorted(verbatim)

    def top(method: str) -> set[int]:
        return {cid for i in reproduced for cid in hits[method]["verbatim"][i][:k]}

    removals = {f"{best} top-{k}": top(best), f"BM25 top-{k}": top("BM25")}
    removals["oracle: true sources"] = {cid for i in reproduced for cid in relevant(facts[i])}
    n_random = len(removals[f"{best} top-{k}"])
    removals[f"random {n_random} chunks"] = set(
        random.Random(args.seed).sample(table.ids, n_random)
    )
    removals["nothing (the original model)"] = set()
    inputs = sorted(str(p) for p in corpus.glob("*.jsonl"))

    def retrain(slot: int, name: str, removed: set[int]) -> Path:
        cf = out / f"counterfactual-{slot}"
        if cf.exists():
            shutil.rmtree(cf)
        cf.mkdir(parents=True)
        write_prune_list(cf / "prune.parquet", table, removed, name)
        run([*tda, "prune", "apply", str(root), "--list", str(cf / "prune.parquet"),
             *[a for p in inputs for a in ("--corpus", p)], "--corpus-out", str(cf / "corpus"),
             "--out", str(cf / "root"), "--reason", name])  # fmt: skip
        train(cf / "corpus", cf / "model")
        return cf / "model"

    todo = [(slot, name, removed) for slot, (name, removed) in enumerate(removals.items())]
    models = _parallel(
        args.jobs, [lambda a=a: retrain(*a) for a in todo if a[2]]
    )  # in removals' order

    def log_probs(enc) -> dict[int, float]:
        return {i: answer_log_prob(enc, facts[i].verbatim_prompt, facts[i].place)
                for i in reproduced}  # fmt: skip

    original = log_probs(encoder)
    rows, trained = {}, iter(models)
    for name, removed in removals.items():
        after = log_probs(load_encoder(str(next(trained)), "cpu")) if removed else original
        deltas = [after[i] - original[i] for i in reproduced]
        rows[name] = {
            "chunks_removed": len(removed),
            "facts": len(deltas),
            "mean_delta_log_prob": round(sum(deltas) / len(deltas), 4),
            "facts_dropped": sum(d < 0 for d in deltas),
        }
    oracle = rows["oracle: true sources"]["mean_delta_log_prob"]
    for row in rows.values():
        row["share_of_oracle"] = round(row["mean_delta_log_prob"] / oracle, 4) if oracle else None
    return rows


def markdown_tables(report: dict) -> str:
    """The report's tables as Markdown (the ones docs/quality.md publishes): retrieval
    (method x condition) and, when run, the counterfactual."""

    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = []
    if report.get("best_tda") and report.get("default_tda"):
        best, default = report["best_tda"], report["default_tda"]

        def label(row: str, rerank: str) -> str:
            return row + (", --rerank concepts" if rerank == "concepts" else "")

        versus = report.get("versus_best") or []
        mine = next(
            (v for v in versus if (v["row"], v["rerank"]) == (default["row"], default["rerank"])),
            None,
        )
        if report["default_is_best"]:
            verdict = "it is the best tda option."
        elif mine is None or mine["delta"] is None:
            verdict = "**it is not the best tda option.**"
        else:
            verdict = (
                f"MRR {mine['mrr']:.3f}, {mine['delta']:+.3f} against the best (paired "
                f"bootstrap over the scored facts, 95% interval [{mine['lo']:+.3f}, "
                f"{mine['hi']:+.3f}]): "
                + ("**tied with the best** (the interval holds 0)." if mine["tied"] else
                   "**significantly worse than the best.**")
            )  # fmt: skip
        tied = [v for v in versus if v["tied"]]
        lines += [
            f"Best tda option by MRR (then recall@1, recall@10) over every scored fact and "
            f"condition: "
            f"**{best['label']}** (MRR {best['mrr']:.3f}).",
            "",
            f"Default (`tda embed` / `tda index build` / `tda attribute` without options): "
            f"**{label(default['row'], default['rerank'])}**; {verdict}",
            "",
        ]
        if tied:
            lines += [
                "tda options tied with the best (95% interval of the MRR difference holds 0):",
                "",
                "| option | MRR | difference | 95% interval |",
                "|---|---:|---:|---|",
                *[
                    f"| {label(v['row'], v['rerank'])} | {v['mrr']:.3f} | {v['delta']:+.3f} "
                    f"| [{v['lo']:+.3f}, {v['hi']:+.3f}] |"
                    for v in sorted(tied, key=lambda v: -v["mrr"])
                ],
                "",
            ]
    lines += [
        "| method | condition | n | MRR | recall@1 | recall@10 | distractor first "
        "| MRR, --rerank concepts | recall@1, --rerank concepts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_condition in report["results"].items():
        for condition, m in by_condition.items():
            cr = m.get("concept_rerank") or {}
            lines.append(
                f"| {name} | {condition} | {m['n']} | {num(m['mrr'])} | {num(m['recall@1'])} "
                f"| {num(m['recall@10'])} | {num(m.get('distractor_first'))} "
                f"| {num(cr.get('mrr'))} | {num(cr.get('recall@1'))} |"
            )
    if report.get("counterfactual"):
        lines += [
            "",
            "| retrained without | chunks removed | facts | mean change in answer log-prob "
            "| facts whose log-prob fell | share of the oracle's change |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in report["counterfactual"].items():
            lines.append(
                f"| {name} | {row['chunks_removed']} | {row['facts']} "
                f"| {row['mean_delta_log_prob']:+.3f} | {row['facts_dropped']} "
                f"| {num(row['share_of_oracle'])} |"
            )
    return "\n".join(lines) + "\n"


def _print_table(report: dict) -> None:
    print(
        f"\n{report['facts']} planted facts x {report['copies']} documents, {report['chunks']} "
        f"chunks; reproduced: {report['reproduced']} of {report['probed']}; "
        f"{report['seconds']} s {report['timings']}"
    )
    head = ("method", "condition", "n", "MRR", "R@1", "R@10", "distr.1st", "cr.MRR", "cr.R@1")
    print(f"{head[0]:<58} {head[1]:<10} {head[2]:>3} " + " ".join(f"{h:>6}" for h in head[3:]))
    for name, by_condition in report["results"].items():
        for condition, m in by_condition.items():
            if not m["n"]:
                print(f"{name:<58} {condition:<10} {0:>3} {'-':>6} {'-':>6} {'-':>6} {'-':>9}")
                continue
            cr = m.get("concept_rerank")
            extra = f" {cr['mrr']:>6.3f} {cr['recall@1']:>6.3f}" if cr else ""
            print(f"{name:<58} {condition:<10} {m['n']:>3} {m['mrr']:>6.3f} {m['recall@1']:>6.3f} "
                  f"{m['recall@10']:>6.3f} {m['distractor_first']:>9.3f}{extra}")  # fmt: skip
    if report.get("counterfactual"):
        print(f"\n{'retrained without':<48} {'chunks':>6} {'mean dlogp':>10} {'share':>6}")
        for name, row in report["counterfactual"].items():
            share = "-" if row["share_of_oracle"] is None else f"{row['share_of_oracle']:.3f}"
            print(f"{name:<48} {row['chunks_removed']:>6} {row['mean_delta_log_prob']:>10.3f} "
                  f"{share:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
