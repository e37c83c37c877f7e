"""The counterfactual check of an attribution: did the named training chunks drive the
output? ``tda attribute --check``, ``tda check REPORT.json``, :meth:`Attributor.check`.

Retraining without the hits is the real test (``make eval`` does it: minutes on a toy
corpus, impossible on a real model). This is its cheap stand-in, approximate unlearning
on a copy of the model, per output chunk:

1. :class:`ModelCopy`: a deep copy of the encoder's model (the original's weights are
   never written), the weights that move (``scope``: all, or the last block plus the
   parameters outside the blocks) snapshotted so that every set starts from the same
   weights.
2. The sets to unlearn, ``k`` training chunks each: the chunk's hits (attributed); ``k``
   chunks the index's lexical channel (BM25) returns for the chunk's text; ``draws``
   sets of ``k`` random chunks of the index (:class:`ChunkSampler`, seeded), each cut to
   the length of the hit it stands for, so that random sets hold the same token counts.
3. :func:`unlearn`: ``steps`` steps of normalised gradient ascent on the set's mean token
   loss, each step ``lr`` times the moved weights' norm long: every set gets the same
   budget of weight change, so a set moves the output only as far as its gradient points
   where the output's does (a larger loss does not buy a larger step). Method
   ``project``: the gradient of the evidence the index still finds is projected out of
   each step; ``forget``: steps stop once the set's loss reaches the random draws';
   ``unique``: the gradients of the set's own nearest chunks (BM25, :data:`_NEIGHBOURS`
   a chunk) are projected out, and a step keeps only the length of what is left.
4. The output chunk's log-probability (its tokens after everything before them, one
   forward pass over prompt + output) before and after: the drop, less the set's damage
   to all text (``control``: the rise of the mean token loss on that many random training
   chunks, times the chunk's token count).
5. The attributed drop against the random draws: z-score and empirical p-value
   (:func:`significance`); a random set depends only on the hits' lengths, so output
   chunks whose hits have the same lengths share the random draws (one unlearning per
   draw serves all their log-probabilities).

Seeded and deterministic: the random sets come from a ``numpy`` generator seeded by
``seed``; the ascent has no randomness; figures are rounded to 5 decimals.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from tda.attribution.encoders import ConceptEncoder
from tda.attribution.index.reader import IndexReader
from tda.attribution.io.fs import build_root
from tda.schemas import (
    AttributionReport,
    AttributionRequest,
    CheckSettings,
    ChunkCheck,
    UserError,
)

__all__ = [
    "CheckError",
    "CheckTarget",
    "ChunkSampler",
    "ModelCopy",
    "check_chunks",
    "check_report",
    "significance",
    "unlearn",
]

# A block's parameters are named "<...>.<blocks|layers|h>.<i>.<...>" in the models we load
# (builtin: blocks.3.attn..., Steerling: transformer.blocks.3...).
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)\.")
# Random candidates tried per stand-in before taking the longest seen (nearly every
# training chunk is full length, so the first usually fits).
_TRIES = 32
# The unique method's kept neighbours per unlearned chunk (BM25 on the chunk's text): its
# other copies, near-duplicates and chunks of the same template, what retraining keeps.
# 2 and 4 separate the harness's true sources alike (76%); 2 costs 60% of 4's time
# (benchmarks/check_neighbours.py, docs/quality.md).
_NEIGHBOURS = 2


class CheckError(UserError):
    """A report or index the check cannot run on (chunks stored without text, a report
    without its output's token ids whose text no longer tokenizes to its chunks)."""


@dataclass(frozen=True)
class CheckTarget:
    """One output chunk to check: its token span [start, end) in the checked sequence,
    its hits' chunk ids (the attributed set) and the text its BM25 query searches."""

    start: int
    end: int
    hits: tuple[int, ...]
    lexical_text: str


class ModelCopy:
    """A copy of ``encoder`` whose model is a deep copy: unlearning writes only to it.
    ``scope`` ``all`` moves every parameter; ``last`` the last transformer block's and
    those outside the blocks (embeddings, concept heads, LM head)."""

    def __init__(self, encoder: ConceptEncoder, scope: str) -> None:
        import torch

        model = getattr(encoder, "model", None)
        if model is None:
            raise CheckError(f"encoder {encoder.info.spec} has no torch model to copy")
        self.encoder = copy.copy(encoder)  # shares the tokenizer and concept tables
        self.encoder.model = copy.deepcopy(model)  # type: ignore[attr-defined]
        named = list(self.encoder.model.named_parameters())
        blocks = [int(m.group(1)) for n, _ in named if (m := _BLOCK.search(n))]
        last = max(blocks, default=None)
        self.params = []
        for name, param in named:
            found = _BLOCK.search(name)
            moves = scope == "all" or found is None or int(found.group(1)) == last
            param.requires_grad_(moves)
            if moves:
                self.params.append(param)
        with torch.no_grad():
            self._snapshot = [p.detach().clone() for p in self.params]
            self.norm = float(torch.sqrt(sum((p.double() ** 2).sum() for p in self.params)))

    def reset(self) -> None:
        """Back to the original weights (before the next set is unlearned)."""
        import torch

        with torch.no_grad():
            for p, saved in zip(self.params, self._snapshot, strict=True):
                p.copy_(saved)

    def chunk_log_probs(self, ids: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
        """ids (T,) -> (n,) float64: per span [s, e), the sum of log p(token t | tokens < t)
        over t in [max(s, 1), e), under the copy's current weights (one forward pass)."""
        import torch

        enc = self.encoder
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64)[None], device=enc.device)  # (1, T)
        with torch.no_grad():
            logits = enc.forward(x, with_logits=True).logits[0, :-1].float()  # (T-1, V)
            lp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0].double()
        lp = torch.cat([lp.new_zeros(1), lp]).cpu().numpy()  # (T,): 0 for the first token
        return np.array([lp[s:e].sum() for s, e in spans], dtype=np.float64)


def _by_length(sequences: Sequence[np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
    """Sequences (each (L_i,) int64) -> {L: (n, L) stacked}, so no padding reaches a real
    token, and the number of tokens they predict (those of length >= 2)."""
    by_length: dict[int, list[np.ndarray]] = {}
    for seq in sequences:
        if len(seq) >= 2:
            by_length.setdefault(len(seq), []).append(np.asarray(seq, dtype=np.int64))
    tokens = sum((length - 1) * len(group) for length, group in by_length.items())
    return {length: np.stack(g) for length, g in sorted(by_length.items())}, tokens


def _summed_loss(model: ModelCopy, batch: np.ndarray):
    """(n, L) int64 -> the summed next-token loss of the batch under the copy's weights."""
    import torch

    enc = model.encoder
    x = torch.as_tensor(batch, device=enc.device)
    logits = enc.forward(x, with_logits=True).logits[:, :-1].float()  # (n, L-1, V)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
    )


def _loss_gradient(model: ModelCopy, sequences: Sequence[np.ndarray]):
    """The gradient of ``sequences``' mean token loss (each (L_i,) int64; batched by
    length, so no padding reaches a real token) over ``model.params`` at its current
    weights -> (one tensor per parameter, the mean token loss), or (None, nan) when they
    hold no token to predict."""
    import torch

    groups, tokens = _by_length(sequences)
    if tokens == 0:
        return None, math.nan
    for p in model.params:
        p.grad = None
    total = 0.0
    with torch.enable_grad():
        for batch in groups.values():
            loss = _summed_loss(model, batch)
            (loss / tokens).backward()
            total += float(loss.detach())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.params]
    for p in model.params:
        p.grad = None
    return grads, total / tokens


def _mean_loss(model: ModelCopy, sequences: Sequence[np.ndarray]) -> float:
    """``sequences``' mean token loss (each (L_i,) int64) under the copy's current weights
    (nan when they hold no token to predict)."""
    import torch

    groups, tokens = _by_length(sequences)
    if tokens == 0:
        return math.nan
    with torch.no_grad():
        return sum(float(_summed_loss(model, batch)) for batch in groups.values()) / tokens


def _dot(a, b) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def unlearn(
    model: ModelCopy, sequences: Sequence[np.ndarray], steps: int, lr: float, retain=None,
    until: float | None = None, basis=None,
) -> int:  # fmt: skip
    """``steps`` steps of normalised gradient ascent on ``model`` (from its current
    weights): each raises the mean token loss of ``sequences`` (each (L_i,) int64, a
    training chunk's tokens) by a step of length ``lr * model.norm`` along the loss
    gradient. ``retain`` (the ``project`` method): the loss gradient of the evidence
    that stays in the corpus (:func:`_loss_gradient` of it, at the original weights);
    each step's direction then has its component along ``retain`` removed when the two
    point the same way, so what the kept chunks also teach is not unlearned. ``until``
    (the ``forget`` method): stop as soon as the sequences' mean token loss is at least
    this (``steps`` is then a cap). ``basis`` (the ``unique`` method, :func:`_basis`):
    (g, w) whose product's orthonormal columns are directions over the moved weights,
    flattened; each step's gradient has its component in their span removed and keeps
    its full length's scale, so a step is ``lr * model.norm`` times the share of the
    gradient that is the set's own. -> the steps taken."""
    import torch

    rr = _dot(retain, retain) if retain is not None else 0.0
    for step in range(steps):
        grads, loss = _loss_gradient(model, sequences)
        if grads is None or (until is not None and loss >= until):
            return step
        full = math.sqrt(max(_dot(grads, grads), 0.0))
        if basis is not None:
            if not math.isfinite(full) or full <= 0:
                return step
            vectors, w = basis  # Q = vectors @ w: (P, m) @ (m, m') orthonormal columns
            flat = torch.cat([g.reshape(-1) for g in grads]).to(vectors.dtype)  # (P,)
            flat = flat - vectors @ (w @ (w.T @ (vectors.T @ flat)))
            grads = [part.view_as(g).to(g.dtype)
                     for part, g in zip(flat.split([g.numel() for g in grads]), grads,
                                        strict=True)]  # fmt: skip
            length = full  # what is left keeps the full gradient's scale: a shorter step
        else:
            if rr > 0:
                along = _dot(grads, retain) / rr
                if along > 0:
                    grads = [g - along * r for g, r in zip(grads, retain, strict=True)]
            length = math.sqrt(max(_dot(grads, grads), 0.0))
            # nothing left once the kept evidence is projected out (a twin of the set is
            # kept): what is left is rounding, and a normalised step would blow it up
            if length <= 1e-6 * full or not math.isfinite(length):
                return step
        with torch.no_grad():
            for p, g in zip(model.params, grads, strict=True):
                p.add_(g, alpha=lr * model.norm / length)  # ascent: up the loss
    return steps


class ChunkSampler:
    """Uniformly random training chunks of an index (every chunk part's rows, pruned parts
    included), with their texts; a ``numpy`` generator seeded by the caller."""

    def __init__(self, reader: IndexReader) -> None:
        import pyarrow.parquet as pq

        fs, root = build_root(reader.root)
        self._reader = reader
        self._groups: list[tuple[int, int, int]] = []  # (file index, row group, rows)
        for f in sorted(reader.manifest.inputs, key=lambda f: f.index):
            path = root.chunk_part(f.index)
            if not fs.exists(path):
                continue
            with fs.open(path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
                for g in range(meta.num_row_groups):
                    self._groups.append((f.index, g, meta.row_group(g).num_rows))
        self._ends = np.cumsum([n for _, _, n in self._groups])
        if not self._groups or self._ends[-1] == 0:
            raise CheckError(f"the index in {reader.root} has no chunk rows to sample from")
        self.total = int(self._ends[-1])

    def draw(self, rng: np.random.Generator) -> tuple[int, str]:
        """One random chunk: (chunk id, its text; empty when stored without text)."""
        row = int(rng.integers(self.total))
        g = int(np.searchsorted(self._ends, row, side="right"))
        file_index, group, _ = self._groups[g]
        offset = row - (int(self._ends[g - 1]) if g else 0)
        table = self._reader.lookup.chunks.group(file_index, group)
        text = table["text"][offset].as_py() if "text" in table.column_names else None
        return int(table["chunk_id"][offset].as_py()), text or ""


def significance(attributed: float, random: Sequence[float]) -> tuple[float | None, float]:
    """(z, p) of an attributed drop against random drops (R,): z = (attributed - mean) /
    sample standard deviation (None when they do not vary), p = (1 + #{random >=
    attributed}) / (1 + R)."""
    values = np.asarray(random, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    z = None if std <= 1e-12 else (attributed - float(values.mean())) / std
    p = (1 + int((values >= attributed).sum())) / (1 + len(values))
    return z, p


def _verdict(n_hits: int, attributed: float, random: Sequence[float]) -> str:
    if n_hits == 0:
        return "no hits"
    if attributed > 0 and all(attributed > r for r in random):
        return "supported"
    if attributed > float(np.mean(random)):
        return "weak"
    return "not supported"


def check_chunks(
    encoder: ConceptEncoder, reader: IndexReader, ids: np.ndarray,
    targets: Sequence[CheckTarget], settings: CheckSettings,
) -> tuple[list[ChunkCheck], CheckSettings]:  # fmt: skip
    """The check of every target chunk of the sequence ``ids`` (T,) (the module's steps);
    -> (one :class:`ChunkCheck` per target, ``settings`` with the wall time).

    ``settings.control``: N random training chunks (seeded, none of the hits) whose mean
    token loss is measured after each unlearning; every drop then has the set's general
    damage taken off, the rise of that loss times the target's token count."""
    started = time.perf_counter()
    tokenizer = encoder.tokenizer
    window = encoder.info.max_window

    def tokens(texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids[:window], dtype=np.int64) for e in tokenizer.encode_batch(texts)]

    def texts_of(chunk_ids: Sequence[int]) -> list[str]:
        texts = [reader.lookup.get(int(c)).text for c in chunk_ids]
        if any(t is None for t in texts):
            raise CheckError(
                f"the chunks of {reader.root} were stored without text (--no-text): the "
                f"check unlearns a chunk's tokens and cannot read them"
            )
        return [t or "" for t in texts]

    spans = [(t.start, t.end) for t in targets]
    model = ModelCopy(encoder, settings.scope)
    before = model.chunk_log_probs(ids, spans)  # (n,)

    # the project method: the evidence the index finds for the targets; a set's unlearning
    # keeps what the rest of it teaches (the evidence less the set)
    pool = _evidence(reader, ids, targets) if settings.method == "project" else ()
    lexical = reader.channels.lexical
    if settings.method == "unique" and lexical is None:
        raise CheckError(
            f"the index in {reader.root} has no lexical channel: the unique method finds "
            f"the neighbours a set leaves in the corpus with it (use --method ascent)"
        )
    retained: dict[tuple[int, ...], object] = {}

    def retain_for(unlearned: set[int]):
        kept = tuple(c for c in pool if c not in unlearned)
        if not kept:
            return None
        if kept not in retained:
            model.reset()
            retained[kept] = _loss_gradient(model, tokens(texts_of(kept)))[0]
        return retained[kept]

    controls = _controls(reader, targets, settings.control, settings.seed, tokens)
    control_before = _mean_loss(model, controls) if controls else 0.0
    predicted = np.array([e - max(s, 1) for s, e in spans], dtype=np.float64)  # (n,)

    def drops(
        sequences: Sequence[np.ndarray], unlearned: set[int], until: float | None
    ) -> np.ndarray:
        """(n,) every target's drop after unlearning ``sequences`` (the chunks
        ``unlearned``; random ones are cut to length) from the original weights."""
        retain = retain_for(unlearned)
        basis = None
        if settings.method == "unique":
            texts = [tokenizer.decode(seq.tolist()) for seq in sequences]
            kept = _neighbours(lexical, texts, unlearned, _NEIGHBOURS)
            basis = _basis(model, tokens(texts_of(kept))) if kept else None
        model.reset()
        unlearn(model, sequences, settings.steps, settings.lr, retain, until, basis)
        drop = before - model.chunk_log_probs(ids, spans)
        if controls:
            drop -= (_mean_loss(model, controls) - control_before) * predicted
        return drop

    # a set of chunk ids and its forget level -> its drops (n,)
    known: dict[tuple[tuple[int, ...], float | None], np.ndarray] = {}

    def set_drops(chunk_ids: tuple[int, ...], until: float | None) -> np.ndarray:
        """:func:`drops` of a set of index chunks, once per distinct set (chunks whose hits,
        or BM25 lists, are the same set share one unlearning)."""
        key = (tuple(sorted(chunk_ids)), until)
        if key not in known:
            known[key] = drops(tokens(texts_of(chunk_ids)), set(key[0]), until)
        return known[key]

    hit_tokens = [tokens(texts_of(t.hits)) for t in targets]
    excluded = {c for t in targets for c in t.hits} | set(pool)
    sampler = ChunkSampler(reader) if any(t.hits for t in targets) else None
    # hit lengths -> ((draws, n) drops, the forget level: None unless method forget)
    shared: dict[tuple[int, ...], tuple[np.ndarray, float | None]] = {}
    results = []
    for c, target in enumerate(targets):
        k = len(target.hits)
        if k == 0:
            results.append(ChunkCheck(0, round(float(before[c]), 5), 0.0, None, (), 0.0, 0.0,
                                      None, 1.0, "no hits"))  # fmt: skip
            continue
        lengths = tuple(sorted((len(s) for s in hit_tokens[c]), reverse=True))
        if lengths not in shared:
            # seeded per length profile: the draws do not depend on which chunks came first
            rng = np.random.default_rng([settings.seed, *lengths])
            sets = [_random_set(sampler, rng, lengths, excluded, tokens)
                    for _ in range(settings.draws)]  # fmt: skip
            until = None
            if settings.method == "forget":
                # what "not learned" looks like: the random sets' loss at the original weights
                model.reset()
                until = round(float(np.mean([_mean_loss(model, s) for _, s in sets])), 6)
            shared[lengths] = (np.stack([drops(s, set(c), until) for c, s in sets]), until)
        random_drops, until = shared[lengths]
        attributed = float(set_drops(target.hits, until)[c])
        bm25, bm25_ids = None, ()
        if lexical is not None:
            bm25_ids = tuple(h.chunk_id for h in lexical.search(target.lexical_text, k))
            bm25 = float(set_drops(bm25_ids, until)[c]) if bm25_ids else None
        random = [float(x) for x in random_drops[:, c]]
        z, p = significance(attributed, random)
        results.append(
            ChunkCheck(
                chunks=k,
                log_prob=round(float(before[c]), 5),
                attributed_drop=round(attributed, 5),
                bm25_drop=None if bm25 is None else round(bm25, 5),
                random_drops=tuple(round(r, 5) for r in random),
                random_mean=round(float(np.mean(random)), 5),
                random_std=round(float(np.std(random, ddof=1)), 5),
                z=None if z is None else round(z, 3),
                p_value=round(p, 5),
                verdict=_verdict(k, attributed, random),
                bm25_chunk_ids=bm25_ids,
            )
        )
    model.reset()
    seconds = round(time.perf_counter() - started, 3)
    return results, replace(settings, seconds=seconds)


def _evidence(reader: IndexReader, ids: np.ndarray, targets: Sequence[CheckTarget]):
    """The ``project`` method's evidence: per target with hits, the ``2 x hits`` chunks
    the index's span channel finds for its tokens and as many from its lexical channel
    for its text -> chunk ids, first found first, each once."""
    span, lexical = reader.channels.span, reader.channels.lexical
    if span is None and lexical is None:
        raise CheckError(
            f"the index in {reader.root} has no span or lexical channel: the project "
            f"method finds the evidence that stays with them (use --method ascent)"
        )
    found: list[int] = []
    query = [int(t) for t in ids]
    for t in targets:
        m = 2 * len(t.hits)
        if m == 0:
            continue
        if span is not None:
            found += [h.chunk_id for h in span.search(query, (t.start, t.end), m)]
        if lexical is not None:
            found += [h.chunk_id for h in lexical.search(t.lexical_text, m)]
    return tuple(dict.fromkeys(int(c) for c in found))


def _neighbours(lexical, texts: Sequence[str], excluded: set[int], m: int) -> list[int]:
    """The ``unique`` method's kept neighbours of a set: per chunk text, the first ``m``
    chunks the lexical channel (BM25) returns for it that are not ``excluded`` (the set
    itself) -> chunk ids, each once, in the order found."""
    found: list[int] = []
    for text in texts:
        hits = lexical.search(text, m + len(excluded))
        found += [h.chunk_id for h in hits if h.chunk_id not in excluded][:m]
    return list(dict.fromkeys(int(c) for c in found))


def _basis(model: ModelCopy, sequences: Sequence[np.ndarray]):
    """The ``unique`` method's kept directions: each sequence's (a kept neighbour's tokens,
    (L_i,) int64) mean-token-loss gradient at the copy's original weights, flattened over
    the moved weights -> (g (P, m), w (m, m')) float64 with orthonormal columns in g @ w
    (m' <= m: directions that repeat others, eigenvalues of the Gram matrix under 1e-10 of
    the largest, dropped), or None when no sequence has a token to predict. Float64: in
    float32 a twin's projection leaves ~1e-3 of the gradient, which a step then takes."""
    import torch

    model.reset()
    size = sum(p.numel() for p in model.params)
    rows = torch.empty(len(sequences), size, dtype=torch.float64)  # (m, P), filled in place
    m = 0
    for seq in sequences:
        grads, _ = _loss_gradient(model, [seq])
        if grads is None:
            continue
        offset = 0
        for grad in grads:  # straight into the row: no float32 copy, no stack of P x m
            rows[m, offset : offset + grad.numel()].copy_(grad.reshape(-1))
            offset += grad.numel()
        m += 1
    if m == 0:
        return None
    g = rows[:m].T  # (P, m), a view
    # orthonormalised through the (m, m) Gram matrix's eigenvectors, never formed: Q = g w
    # spans the same directions as a QR of g would, and a step projects with g and w
    # (a Householder QR of (P, 40) took 4.6 s for a 1.6M-weight model)
    values, vectors_m = torch.linalg.eigh(g.T @ g)  # ascending
    keep = values > 1e-10 * float(values[-1])
    return g, vectors_m[:, keep] / values[keep].sqrt()  # (P, m), (m, m')


def _controls(reader: IndexReader, targets, n: int, seed: int, tokens) -> list[np.ndarray]:
    """``n`` random training chunks' tokens (not hits of ``targets``), from their own
    seeded draw: the text :func:`check_chunks`'s ``control`` measures general damage on."""
    if n <= 0:
        return []
    sampler, rng = ChunkSampler(reader), np.random.default_rng([seed, 7])
    hits = {c for t in targets for c in t.hits}
    chosen: list[np.ndarray] = []
    for _ in range(_TRIES * n):
        cid, text = sampler.draw(rng)
        if cid not in hits and text:
            chosen.append(tokens([text])[0])
            if len(chosen) == n:
                break
    return chosen


def _random_set(
    sampler: ChunkSampler, rng: np.random.Generator, lengths: Sequence[int],
    excluded: set[int], tokens,
) -> tuple[list[int], list[np.ndarray]]:  # fmt: skip
    """One random set: per hit length L, a random chunk (not a hit, not already drawn) of
    at least L tokens cut to L (the longest of :data:`_TRIES` candidates when none is) ->
    (their chunk ids, their tokens)."""
    ids: list[int] = []
    chosen: list[np.ndarray] = []
    taken = set(excluded)
    for length in lengths:
        best: tuple[int, np.ndarray] | None = None
        for _ in range(_TRIES):
            cid, text = sampler.draw(rng)
            if cid in taken:
                continue
            seq = tokens([text])[0]
            if best is None or len(seq) > len(best[1]):
                best = (cid, seq)
            if len(seq) >= length:
                break
        if best is not None:
            taken.add(best[0])
            ids.append(best[0])
            chosen.append(best[1][:length])
    return ids, chosen


def check_report(
    encoder: ConceptEncoder, reader: IndexReader, report: AttributionReport,
    settings: CheckSettings, lexical_context: int, seq=None,
) -> AttributionReport:  # fmt: skip
    """``report`` with its check: every output chunk's :class:`ChunkCheck` and the report's
    ``check`` settings (:func:`check_chunks`). The prompt is tokenized again as the
    attributor did, the output is the report's ``output_token_ids`` (the tokens attributed)
    or, in a report written without them, its text tokenized again; the BM25 query is the
    chunk's text with at most ``lexical_context`` tokens before it (the attributor's
    lexical query). Refused with one line when the report was made on another index or
    model, its ids are not its ``output_token_count`` (an edited report), or, without ids,
    its text no longer tokenizes to its chunks (a generated output that does not survive
    decoding). ``seq`` (a :class:`~tda.attribution.sequence.TokenSequence`): the tokens the
    report was made on, used as they are (``Attributor.attribute(check=True)``)."""
    from tda.attribution.sequence import build_sequence

    if report.index_manifest_id != reader.manifest_id:
        raise CheckError(
            f"the report was made on index manifest {report.index_manifest_id[:12]}, the "
            f"index in {reader.root} is {reader.manifest_id[:12]}: its hits may not exist "
            f"there; attribute again on this index"
        )
    if report.encoder_fingerprint != encoder.info.fingerprint:
        raise CheckError(
            f"the report was made with model {report.encoder_fingerprint[:19]}, not "
            f"{encoder.info.fingerprint[:19]} ({encoder.info.spec}): pass the report's --model"
        )
    recorded = report.output_token_ids
    if recorded and len(recorded) != report.output_token_count:
        raise CheckError(
            f"the report's output is {report.output_token_count} tokens but it records "
            f"{len(recorded)} token ids: the chunks cannot be placed (attribute it again)"
        )
    if seq is None:
        # the tokens attributed when the report has them: a generated output's text may
        # tokenize to other tokens than the model wrote
        output = recorded or report.output
        request = AttributionRequest(prompt=report.prompt, output=output, k=1)
        seq = build_sequence(encoder, encoder.tokenizer, request)
    P = seq.prompt_len
    if len(seq.ids) - P != report.output_token_count:
        raise CheckError(
            f"the report's output is {report.output_token_count} tokens, its text tokenizes "
            f"to {len(seq.ids) - P} now: the chunks cannot be placed (attribute it again: "
            f"a report of this version records its output's tokens)"
        )
    if seq.truncated != report.prompt_truncated:
        raise CheckError(
            f"the report's prompt was cut by {report.prompt_truncated} tokens to fit the "
            f"model, its text is cut by {seq.truncated} now: the chunks cannot be placed "
            f"(attribute it again)"
        )
    targets = []
    for chunk in report.chunks:
        s, e = P + chunk.token_start, P + chunk.token_end
        lexical = encoder.tokenizer.decode(seq.ids[max(0, s - lexical_context) : e].tolist())
        targets.append(CheckTarget(s, e, tuple(h.chunk_id for h in chunk.hits), lexical))
    checks, done = check_chunks(encoder, reader, seq.ids, targets, settings)
    chunks = tuple(replace(c, check=k) for c, k in zip(report.chunks, checks, strict=True))
    return replace(report, chunks=chunks, check=done)
