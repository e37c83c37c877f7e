"""Known-concept taggers: a YAML concept set -> per-token labels for the builtin model.

A concept set maps each concept name to whole-word terms and regular expressions (like
dolma's taggers); a token is labelled with a concept when its characters overlap a match,
and marked as the match's final token when the match ends in it (causal labels, below).
The default set (``data/concepts_default.yaml``) ships with the package and marks some
concepts ``harmful`` (used by the pruning scans).

File format::

    version: 1
    concepts:
      - name: sea                    # unique, [a-z0-9_]+
        description: The sea, oceans, waves and coasts.
        harmful: false
        terms: [sea, ocean, waves]   # case-insensitive, whole word tokens, any spacing
        patterns: ['\\bwhal\\w*']     # Python regexes, case-insensitive
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

from tda.schemas.config import DEFAULT_CONCEPTS
from tda.schemas.errors import UserError

__all__ = [
    "DEFAULT_CONCEPTS",
    "FINAL",
    "PENDING",
    "Concept",
    "ConceptSet",
    "ConceptSetError",
    "load_concept_set",
    "positives",
]

# Token label values (ConceptSet.label_tokens): the token overlaps a match that ends in a
# later token, or the match ends in this token.
PENDING = 1
FINAL = 2

_NAME = re.compile(r"[a-z0-9_]+")
_WORD = re.compile(r"\w+|[^\w\s]")


class ConceptSetError(UserError):
    """A concept set file that cannot be used; one line naming the problem."""


@dataclass(frozen=True)
class Concept:
    name: str
    description: str
    harmful: bool
    terms: tuple[str, ...]
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class ConceptSet:
    """Named concepts, in id order (concept id = position), with a compiled tagger each."""

    concepts: tuple[Concept, ...]
    source_text: str  # the YAML it was read from (saved next to a trained model)

    def __post_init__(self) -> None:
        # Terms are matched on word tokens through a dict (first token -> phrases), not by
        # one big regex alternation per concept: Python's re tries every alternative at
        # every position, ~100x slower on a few MB of text.
        phrases: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for c, concept in enumerate(self.concepts):
            for term in concept.terms:
                words = tuple(w.lower() for w in _WORD.findall(term))
                if words:
                    phrases.setdefault(words[0], []).append((words, c))
        regexes = tuple(
            (c, re.compile(p, re.IGNORECASE))
            for c, concept in enumerate(self.concepts)
            for p in concept.patterns
        )
        object.__setattr__(self, "_phrases", phrases)
        object.__setattr__(self, "_regexes", regexes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)

    @property
    def harmful(self) -> frozenset[str]:
        return frozenset(c.name for c in self.concepts if c.harmful)

    def __len__(self) -> int:
        return len(self.concepts)

    def spans(self, text: str) -> list[list[tuple[int, int]]]:
        """Per concept, the character spans [start, end) it matches in ``text``.

        A term matches a run of whole word tokens (``\\w+`` or one punctuation mark),
        case-insensitively, whatever the spacing between them; patterns are searched as
        regular expressions (case-insensitive)."""
        out: list[list[tuple[int, int]]] = [[] for _ in self.concepts]
        phrases = self._phrases  # type: ignore[attr-defined]
        tokens = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
        for i, (word, start, _) in enumerate(tokens):
            for words, c in phrases.get(word, ()):
                j = i + len(words)
                if j <= len(tokens) and all(
                    tokens[i + k][0] == w for k, w in enumerate(words[1:], 1)
                ):
                    out[c].append((start, tokens[j - 1][2]))
        for c, rx in self._regexes:  # type: ignore[attr-defined]
            out[c].extend(m.span() for m in rx.finditer(text) if m.end() > m.start())
        return out

    def label_tokens(self, text: str, token_starts: np.ndarray) -> np.ndarray:
        """Token labels for one document.

        token_starts: (n,) character index where each token starts (non-decreasing); a
        token ends where the next starts (the last at ``len(text)``). Returns (n, C) uint8:
        ``FINAL`` (2) where a match of concept c ends in the token (its last character),
        ``PENDING`` (1) where the token overlaps a match that ends in a later token, 0
        elsewhere. ``labels > 0`` are the tokens that overlap a match; ``labels == FINAL``
        are those where a causal model has read the whole match (:func:`positives`).
        """
        n = len(token_starts)
        labels = np.zeros((n, len(self.concepts)), dtype=np.uint8)
        if n == 0:
            return labels
        token_ends = np.append(token_starts[1:], len(text))
        for c, spans in enumerate(self.spans(text)):
            for start, end in spans:
                # tokens with token_start < end and token_end > start
                lo = int(np.searchsorted(token_ends, start, side="right"))
                hi = int(np.searchsorted(token_starts, end, side="left"))
                if hi > lo:
                    col = labels[lo : hi - 1, c]
                    np.maximum(col, PENDING, out=col)
                    labels[hi - 1, c] = FINAL
        return labels


def positives(labels, causal: bool):
    """Token labels (:meth:`ConceptSet.label_tokens`; numpy or torch, any shape) -> (the
    positives, the tokens that count) as booleans of the same shape.

    Overlap labels (``causal`` False): every token that overlaps a match is positive and
    every token counts. Causal labels: a token is positive where a match ends in it, and the
    earlier tokens of a match (``PENDING``: a causal model has not read the match yet, so it
    can be neither right nor wrong there) do not count."""
    if causal:
        return labels == FINAL, labels != PENDING
    return labels > 0, labels == labels


def _parse(text: str, origin: str) -> ConceptSet:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ConceptSetError(f"{origin}: not valid YAML ({line})") from None
    if not isinstance(data, dict) or not isinstance(data.get("concepts"), list):
        raise ConceptSetError(f"{origin}: expected a mapping with a 'concepts' list")
    if data.get("version", 1) != 1:
        raise ConceptSetError(f"{origin}: concept set version {data.get('version')} is not 1")
    concepts, seen = [], set()
    for i, entry in enumerate(data["concepts"]):
        where = f"{origin}: concept #{i + 1}"
        if not isinstance(entry, dict):
            raise ConceptSetError(f"{where} must be a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConceptSetError(f"{where} needs a name of lowercase letters, digits and _")
        if name in seen:
            raise ConceptSetError(f"{origin}: concept {name!r} appears twice")
        seen.add(name)
        terms = entry.get("terms") or []
        patterns = entry.get("patterns") or []
        if not isinstance(terms, list) or not all(isinstance(t, str) and t.strip() for t in terms):
            raise ConceptSetError(f"{origin}: concept {name!r}: terms must be non-empty strings")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConceptSetError(f"{origin}: concept {name!r}: patterns must be strings")
        if not terms and not patterns:
            raise ConceptSetError(f"{origin}: concept {name!r} has no terms or patterns")
        for p in patterns:
            try:
                rx = re.compile(p)
            except re.error as exc:
                raise ConceptSetError(
                    f"{origin}: concept {name!r}: bad regex {p!r}: {exc}"
                ) from None
            if rx.search("") is not None:
                raise ConceptSetError(
                    f"{origin}: concept {name!r}: regex {p!r} matches the empty string"
                )
        concepts.append(
            Concept(
                name=name,
                description=str(entry.get("description", "")),
                harmful=bool(entry.get("harmful", False)),
                terms=tuple(terms),
                patterns=tuple(patterns),
            )
        )
    if not concepts:
        raise ConceptSetError(f"{origin}: the concept set is empty")
    return ConceptSet(tuple(concepts), text)


def load_concept_set(spec: str = DEFAULT_CONCEPTS) -> ConceptSet:
    """``default`` (the packaged set) or a path / fsspec URL of a YAML concept set."""
    if spec == DEFAULT_CONCEPTS:
        text = (
            resources.files("tda.attribution.encoders.builtin")
            .joinpath("data/concepts_default.yaml")
            .read_text(encoding="utf-8")
        )
        return _parse(text, "default concept set")
    import fsspec

    try:
        with fsspec.open(spec, "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConceptSetError(f"concept set not found: {spec}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConceptSetError(f"cannot read concept set {spec}: {exc}") from None
    return _parse(text, spec)
