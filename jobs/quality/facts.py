"""Step 1 of the harness, the corpus: planted facts (``{entity} was founded in {place}.``,
entities and places made of ordinary words), the prompts each condition asks the model
with, and the corpus files that state the facts among Python's documentation topics.

* :class:`Fact` and :func:`make_facts`: the seeded facts and their wordings;
* :data:`CONDITIONS` and :func:`prompt_for`: verbatim prompt, long prompt, short output,
  paraphrase (the fact conditions), then the passage conditions (long output, near
  duplicate: :mod:`~tda.jobs.quality.passages`); :data:`CONDITION_TEXT` says what each
  asks;
* :func:`build_corpus`: OUT/corpus/{background,facts,distractors}.jsonl, and with
  passages OUT/corpus/{passages,mirror}.jsonl.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .passages import OFFSET_TOKENS, OUTPUT_TOKENS, Passage, background_sentences

__all__ = [
    "CONDITIONS",
    "CONDITION_TEXT",
    "FACT_CONDITIONS",
    "MIN_SHORT_PROMPT_TOKENS",
    "PASSAGE_CONDITIONS",
    "Fact",
    "background_sentences",
    "build_corpus",
    "long_prompt",
    "make_facts",
    "prompt_for",
    "short_answer",
    "short_prompt",
    "taught_paraphrase",
]

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

# The conditions a fact is asked in, in table order: its verbatim prompt, that prompt after
# background sentences (a 6-token output after about 50 tokens), the place alone after at
# least 50 tokens (short output), and the paraphrase (scored only for facts never stated
# that way). Each reproduced fact is one scored item.
FACT_CONDITIONS = ("verbatim", "long prompt", "short output", "paraphrase")
# The passage conditions (:mod:`.passages`): a stored passage given as the output, scored
# per output chunk (each one scored item).
PASSAGE_CONDITIONS = ("long output", "near duplicate")
CONDITIONS = FACT_CONDITIONS + PASSAGE_CONDITIONS

# What each condition's prompt and output are (the report's conditions table).
CONDITION_TEXT = {
    "verbatim": ("`{entity} was founded in`", "6 tokens generated (greedy)"),
    "long prompt": (
        "2 background sentences + the verbatim prompt",
        "6 tokens generated (greedy)",
    ),
    "short output": (
        "background sentences + the verbatim prompt, at least 50 tokens",
        "the generated place alone (at most 7 tokens)",
    ),
    "paraphrase": ("`The place where {entity} was founded is`", "6 tokens generated (greedy)"),
    "long output": (
        "a passage document up to the output",
        f"the passage's next {OUTPUT_TOKENS} tokens as stored, starting {OFFSET_TOKENS} "
        f"tokens into a training chunk; one item per output chunk",
    ),
    "near duplicate": (
        "as long output, for a passage stored in two sources (passages, mirror)",
        "as long output; both copies are relevant",
    ),
}

# The short-output condition's prompts hold at least this many tokens; its outputs at
# most this many (the place, and its full stop when the model wrote one).
MIN_SHORT_PROMPT_TOKENS = 50
MAX_SHORT_OUTPUT_TOKENS = 7


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
    """``n`` facts with distinct entities and places, drawn from the word lists with a
    generator seeded by ``seed`` (same seed, same facts)."""
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


def long_prompt(fact: Fact, sentences: list[str], seed: int, n: int = 2) -> str:
    """The verbatim prompt after ``n`` background sentences (drawn per fact, seeded): an
    output conditioned on a longer prompt, as in real use, not on 8 tokens alone."""
    rng = random.Random(seed * 100_003 + fact.index)
    return " ".join(rng.choice(sentences) for _ in range(n)) + " " + fact.verbatim_prompt


def short_prompt(
    fact: Fact, sentences: list[str], seed: int, count_tokens: Callable[[str], int],
    min_tokens: int = MIN_SHORT_PROMPT_TOKENS,
) -> str:  # fmt: skip
    """The short-output condition's prompt: the long prompt (same background sentences,
    so the two conditions differ in their output only), with more of its seeded sentences
    until ``count_tokens`` (the model's tokenizer) gives at least ``min_tokens``."""
    n = 2
    prompt = long_prompt(fact, sentences, seed, n)
    while count_tokens(prompt) < min_tokens:
        n += 1
        prompt = long_prompt(fact, sentences, seed, n)
    return prompt


def short_answer(output: str, place: str) -> str:
    """A reproduced output (it starts with ``place``) cut after the place and, when the
    model wrote one, its full stop: ``" Ashgate. The first"`` -> ``" Ashgate."``."""
    end = output.index(place) + len(place)
    return output[: end + 1] if output[end : end + 1] == "." else output[:end]


def prompt_for(
    condition: str, fact: Fact, sentences: list[str], seed: int,
    count_tokens: Callable[[str], int] | None = None,
) -> str:  # fmt: skip
    """The prompt ``fact`` is asked with under ``condition`` (one of
    :data:`FACT_CONDITIONS`); ``sentences`` and ``seed`` draw the long prompt's
    background; the short output's needs ``count_tokens`` (the model's tokenizer)."""
    if condition == "verbatim":
        return fact.verbatim_prompt
    if condition == "long prompt":
        return long_prompt(fact, sentences, seed)
    if condition == "short output":
        if count_tokens is None:
            raise ValueError("the short-output prompt needs count_tokens (the tokenizer)")
        return short_prompt(fact, sentences, seed, count_tokens)
    if condition == "paraphrase":
        return fact.paraphrase_prompt
    raise ValueError(f"unknown condition {condition!r}; one of {', '.join(FACT_CONDITIONS)}")


def build_corpus(
    out: Path, facts: list[Fact], copies: int, seed: int, paraphrase_docs: int = 0, lead: int = 0,
    passages: Sequence[Passage] = (),
) -> Path:  # fmt: skip
    """OUT/corpus/{background,facts,distractors}.jsonl (one source each). With
    ``paraphrase_docs``, every even-numbered fact gets that many more documents
    (``fact-{i}-p{c}``) opening with its paraphrase statement (``The place where ... was
    founded is {place}.``), so the model can learn that both wordings say the same. With
    ``passages`` (:func:`~tda.jobs.quality.passages.make_passages`), OUT/corpus/passages.jsonl
    holds each (``passage-{i}``) and OUT/corpus/mirror.jsonl a copy of each mirrored one
    (``mirror-{i}``, the same text): files of their own, so the other files' bytes do not
    change with them."""
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
    if passages:
        write("passages", [(p.doc_id, p.text) for p in passages])
        mirrored = [(p.copies[1], p.text) for p in passages if p.mirrored]
        if mirrored:
            write("mirror", mirrored)
    return corpus
