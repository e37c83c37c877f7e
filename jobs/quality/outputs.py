"""Step 2 of the harness, what the trained model says: greedy outputs after each fact's
prompts (a fact counts as reproduced when the output starts with its place; only those
are scored), and the answer's log-probability the counterfactual compares.

* :class:`Query`: one reproduced (condition, fact) with its prompt and output, what every
  :class:`~tda.jobs.quality.rankers.Ranker` ranks chunks for;
* :class:`Outputs` and :func:`probe_outputs`: every fact condition's queries and counts,
  and (added once the chunks are cut) the passage conditions' probes
  (:class:`~tda.jobs.quality.passages.Probe`);
* :class:`ConditionInfo` and :func:`describe_conditions`: what each condition asked, in
  tokens (the report's conditions table);
* :func:`reproduce`, :func:`reproduced_verbatim`, :func:`answer_log_prob`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .facts import (
    CONDITION_TEXT,
    CONDITIONS,
    FACT_CONDITIONS,
    MAX_SHORT_OUTPUT_TOKENS,
    PASSAGE_CONDITIONS,
    Fact,
    background_sentences,
    prompt_for,
    short_answer,
    taught_paraphrase,
)
from .passages import Probe

__all__ = [
    "ConditionInfo",
    "Outputs",
    "Query",
    "answer_log_prob",
    "describe_conditions",
    "probe_outputs",
    "reproduce",
    "reproduced_verbatim",
]


@dataclass(frozen=True)
class Query:
    """One scored output: ``fact`` asked under ``condition`` with ``prompt``, and the
    model's ``output`` (which starts with the fact's place)."""

    condition: str
    fact: Fact
    prompt: str
    output: str


@dataclass(frozen=True)
class Outputs:
    """What the model reproduced: ``queries`` per fact condition (every one of
    :data:`~tda.jobs.quality.facts.FACT_CONDITIONS`, in that order; each list in fact
    order) and ``probed``, how many facts each condition asked; ``probes`` per passage
    condition (:data:`~tda.jobs.quality.facts.PASSAGE_CONDITIONS`; empty lists without
    passages), given outputs scored per output chunk."""

    queries: dict[str, list[Query]]
    probed: dict[str, int]
    probes: dict[str, list[Probe]] = field(
        default_factory=lambda: {c: [] for c in PASSAGE_CONDITIONS}
    )

    @property
    def reproduced(self) -> dict[str, int]:
        """fact condition -> number of reproduced facts."""
        return {c: len(qs) for c, qs in self.queries.items()}

    @property
    def conditions(self) -> list[str]:
        """Every condition with queries or probes, in table order."""
        return [c for c in CONDITIONS if c in self.queries or c in self.probes]

    def __iter__(self):
        """Every query, condition by condition, facts in order (the table's order)."""
        return (q for qs in self.queries.values() for q in qs)

    def all_probes(self):
        """Every probe, condition by condition, in order."""
        return (p for ps in self.probes.values() for p in ps)


def reproduce(encoder, tokenizer, fact: Fact, prompt: str, tokens: int = 6) -> str | None:
    """Greedy ``tokens`` after ``prompt``: the output text when it starts with ``fact``'s
    place (the fact is reproduced and gets scored), else None."""
    from tda.attribution.sequence import generate_tokens

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


def _count_tokens(tokenizer):
    return lambda text: tokenizer.encode_batch([text])[0].n_tokens


def probe_outputs(encoder, facts: list[Fact], paraphrase_docs: int, seed: int) -> Outputs:
    """Ask the model every fact under every fact condition (the paraphrase only for facts
    the corpus never states in its wording; ``seed`` draws the long prompts' background;
    the short output keeps the reproduced place alone, when it fits in
    :data:`~tda.jobs.quality.facts.MAX_SHORT_OUTPUT_TOKENS` tokens)."""
    tokenizer = encoder.load_tokenizer()
    count = _count_tokens(tokenizer)
    sentences = background_sentences()
    queries: dict[str, list[Query]] = {c: [] for c in FACT_CONDITIONS}
    probed = {c: 0 for c in FACT_CONDITIONS}
    for f in facts:
        for condition in FACT_CONDITIONS:
            if condition == "paraphrase" and taught_paraphrase(f, paraphrase_docs):
                continue  # seen in this wording: not a paraphrase
            probed[condition] += 1
            prompt = prompt_for(condition, f, sentences, seed, count)
            text = reproduce(encoder, tokenizer, f, prompt)
            if text is not None and condition == "short output":
                text = short_answer(text, f.place)
                if count(text) > MAX_SHORT_OUTPUT_TOKENS:
                    text = None  # a place this long is no short output
            if text is not None:
                queries[condition].append(Query(condition, f, prompt, text))
    return Outputs(queries, probed)


@dataclass(frozen=True)
class ConditionInfo:
    """One condition as the report describes it: what its ``prompt`` and ``output`` are
    (:data:`~tda.jobs.quality.facts.CONDITION_TEXT`), how many facts or passage outputs it
    asked (``probed``) and scored (``scored``: reproduced facts, or passage outputs),
    its scored ``items`` (one per fact; one per output chunk for a passage), the mean
    prompt length in tokens and the shortest and longest scored item in tokens (None
    when nothing was scored)."""

    condition: str
    prompt: str
    output: str
    probed: int
    scored: int
    items: int
    prompt_tokens: float | None
    item_tokens: tuple[int, int] | None


def _span_tokens(tokenizer, output: str, spans) -> list[int]:
    """Tokens of ``output`` (tokenized whole, as the attributor does) starting in each
    span."""
    (encoded,) = tokenizer.encode_batch([output])
    starts = encoded.char_starts(range(encoded.n_tokens))
    return [sum(a <= s < b for s in starts) for a, b in spans]


def describe_conditions(outputs: Outputs, tokenizer) -> list[ConditionInfo]:
    """Every condition of ``outputs``, in table order, measured with ``tokenizer``."""
    count = _count_tokens(tokenizer)
    info = []
    for c in outputs.conditions:
        if c in outputs.queries:
            qs = outputs.queries[c]
            probed, prompts = outputs.probed[c], [q.prompt for q in qs]
            items = [count(q.output) for q in qs]
        else:
            ps = outputs.probes[c]
            probed, prompts = len(ps), [p.prompt for p in ps]
            items = [n for p in ps for n in _span_tokens(tokenizer, p.output, p.spans)]
        mean = round(sum(map(count, prompts)) / len(prompts), 1) if prompts else None
        text = CONDITION_TEXT[c]
        info.append(ConditionInfo(
            c, text[0], text[1], probed, len(prompts), len(items), mean,
            (min(items), max(items)) if items else None,
        ))  # fmt: skip
    return info


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
