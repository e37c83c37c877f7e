"""The passage conditions: a stored passage given back as the output, scored per output
chunk.

* **long output**: the prompt is a passage document up to some point, the output the
  document's next :data:`OUTPUT_TOKENS` tokens exactly as stored (a user pasting a
  passage the model memorised), starting :data:`OFFSET_TOKENS` tokens into a training
  chunk, so no output chunk lines up with a training chunk. The product cuts the output
  into chunks from its first token; each output chunk is one scored item, and its
  relevant chunks are the document's training chunks whose characters overlap it.
* **near duplicate**: the same for a passage stored twice, in two sources (``passages``
  and ``mirror``, different doc ids, the same text): both copies' chunks are relevant,
  and the report says how often both come back.

The passages are real text that no other corpus document holds: sentences of Python's
documentation topics of :data:`MIN_SENTENCE_CHARS` to :data:`MAX_SENTENCE_CHARS`
characters taken from beyond the 4,000 characters the background documents keep (the
filler and long prompts draw sentences of 40 to 200 characters, so never these), and only
those sharing no run of :data:`UNIQUE_WORDS` words with the background documents, the
filler sentences or an earlier passage sentence (some topics repeat others' text).

* :class:`Passage` and :func:`make_passages`: the seeded passages (odd-numbered ones are
  mirrored);
* :class:`Probe` and :func:`make_probes`: the prompts and outputs cut from them once the
  chunks are cut (the offsets follow the chunk grid), with each output chunk's
  characters (:func:`output_spans`).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from tda.attribution.rerank import words

__all__ = [
    "FIRST_CHUNK",
    "MAX_SENTENCE_CHARS",
    "MIN_SENTENCE_CHARS",
    "OFFSET_TOKENS",
    "OUTPUT_TOKENS",
    "PASSAGE_CHARS",
    "UNIQUE_WORDS",
    "Passage",
    "PassageError",
    "Probe",
    "background_sentences",
    "make_passages",
    "make_probes",
    "output_spans",
    "passage_sentences",
]

# Sentences this long never come from the filler pool (40 to 200 characters); longer ones
# than the maximum are mostly code listings.
MIN_SENTENCE_CHARS = 200
MAX_SENTENCE_CHARS = 1000
# A passage sentence shares no run of this many words with any other corpus text.
UNIQUE_WORDS = 8
# Characters per passage: about 700 tokens of the builtin tokenizer, room for two probes.
PASSAGE_CHARS = 3000
# Where an output starts: this many tokens into a training chunk (not on the chunk grid).
OFFSET_TOKENS = 17
# The output's length in tokens: three whole 64-token output chunks and a 24-token one.
OUTPUT_TOKENS = 216
# The first probe's output starts in the passage's chunk FIRST_CHUNK (so its prompt holds
# a whole chunk and more); the next one a chunk after the previous output ends.
FIRST_CHUNK = 1
# Background documents keep their topic's first this many characters (facts.build_corpus).
_BACKGROUND_CHARS = 4000


class PassageError(RuntimeError):
    """A passage that does not line up with its chunks (another tokenizer, or chunks that
    do not tile the document): the harness's own inconsistency, named in one line."""


@dataclass(frozen=True)
class Passage:
    """One stored passage: ``index``, its ``text`` and whether a second source holds a
    copy (``mirrored``: the near-duplicate condition; else the long-output one)."""

    index: int
    text: str
    mirrored: bool

    @property
    def doc_id(self) -> str:
        return f"passage-{self.index}"

    @property
    def copies(self) -> tuple[str, ...]:
        """The doc ids holding this text: its own first, then its mirror's."""
        return (self.doc_id, f"mirror-{self.index}") if self.mirrored else (self.doc_id,)

    @property
    def condition(self) -> str:
        return "near duplicate" if self.mirrored else "long output"


def _grams(text: str, n: int = UNIQUE_WORDS) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words (lower-cased ``\\w+``) of ``text``."""
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def background_sentences() -> list[str]:
    """Sentences of Python's documentation topics (40 to 200 characters), in a fixed
    order: what the corpus's filler and the long prompts draw from."""
    from pydoc_data.topics import topics

    texts = [t for _, t in sorted(topics.items()) if len(t) > 2000]
    return [s.strip() + "." for t in texts for s in t.split(". ") if 40 < len(s) < 200]


def passage_sentences() -> list[str]:
    """Sentences of :data:`MIN_SENTENCE_CHARS` to :data:`MAX_SENTENCE_CHARS` characters
    from Python's documentation topics (over 2,000 characters), past the characters the
    background documents keep, in topic order; only those sharing no
    :data:`UNIQUE_WORDS`-word run with the background documents, the filler sentences or
    an earlier kept sentence."""
    from pydoc_data.topics import topics

    texts = [t for _, t in sorted(topics.items()) if len(t) > 2000]
    seen: set[tuple[str, ...]] = set()
    for other in [t[:_BACKGROUND_CHARS] for t in texts] + background_sentences():
        seen |= _grams(other)
    out = []
    for t in texts:
        # the first piece starts mid-sentence: dropped
        for s in t[_BACKGROUND_CHARS:].split(". ")[1:]:
            s = s.strip()
            grams = _grams(s)
            if MIN_SENTENCE_CHARS <= len(s) <= MAX_SENTENCE_CHARS and not grams & seen:
                seen |= grams
                out.append(s + ".")
    return out


def make_passages(n: int, seed: int, chars: int = PASSAGE_CHARS) -> list[Passage]:
    """``n`` passages of at least ``chars`` characters: :func:`passage_sentences` in an
    order shuffled by ``seed``, consecutive ones per passage (no sentence in two
    passages); odd-numbered passages are mirrored. Refused when the sentences run out."""
    sentences = passage_sentences()
    random.Random(seed * 7919 + 2).shuffle(sentences)
    passages, at = [], 0
    for i in range(n):
        taken: list[str] = []
        while sum(len(s) + 1 for s in taken) < chars:
            if at >= len(sentences):
                raise PassageError(
                    f"{n} passages of {chars} characters need more than the "
                    f"{len(sentences)} long documentation sentences; ask for fewer"
                )
            taken.append(sentences[at])
            at += 1
        passages.append(Passage(i, " ".join(taken), mirrored=i % 2 == 1))
    return passages


@dataclass(frozen=True)
class Probe:
    """One passage output: ``condition``, the ``passage`` index and the doc ids holding
    its text (``copies``: the passage's own first), the ``prompt`` (the document up to the
    output), the ``output`` (the document's next characters, verbatim), the output's first
    character in the document (``offset``) and each output chunk's characters in
    ``output`` (``spans``, [start, end), as the product cuts the output: chunk-size tokens
    from its first token). Each span is one scored item."""

    condition: str
    passage: int
    copies: tuple[str, ...]
    prompt: str
    output: str
    offset: int
    spans: tuple[tuple[int, int], ...]


def output_spans(tokenizer, output: str, chunk_size: int) -> tuple[tuple[int, int], ...]:
    """``output``'s chunks as the attributor cuts them (``chunk_size`` tokens of
    ``tokenizer`` from its first token; the last one keeps the rest), as character spans
    [start, end) in ``output``."""
    (encoded,) = tokenizer.encode_batch([output])
    n = encoded.n_tokens
    if n == 0:
        return ()
    starts = encoded.char_starts(range(n))
    bounds = [starts[t] for t in range(0, n, chunk_size)] + [len(output)]
    return tuple(itertools.pairwise(bounds))


def make_probes(
    passages: list[Passage], table, tokenizer, chunk_size: int,
    output_tokens: int = OUTPUT_TOKENS, offset_tokens: int = OFFSET_TOKENS,
) -> dict[str, list[Probe]]:  # fmt: skip
    """Condition -> its probes, cut from each passage's own document as chunked in
    ``table`` (a :class:`~tda.jobs.quality.chunks.ChunkTable`): outputs of
    ``output_tokens`` tokens starting ``offset_tokens`` into chunk :data:`FIRST_CHUNK`,
    then into the first chunk after a whole chunk's gap, while the document holds them.
    ``tokenizer`` is the chunks' (checked: its token starts must be the chunks' starts);
    a passage whose chunks are gone (pruned) gets no probe."""
    probes: dict[str, list[Probe]] = {"long output": [], "near duplicate": []}
    for p in passages:
        rows = table.doc_chunks(p.doc_id)
        if not rows:
            continue
        (encoded,) = tokenizer.encode_batch([p.text])
        n = encoded.n_tokens
        starts = encoded.char_starts(range(n))
        grid = [starts[t] for t in range(0, n, chunk_size)]
        if grid != [r["char_start"] for r in rows]:
            raise PassageError(
                f"{p.doc_id}'s chunks do not start every {chunk_size} tokens of this "
                f"tokenizer; the probes need the tokenizer and chunk size the chunks were "
                f"cut with"
            )
        chunk = FIRST_CHUNK
        while True:
            t0 = chunk * chunk_size + offset_tokens
            t1 = t0 + output_tokens
            if t1 > n:
                break
            a = starts[t0]
            b = starts[t1] if t1 < n else len(p.text)
            output = p.text[a:b]
            probes[p.condition].append(
                Probe(p.condition, p.index, p.copies, p.text[:a], output, a,
                      output_spans(tokenizer, output, chunk_size))
            )  # fmt: skip
            chunk = -(-t1 // chunk_size) + 1  # a whole chunk between two outputs
    return probes
