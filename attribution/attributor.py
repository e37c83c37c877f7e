"""Attribute a model output to training chunks, concepts, prompt tokens and sources.

::

    attributor = Attributor.from_root("build/demo")          # index + its own encoder
    report = attributor.attribute("The capital of", output=" France is Paris.")
    print(report.to_json())

:meth:`Attributor.attribute` takes one :class:`~tda.schemas.AttributionRequest` (or its
fields as keyword arguments) and runs these steps, one function each:

1. :func:`~tda.attribution.sequence.build_sequence`: prompt and output as token ids
   (tokenized, given, or ``generate`` tokens the model writes after the prompt: greedy at
   temperature 0, else sampled with ``seed``); a prompt + output beyond the model's
   context has its prompt cut on the left (recorded), a longer output is refused.
2. :func:`~tda.attribution.sequence.chunk_spans` / ``query_starts``: the output split into
   chunks of the index's ``chunk_size`` (or the request's) from its first token (on the
   forward pass's block grid for attention-block encoders, Steerling: 64, as indexed).
3. :meth:`~Attributor._forward`: ONE forward pass over prompt + output (from input
   embeddings, so gradients reach them): the output conditioned on its whole prompt, as
   the model wrote it. Logits, the exact concept split of every token's logit
   (:func:`~tda.attribution.encoders.logit_split`) and log-probabilities come from it.
4. :meth:`~Attributor._search_vectors`: each chunk's search vector, pooled with the same
   code as the index's (:func:`~tda.attribution.encoders.pool_chunks`) from at most the
   index's window of tokens ending at the chunk's end, so it never sees more context than
   an indexed chunk did (default index: a full output chunk is encoded alone, as a
   training chunk; a short one keeps the prompt tokens that fit). Chunks whose window is
   the forward pass's start reuse its activations; the others go through the embed
   stage's path (:func:`~tda.attribution.encoders.encode_whole`) in one no-grad batch.
5. :meth:`~Attributor._input_attribution`: prompt-token scores, gradient x input of each
   chunk's log-probability (a backward per chunk through the forward's graph) or
   integrated gradients (:mod:`~tda.attribution.input_attribution`).
6. :meth:`~Attributor._search`: all chunks' vectors search the index at once.
7. :meth:`~Attributor._output_chunk`, per chunk: its hits, re-ranked if asked
   (:mod:`~tda.attribution.rerank`), with provenance, text and the known concepts they
   share with it (:meth:`~Attributor._hits`); the concepts behind its token logits
   (:meth:`~Attributor._concepts`); logit totals, prompt-token scores, source shares.
8. :meth:`~Attributor._report`: settings, warnings and timings around the chunks.

Everything lands in an :class:`~tda.schemas.AttributionReport`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tda import __version__
from tda.attribution.confidence import confidence
from tda.attribution.encoders import (
    ConceptActivations,
    ConceptEncoder,
    DocumentTokens,
    LogitSplit,
    PooledChunks,
    encode_whole,
    load_encoder,
    logit_split,
)
from tda.attribution.encoders import pool_chunks as _pool_chunks
from tda.attribution.encoders.builtin.calibrate import firing_cuts
from tda.attribution.evidence import evidence_scores
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.attribution.index.retrieval import ChunkQuery, Retrieved, Retriever
from tda.attribution.input_attribution import (
    chunk_log_prob,
    gradient_x_input,
    integrated_gradients,
    token_log_probs,
)
from tda.attribution.rerank import (
    concept_overlap,
    longest_shared_run,
    rerank_order,
    words,
)
from tda.attribution.results import (
    concept_contributions,
    logit_totals,
    source_shares,
    training_hits,
)
from tda.attribution.sequence import (
    TokenSequence,
    build_sequence,
    chunk_spans,
    query_starts,
    query_windows,
)
from tda.schemas import (
    AttributionReport,
    AttributionRequest,
    AttributionSettings,
    CheckSettings,
    OutputChunk,
    Timings,
    TokenScore,
    TrainingHit,
)

if TYPE_CHECKING:
    import torch

__all__ = ["LEXICAL_CONTEXT", "AttributionRequest", "Attributor"]

# Tokens before an output chunk that its lexical query keeps: enough for the phrase that
# leads into a short output ("... was founded in" before " Ashgate."), not so many that a
# long prompt's words outweigh the chunk's own (docs/quality.md measures it).
LEXICAL_CONTEXT = 16


@dataclass
class _Forward:
    """Step 3: the forward pass over the T tokens of a :class:`TokenSequence`."""

    ids: torch.Tensor  # (1, T) int64 on the encoder's device
    embeds: torch.Tensor  # (1, T, H) input embeddings (requiring grad for "grad")
    acts: ConceptActivations  # detached, per token (1, T, ...), logits (1, T, V)
    split: LogitSplit  # per position t, target token t + 1's logit split, (1, T[, k])
    log_probs: torch.Tensor  # (1, T) log p(token t | tokens < t); 0 at t = 0
    chunk_log_probs: list[torch.Tensor]  # per output chunk, a scalar on the graph ("grad")


class _Clock:
    """Milliseconds per named step of one attribution, and the total since it started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.ms[step] = self.ms.get(step, 0.0) + (time.perf_counter() - t) * 1000

    def timings(self) -> Timings:
        total = (time.perf_counter() - self.started) * 1000
        steps = ("generate", "forward", "backward", "search", "metadata")
        return Timings(**{s: round(self.ms.get(s, 0.0), 3) for s in steps}, total=round(total, 3))


class Attributor:
    """An opened index and the encoder that built it; :meth:`attribute` per output."""

    def __init__(self, reader: IndexReader, encoder: ConceptEncoder, forced: bool = False):
        self.reader = reader
        self.encoder = encoder
        self.forced = forced
        self.tokenizer = encoder.load_tokenizer()
        self.manifest = reader.manifest
        self.retriever = Retriever(reader)
        # from which weight each known concept counts as firing (shared concepts)
        self._cuts = firing_cuts(encoder.concept_names, encoder.concept_calibration)
        # Only input gradients are ever taken: parameters need no autograd bookkeeping
        # (measured: the grad path's backward ~40% cheaper).
        model = getattr(encoder, "model", None)  # the torch module behind the encoder
        for param in model.parameters() if model is not None else ():
            param.requires_grad_(False)
        self._warm_up()

    def _warm_up(self) -> None:
        """Resolve one hit now, so that one-off costs (pyarrow's first Parquet read imports
        pandas: ~0.6 s; first page faults of the shards) are paid at open, not by the
        first attribution's timings."""
        probe = np.zeros((1, self.manifest.dim), dtype=np.float32)
        probe[0, 0] = 1.0
        _, ids = self.reader.search(probe, 1)
        if ids.size and ids[0, 0] >= 0:
            self.reader.lookup.get(int(ids[0, 0]))
            self.reader.concepts(int(ids[0, 0]))

    @classmethod
    def from_root(
        cls,
        root: str,
        model: str | None = None,
        device: str = "auto",
        force: bool = False,
        verify: bool = True,
    ) -> Attributor:
        """Open ROOT's index and load its encoder (``model``: another SPEC, refused unless
        its weights are the index's, or ``force``)."""
        reader = IndexReader.open(root, verify=verify)
        spec = model or reader.manifest.encoder.spec
        encoder = load_encoder(spec, device)
        forced = encoder.info.fingerprint != reader.manifest.encoder.fingerprint
        if forced and not force:
            raise IndexReadError(
                f"the index in {root} was built with {reader.manifest.encoder.spec} "
                f"({reader.manifest.encoder.fingerprint[:19]}), not {spec} "
                f"({encoder.info.fingerprint[:19]}): its vectors are not comparable; pass "
                f"--force to attribute anyway (recorded in the report)"
            )
        dim = encoder.feature_dim(reader.manifest.pooling)
        if dim != reader.manifest.dim:
            raise IndexReadError(
                f"{spec} gives {dim}-d vectors with pooling {reader.manifest.pooling.name}; "
                f"the index in {root} holds {reader.manifest.dim}-d vectors"
            )
        return cls(reader, encoder, forced=forced)

    # ----------------------------------------------------------------------------------

    def attribute(
        self,
        prompt: AttributionRequest | str | Sequence[int],
        output: str | Sequence[int] | None = None,
        **options,
    ) -> AttributionReport:
        """Attribute one output (the steps: see the module docstring). Either
        ``attribute(request)`` with an :class:`~tda.schemas.AttributionRequest`, or its
        fields as arguments, ``attribute(prompt, output, k=5, ...)`` /
        ``attribute(prompt, generate=20)``, which builds (and so validates) the request:
        a bad value raises :class:`~tda.schemas.ConfigError` with one line. ``check``
        (True or :class:`~tda.schemas.CheckSettings`): also run :meth:`check`."""
        check = options.pop("check", None)
        if isinstance(prompt, AttributionRequest):
            if output is not None or options:
                raise TypeError("give an AttributionRequest alone, or its fields as arguments")
            request = prompt
        else:
            request = AttributionRequest(prompt, output, **options)
        report, seq = self._attribute(request)
        # checked on the tokens attributed: a generated output may not survive re-tokenizing
        return self.check(report, None if check is True else check, seq) if check else report

    def check(
        self, report: AttributionReport, settings: CheckSettings | None = None,
        seq: TokenSequence | None = None,
    ) -> AttributionReport:  # fmt: skip
        """``report`` (made on this index and model) with its counterfactual check: per
        output chunk, the drop in its log-probability when a copy of the model unlearns its
        hits, against BM25's and random chunks (:mod:`~tda.attribution.check`). ``seq``:
        the tokens the report was made on (else the prompt's text is tokenized again and
        the output is the report's ``output_token_ids``; its text in a report without
        them)."""
        from tda.attribution.check import check_report

        return check_report(self.encoder, self.reader, report, settings or CheckSettings(),
                            LEXICAL_CONTEXT, seq)  # fmt: skip

    def _attribute(self, request: AttributionRequest) -> tuple[AttributionReport, TokenSequence]:
        import torch

        clock = _Clock()
        chunk_size = request.chunk_size or self.manifest.chunking.chunk_size
        align = self.encoder.info.block_align
        seq = build_sequence(self.encoder, self.tokenizer, request, clock)  # step 1
        spans = chunk_spans(seq.prompt_len, len(seq.ids), chunk_size, align)  # step 2
        starts = query_starts(spans, chunk_size, request.query_span, align)
        with clock("forward"):
            want_grad = request.input_attribution == "grad" and seq.prompt_len > 0
            forward = self._forward(seq, spans, want_grad)
            with torch.no_grad():
                pooled = self._search_vectors(seq, forward.acts, spans, starts)
        with clock("backward"):
            prompt_scores, completeness = self._input_attribution(request, seq, forward, spans)
        channels = self.retriever.channels(request.channels)
        with clock("search"):
            retrieved = self._search(request, seq, spans, chunk_size, pooled, channels)
        with clock("metadata"):
            chunks = tuple(
                self._output_chunk(
                    request, seq, forward, c, spans[c], starts[c], pooled, retrieved[c],
                    prompt_scores[c], completeness[c], channels,
                )
                for c in range(len(spans))
            )  # fmt: skip
        return self._report(request, seq, spans, chunk_size, chunks, clock, channels), seq

    # --- step 3 -----------------------------------------------------------------------

    def _forward(self, seq: TokenSequence, spans, want_grad: bool) -> _Forward:
        """ONE forward pass over the T tokens from their input embeddings; with
        ``want_grad`` the embeddings require grad and each chunk's log-probability keeps
        its graph for step 5. The activations are detached afterwards; the concept split
        of every target logit and the token log-probabilities are read from them."""
        import torch

        enc = self.encoder
        ids = torch.from_numpy(seq.ids).to(enc.device).unsqueeze(0)  # (1, T)
        with torch.enable_grad() if want_grad else torch.inference_mode():
            embeds = enc.token_embeddings(ids).detach()  # (1, T, H)
            if want_grad:
                embeds.requires_grad_(True)
            acts = enc.forward(None, embeds=embeds, with_logits=True)
            chunk_lp = (
                [chunk_log_prob(acts.logits, ids, s, e) for s, e in spans] if want_grad else []
            )
        frozen = _detached(acts)
        with torch.no_grad():
            targets = torch.roll(ids, -1, dims=1)  # position t predicts token t + 1
            split = logit_split(enc, frozen, targets)
            log_probs = token_log_probs(frozen.logits, ids)  # (1, T)
        return _Forward(ids, embeds, frozen, split, log_probs, chunk_lp)

    # --- step 4 -----------------------------------------------------------------------

    def _search_vectors(
        self, seq: TokenSequence, acts: ConceptActivations, spans, pool_starts
    ) -> PooledChunks:
        """Per output chunk, its pooled search vector (n, D) and top known concepts,
        pooled over [pool start, end) within its query window
        (:func:`~tda.attribution.sequence.query_windows`): from the forward pass's
        activations (1, T, ...) where the window starts at 0, else from one batched pass
        over the windows (:func:`~tda.attribution.encoders.encode_whole`)."""
        window_starts = query_windows(
            spans, pool_starts, self.manifest.context.window, self.encoder.info.block_align
        )
        starts = np.array(pool_starts, dtype=np.int64)
        ends = np.array([e for _, e in spans], dtype=np.int64)
        served = [c for c in range(len(spans)) if window_starts[c] == 0]
        moved = [c for c in range(len(spans)) if window_starts[c] > 0]
        parts = []  # (chunk positions, their PooledChunks)
        if served:
            parts.append((served, _pool_chunks(
                acts, np.zeros(len(served), dtype=np.int64), starts[served], ends[served],
                self.manifest.pooling, self.encoder.info.n_known,
            )))  # fmt: skip
        if moved:
            docs = [
                DocumentTokens(
                    ids=seq.ids[window_starts[c] : ends[c]],
                    spans=np.array([[starts[c] - window_starts[c], ends[c] - window_starts[c]]]),
                )
                for c in moved
            ]
            m = self.manifest.context
            parts.append(
                (moved, encode_whole(self.encoder, docs, self.manifest.pooling, m.window, m.align))
            )
        if len(parts) == 1:
            return parts[0][1]
        vectors = np.zeros((len(spans), self.manifest.dim), dtype=np.float32)
        concept_ids: list = [None] * len(spans)
        concept_weights: list = [None] * len(spans)
        for positions, pooled in parts:
            vectors[positions] = pooled.vectors
            for j, c in enumerate(positions):
                concept_ids[c] = pooled.concept_ids[j]
                concept_weights[c] = pooled.concept_weights[j]
        return PooledChunks(vectors, concept_ids, concept_weights)

    # --- step 5 -----------------------------------------------------------------------

    def _input_attribution(
        self, request: AttributionRequest, seq: TokenSequence, forward: _Forward, spans
    ) -> tuple[list[np.ndarray | None], list[dict[str, float] | None]]:
        """Per output chunk, its prompt-token scores (P,) (None without a prompt or with
        ``none``) and, for integrated gradients, its completeness check."""
        n = len(spans)
        if seq.prompt_len == 0 or request.input_attribution == "none":
            return [None] * n, [None] * n
        if request.input_attribution == "grad":
            scores = gradient_x_input(forward.chunk_log_probs, forward.embeds, seq.prompt_len)
            return list(scores), [None] * n
        scores, checks = integrated_gradients(
            self.encoder, forward.ids, seq.prompt_len, spans, request.ig_steps,
            request.ig_baseline,
        )  # fmt: skip
        return list(scores), list(checks)

    # --- step 6 -----------------------------------------------------------------------

    def _search(
        self, request: AttributionRequest, seq: TokenSequence, spans, chunk_size: int,
        pooled: PooledChunks, channels: tuple[str, ...],
    ) -> list[Retrieved]:  # fmt: skip
        """Every output chunk's query on every channel (:class:`ChunkQuery`: its search
        vector (D,); its tokens after at most ``chunk_size`` tokens before it, where exact
        spans may start; the text of its tokens after at most :data:`LEXICAL_CONTEXT`
        before it), ``max(k, candidates)`` per channel, fused."""
        queries = []
        for c, (s, e) in enumerate(spans):
            q0, l0 = max(0, s - chunk_size), max(0, s - LEXICAL_CONTEXT)
            queries.append(
                ChunkQuery(
                    vector=pooled.vectors[c],
                    tokens=seq.ids[q0:e],
                    region=(s - q0, e - q0),
                    text=self.tokenizer.decode(seq.ids[l0:e].tolist()),
                )
            )
        wanted = max(request.k, request.candidates)
        return self.retriever.retrieve(queries, channels, wanted, request.nprobe)

    # --- step 7 -----------------------------------------------------------------------

    def _output_chunk(
        self, request: AttributionRequest, seq: TokenSequence, forward: _Forward, c: int,
        span: tuple[int, int], query_start: int, pooled: PooledChunks, retrieved: Retrieved,
        prompt_scores: np.ndarray | None, completeness, channels: tuple[str, ...],
    ) -> OutputChunk:  # fmt: skip
        """Output chunk ``c`` at ``span`` [s, e), from its fused candidates, its
        prompt-token scores (P,) and completeness check (or None)."""
        s, e = span
        out_concepts = dict(
            zip(pooled.concept_ids[c].tolist(), pooled.concept_weights[c].tolist(), strict=True)
        )
        query_text = (
            self.tokenizer.decode(seq.ids[query_start:e].tolist())
            if request.rerank == "span"
            else ""
        )
        fused = retrieved.fused
        hit_ids = np.array([f.chunk_id for f in fused], dtype=np.int64)
        keep, rerank_scores = self._rerank(
            request, hit_ids, out_concepts, query_text,
            lambda ids: self._evidence(forward, seq, s, e, ids),
        )  # fmt: skip
        P = seq.prompt_len
        char_start, char_end = seq.output_chars[s - P], seq.output_chars[e - P]
        text = seq.output_text[char_start:char_end]
        hits = self._hits(
            [fused[i] for i in keep], pooled.vectors[c], out_concepts, rerank_scores,
            retrieved, text, multi=len(channels) > 1,
        )  # fmt: skip
        return OutputChunk(
            index=c,
            token_start=s - P,
            token_end=e - P,
            char_start=char_start,
            char_end=char_end,
            text=text,
            query_token_start=query_start - P,
            totals=logit_totals(forward.split, forward.log_probs, s, e),
            concepts=self._concepts(forward, s, e, request.top_concepts),
            hits=hits,
            sources=source_shares(hits),
            prompt_tokens=self._token_scores(seq, prompt_scores),
            completeness=completeness,
            confidence=confidence(hits, retrieved, e - s, channels, len(words(text))),
        )

    def _rerank(
        self, request: AttributionRequest, ids: np.ndarray, out_concepts, query_text: str,
        evidence,
    ):  # fmt: skip
        """Fused candidate ids (n,) -> (positions of the k kept, in final order; their
        re-rank scores or None). A re-rank orders the first ``candidates`` of the fused
        list by its signal (ties keep the fused order): ``concepts`` (concept overlap),
        ``span`` (the longest shared word run with ``query_text``) or ``evidence`` (the
        model's own evidence, ``evidence(chunk ids) -> scores``)."""
        k, rerank = request.k, request.rerank
        valid = [i for i, cid in enumerate(ids.tolist()) if cid >= 0]
        if rerank == "none":
            return np.array(valid[:k], dtype=np.int64), None
        valid = valid[: request.candidates]
        if rerank == "concepts":
            signal = [
                concept_overlap(out_concepts, *self.reader.concepts(int(ids[i])), self._cuts)
                for i in valid
            ]
        elif rerank == "span":
            query = words(query_text)
            texts = [self.reader.lookup.get(int(ids[i])).text or "" for i in valid]
            signal = [float(longest_shared_run(query, words(text))) for text in texts]
        else:
            signal = [float(x) for x in evidence([int(ids[i]) for i in valid])]
        order = rerank_order(signal)[:k]
        return np.array([valid[i] for i in order], dtype=np.int64), [signal[i] for i in order]

    def _evidence(
        self, forward: _Forward, seq: TokenSequence, s: int, e: int, chunk_ids: Sequence[int]
    ) -> np.ndarray:
        """``--rerank evidence``: the chunk's predicting states (positions s-1..e-2 of the
        forward pass, which produced tokens s..e-1) against each candidate's own states
        (:func:`~tda.attribution.evidence.evidence_scores`); (len(chunk_ids),) scores."""
        lo = max(s, 1)  # the first token of an empty prompt had no predicting state
        states = forward.acts.hidden[0, lo - 1 : e - 1].float().cpu().numpy()
        texts = [self.reader.lookup.get(int(c)).text or "" for c in chunk_ids]
        candidates = [enc.ids for enc in self.tokenizer.encode_batch(texts)]
        return evidence_scores(self.encoder, states, seq.ids[lo:e], candidates)

    def _hits(
        self, kept: Sequence, vector: np.ndarray, out_concepts: dict[int, float],
        rerank_scores, retrieved: Retrieved, text: str, multi: bool,
    ) -> tuple[TrainingHit, ...]:  # fmt: skip
        """The kept fused candidates as hits (:func:`~tda.attribution.results.training_hits`)."""
        return training_hits(
            self.reader, self.retriever, self.encoder.concept_names, kept, vector,
            out_concepts, rerank_scores, retrieved, text, multi, self._cuts,
        )  # fmt: skip

    def _concepts(self, forward: _Forward, s: int, e: int, top: int):
        """The chunk's largest ``top`` concept contributions to its token logits
        (:func:`~tda.attribution.results.concept_contributions`)."""
        enc = self.encoder
        return concept_contributions(
            enc.info, enc.concept_names, forward.split, forward.acts, s, e, top,
            enc.unknown_labels,
        )  # fmt: skip

    # --- step 8 -----------------------------------------------------------------------

    def _report(
        self, request: AttributionRequest, seq: TokenSequence, spans, chunk_size: int,
        chunks: tuple[OutputChunk, ...], clock: _Clock, channels: tuple[str, ...],
    ) -> AttributionReport:  # fmt: skip
        """The report: the index and encoder named, the settings used, the chunks,
        warnings (prompt cut, empty prompt, forced encoder) and the timings."""
        enc = self.encoder
        warnings = []
        if seq.truncated:
            warnings.append(
                f"the prompt was cut to its last {seq.prompt_len} tokens ({seq.truncated} "
                f"dropped) to fit the model's context of {enc.info.max_window}"
            )
        if seq.prompt_len == 0 and spans and spans[0][0] == 0:
            warnings.append(
                "with an empty prompt the first output token has no prediction: it is "
                "left out of the first chunk's logits and log-probability"
            )
        if not self.manifest.channels:
            warnings.append(
                "this index has only the dense channel (built before the span and lexical "
                "channels): rebuild it with `tda index build ROOT --overwrite` so that "
                "verbatim sources are found by their exact spans"
            )
        if self.forced:
            warnings.append(
                f"--force: encoder {enc.info.spec} ({enc.info.fingerprint[:19]}) is not the "
                f"index's ({self.manifest.encoder.fingerprint[:19]}); scores compare "
                f"vectors from different models"
            )
        settings = AttributionSettings(
            k=request.k,
            nprobe=request.nprobe or self.manifest.nprobe,
            chunk_size=chunk_size,
            input_attribution=request.input_attribution,
            ig_steps=request.ig_steps,
            ig_baseline=request.ig_baseline,
            top_concepts=request.top_concepts,
            model=enc.info.spec,
            forced=self.forced,
            pooling=self.manifest.pooling.name,
            window=self.manifest.context.window,
            generate=seq.generated,
            query_span=request.query_span,
            rerank=request.rerank,
            candidates=(
                request.candidates if request.rerank != "none" or len(channels) > 1 else None
            ),
            channels=channels,
            fusion=self.retriever.fusion if len(channels) > 1 else None,
        )
        return AttributionReport(
            tda_version=__version__,
            index_root=self.reader.root,
            index_manifest_id=self.reader.manifest_id,
            index_encoder_fingerprint=self.manifest.encoder.fingerprint,
            encoder_fingerprint=enc.info.fingerprint,
            settings=settings,
            prompt=seq.prompt_text,
            output=seq.output_text,
            prompt_token_count=seq.prompt_len,
            output_token_count=len(seq.ids) - seq.prompt_len,
            prompt_truncated=seq.truncated,
            chunks=chunks,
            timings=clock.timings(),
            warnings=tuple(warnings),
            # what tda check reruns: the text of a generated output may tokenize otherwise
            output_token_ids=tuple(int(i) for i in seq.ids[seq.prompt_len :]),
        )

    # --- helpers ----------------------------------------------------------------------

    def _token_scores(
        self, seq: TokenSequence, scores: np.ndarray | None
    ) -> tuple[TokenScore, ...]:
        """(P,) prompt-token scores -> one TokenScore per prompt token (none without)."""
        if scores is None:
            return ()
        ids = seq.ids[: seq.prompt_len]
        return tuple(
            TokenScore(
                position=p,
                token=self.tokenizer.decode([int(ids[p])]),
                char_start=seq.prompt_chars[p][0],
                char_end=seq.prompt_chars[p][1],
                score=float(scores[p]),
            )
            for p in range(seq.prompt_len)
        )


def _detached(acts: ConceptActivations) -> ConceptActivations:
    return ConceptActivations(
        **{
            name: (getattr(acts, name).detach() if getattr(acts, name) is not None else None)
            for name in (
                "hidden", "known_features", "unknown_features", "known_ids", "known_weights",
                "unknown_ids", "unknown_weights", "logits", "pool_mean", "pool_scale",
                "known_all",
            )
        }
    )  # fmt: skip
