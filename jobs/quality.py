"""``make eval`` / ``tda eval``: how often do tda's top chunks hold the planted source of
what the model said?

1. **Corpus** (real text, offline): Python's documentation topics as background, plus
   planted facts: ``{entity} was founded in {place}.``, entities and places made of
   ordinary words (``the amber falcon guild``, ``Stonebridge``). Each fact is stated at
   the start of ``--copies`` documents (source ``facts``) followed by background text;
   every entity also gets distractor documents (source ``distractors``) that name it
   with another attribute (``... is known for its copper bells.``).
2. **Model**: ``tda model train`` on that corpus; **index**: ``tda chunk`` / ``tda embed``
   / ``tda index build``, once per representation under test (``--pooling``).
3. **Outputs**: for every fact, greedy generation after the verbatim prompt
   (``{entity} was founded in``) and after a paraphrase (``The place where {entity} was
   founded is``); a fact counts as reproduced when the output starts with its place.
   Only reproduced facts are scored (the count is reported).
4. **Scoring**: each method ranks training chunks for (prompt, output); the relevant
   chunks are the ones stating the fact. MRR and recall@1 / @10 per method and
   condition, and how often a distractor of the same entity outranks every source.
   Methods: tda (one row per pooling), BM25 (``rank-bm25``, query = prompt + output),
   exact span (longest run of shared tokens, OLMoTrace-style, our own n-gram index),
   Grad-Cos on the last transformer block (count-sketched gradients) and random.

Seeded: the same command prints the same table. Results go to OUT/quality.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def build_corpus(out: Path, facts: list[Fact], copies: int, seed: int) -> Path:
    """OUT/corpus/{background,facts,distractors}.jsonl (one source each)."""
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    texts = [t for _, t in sorted(topics.items()) if len(t) > 2000]
    sentences = [s.strip() + "." for t in texts for s in t.split(". ") if 40 < len(s) < 200]

    def filler(n: int) -> str:
        return " ".join(rng.choice(sentences) for _ in range(n))

    def write(name: str, docs: list[tuple[str, str]]) -> None:
        (corpus / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs)
        )

    write("background", [(f"bg-{i}", t[:4000]) for i, t in enumerate(texts[:40])])
    write(
        "facts",
        [
            (f"fact-{f.index}-{c}", f"{f.statement} {filler(4)}")
            for f in facts
            for c in range(copies)
        ],
    )
    write(
        "distractors",
        [
            (f"distractor-{f.index}-{c}", f"{f.distractor} {filler(4)}")
            for f in facts
            for c in range(2)
        ],
    )
    return corpus


# --------------------------------------------------------------------------------------
# Baselines over the chunk table


class ChunkTable:
    def __init__(self, root: Path) -> None:
        import pyarrow.parquet as pq

        rows = []
        for part in sorted((root / "chunks").glob("part-*.parquet")):
            rows += pq.read_table(
                part, columns=["chunk_id", "source", "doc_id", "text"]
            ).to_pylist()
        self.rows = rows
        self.ids = [r["chunk_id"] for r in rows]
        self.texts = [r["text"] or "" for r in rows]


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+", text.lower())


class BM25Ranker:
    def __init__(self, table: ChunkTable) -> None:
        from rank_bm25 import BM25Okapi

        self.table = table
        self.bm25 = BM25Okapi([_words(t) for t in table.texts])

    def rank(self, query: str, k: int) -> list[int]:
        import numpy as np

        scores = self.bm25.get_scores(_words(query))
        order = np.argsort(-scores, kind="stable")[:k]
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

    def rank(self, query: str, k: int) -> list[int]:
        q = _words(query)
        candidates = set()
        for j in range(len(q) - self.N + 1):
            candidates |= self.grams.get(tuple(q[j : j + self.N]), set())

        def longest(i: int) -> int:
            text = " " + " ".join(self.words[i]) + " "
            best, lo = 0, 0
            for hi in range(1, len(q) + 1):  # two pointers over the query
                while lo < hi and f" {' '.join(q[lo:hi])} " not in text:
                    lo += 1
                best = max(best, hi - lo)
            return best

        scored = sorted(candidates, key=lambda i: (-longest(i), i))[:k]
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


class RandomRanker:
    def __init__(self, table: ChunkTable, seed: int) -> None:
        self.table, self.rng = table, random.Random(seed)

    def rank(self, query: str, k: int) -> list[int]:
        return self.rng.sample(self.table.ids, min(k, len(self.table.ids)))


# --------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/eval")
    parser.add_argument("--facts", type=int, default=48)
    parser.add_argument("--copies", type=int, default=3, help="Documents stating each fact.")
    parser.add_argument("--steps", type=int, default=600, help="Builtin model training steps.")
    parser.add_argument(
        "--pooling",
        action="append",
        default=None,
        help="Representations to test (repeatable; default: the embed stage's options).",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    poolings = args.pooling or ["mean:concepts", "max:concepts", "mean:hidden", "max:hidden",
                                "last:hidden", "weights"]  # fmt: skip
    started = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(args.facts, args.seed)
    corpus = build_corpus(out, facts, args.copies, args.seed)
    tda = [sys.executable, "-m", "tda.jobs.cli"]
    model = out / "model"
    _run([*tda, "model", "train", str(corpus), "--out", str(model), "--steps", str(args.steps),
          "--seed", str(args.seed)])  # fmt: skip

    from tda.attribution.attributor import Attributor, generate_tokens
    from tda.attribution.encoder import load_encoder

    encoder = load_encoder(str(model), "cpu")
    tokenizer = encoder.load_tokenizer()
    outputs: dict[str, dict[int, str]] = {"verbatim": {}, "paraphrase": {}}
    for f in facts:
        for condition, prompt in (
            ("verbatim", f.verbatim_prompt),
            ("paraphrase", f.paraphrase_prompt),
        ):
            ids = tokenizer.encode_batch([prompt])[0].ids.tolist()
            text = tokenizer.decode(generate_tokens(encoder, ids, 6, window=256))
            if text.strip().startswith(f.place):
                outputs[condition][f.index] = text
    reproduced = {c: len(v) for c, v in outputs.items()}
    print(f"facts reproduced: {reproduced} of {len(facts)}", flush=True)

    results: dict[str, dict] = {}
    roots = {}
    for pooling in poolings:
        root = out / f"root-{pooling.replace(':', '-')}"
        _run([*tda, "chunk", str(corpus), "--out", str(root), "--tokenizer", str(model),
              "--overwrite"])  # fmt: skip
        _run([*tda, "embed", str(root), "--model", str(model), "--pooling", pooling,
              "--overwrite"])  # fmt: skip
        _run([*tda, "index", "build", str(root), "--overwrite", "--factory", "IDMap2,Flat"])
        roots[pooling] = root
    table = ChunkTable(roots[poolings[0]])
    source_of = {r["chunk_id"]: (r["source"], r["doc_id"]) for r in table.rows}

    def relevant(f: Fact) -> set[int]:
        return {
            cid for cid, text in zip(table.ids, table.texts, strict=True)
            if source_of[cid][1].startswith(f"fact-{f.index}-") and f.place in text
        }  # fmt: skip

    def distractors(f: Fact) -> set[int]:
        return {
            cid for cid, (_, doc) in source_of.items() if doc.startswith(f"distractor-{f.index}-")
        }

    rankers = {f"tda {p}": None for p in poolings}
    rankers.update({"BM25": BM25Ranker(table), "exact span": ExactSpanRanker(table),
                    "Grad-Cos (last block)": GradCosRanker(table, encoder, args.seed),
                    "random": RandomRanker(table, args.seed)})  # fmt: skip
    attributors = {f"tda {p}": Attributor.from_root(str(roots[p]), device="cpu") for p in poolings}
    for name in rankers:
        results[name] = {}
        for condition, done in outputs.items():
            ranks, distracted = [], 0
            for f in facts:
                if f.index not in done:
                    continue
                prompt = f.verbatim_prompt if condition == "verbatim" else f.paraphrase_prompt
                if name in attributors:
                    report = attributors[name].attribute(
                        prompt, done[f.index], k=10, input_attribution="none"
                    )
                    hits = [h.chunk_id for c in report.chunks[:1] for h in c.hits]
                elif isinstance(rankers[name], GradCosRanker):
                    hits = rankers[name].rank_output(prompt, done[f.index], 10)
                else:
                    hits = rankers[name].rank(prompt + done[f.index], 10)
                good, bad = relevant(f), distractors(f)
                rank = next((i + 1 for i, h in enumerate(hits) if h in good), None)
                first_bad = next((i + 1 for i, h in enumerate(hits) if h in bad), None)
                distracted += first_bad is not None and (rank is None or first_bad < rank)
                ranks.append(rank)
            metrics = _metrics(ranks)
            metrics["distractor_first"] = round(distracted / len(ranks), 4) if ranks else None
            results[name][condition] = metrics
    report = {
        "seed": args.seed,
        "facts": len(facts),
        "copies": args.copies,
        "steps": args.steps,
        "chunks": len(table.ids),
        "reproduced": reproduced,
        "results": results,
        "seconds": round(time.time() - started),
    }
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report)
    return report


def _print_table(report: dict) -> None:
    print(
        f"\n{report['facts']} planted facts x {report['copies']} documents, {report['chunks']} "
        f"chunks; reproduced: {report['reproduced']}; {report['seconds']} s"
    )
    head = ("method", "condition", "n", "MRR", "R@1", "R@10", "distr.1st")
    print(f"{head[0]:<22} {head[1]:<11} {head[2]:>3} " + " ".join(f"{h:>6}" for h in head[3:]))
    for name, by_condition in report["results"].items():
        for condition, m in by_condition.items():
            if not m["n"]:
                print(f"{name:<22} {condition:<11} {0:>3} {'-':>6} {'-':>6} {'-':>6} {'-':>9}")
                continue
            print(f"{name:<22} {condition:<11} {m['n']:>3} {m['mrr']:>6.3f} {m['recall@1']:>6.3f} "
                  f"{m['recall@10']:>6.3f} {m['distractor_first']:>9.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
