"""Step 2 of the harness, what the trained model says: greedy outputs after each fact's
prompts (a fact counts as reproduced when the output starts with its place; only those
are scored), and the answer's log-probability the counterfactual compares.

* :class:`Query`: one reproduced (condition, fact) with its prompt and output, what every
  :class:`~tda.jobs.quality.rankers.Ranker` ranks chunks for;
* :class:`Outputs` and :func:`probe_outputs`: every condition's queries and counts;
* :func:`reproduce`, :func:`reproduced_verbatim`, :func:`answer_log_prob`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .facts import CONDITIONS, Fact, background_sentences, prompt_for, taught_paraphrase

__all__ = [
    "Outputs",
    "Query",
    "answer_log_prob",
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
    """What the model reproduced: ``queries`` per condition (every one of
    :data:`~tda.jobs.quality.facts.CONDITIONS`, in that order; each list in fact order)
    and ``probed``, how many facts each condition asked."""

    queries: dict[str, list[Query]]
    probed: dict[str, int]

    @property
    def reproduced(self) -> dict[str, int]:
        """condition -> number of reproduced facts."""
        return {c: len(qs) for c, qs in self.queries.items()}

    def __iter__(self):
        """Every query, condition by condition, facts in order (the table's order)."""
        return (q for qs in self.queries.values() for q in qs)


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


def probe_outputs(encoder, facts: list[Fact], paraphrase_docs: int, seed: int) -> Outputs:
    """Ask the model every fact under every condition (the paraphrase only for facts the
    corpus never states in its wording; ``seed`` draws the long prompts' background)."""
    tokenizer = encoder.load_tokenizer()
    sentences = background_sentences()
    queries: dict[str, list[Query]] = {c: [] for c in CONDITIONS}
    probed = {c: 0 for c in CONDITIONS}
    for f in facts:
        for condition in CONDITIONS:
            if condition == "paraphrase" and taught_paraphrase(f, paraphrase_docs):
                continue  # seen in this wording: not a paraphrase
            probed[condition] += 1
            prompt = prompt_for(condition, f, sentences, seed)
            text = reproduce(encoder, tokenizer, f, prompt)
            if text is not None:
                queries[condition].append(Query(condition, f, prompt, text))
    return Outputs(queries, probed)


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
