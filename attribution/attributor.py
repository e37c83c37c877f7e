"""Attribute a model output to training chunks, concepts, prompt tokens and sources.

::

    attributor = Attributor.from_root("build/demo")          # index + its own encoder
    report = attributor.attribute("The capital of", output=" France is Paris.")
    print(report.to_json())

Algorithm (one output):

1. Tokenize prompt and output with the encoder's tokenizer (or take token ids, or
   generate ``generate`` tokens after the prompt: greedy at temperature 0, else sampled
   with ``seed``). If prompt + output exceed the model's context limit, the prompt is cut
   on the left (recorded); an output longer than that limit is refused.
2. ONE forward pass over prompt + output (input embeddings, so gradients reach them): the
   output conditioned on its whole prompt, as the model wrote it. Logits, concept splits
   and prompt-token scores come from this pass.
3. The output is split into chunks of the index's ``chunk_size`` (``chunk_size`` to
   override), starting at the output's first token; for encoders with attention blocks
   (Steerling: 64) the boundaries follow the forward pass's block grid, as at index time.
4. Each chunk's search vector is pooled (same encoder, same pooling code:
   :func:`~tda.attribution.encoders.pool_chunks`) from at most the index's window of
   tokens ending at the chunk's end, so it never sees more context than an indexed chunk's
   window holds: with the default index (each chunk encoded alone, ``--window`` = chunk
   size) a full output chunk is encoded alone, exactly as a training chunk, and a short
   output keeps the prompt tokens that fit before it. Chunks whose window is the forward
   pass's start reuse its activations; the others run through the embed stage's code path
   (:func:`~tda.attribution.encoders.encode_whole`) in one batched no-grad pass.
5. Per chunk: its pooled vector searches the index (all chunks in one search); hits get
   provenance, text and the known concepts they share with the chunk (from the
   embeddings table, by id); the chunk's token logits split exactly into concept
   contributions + residual (:func:`~tda.attribution.encoders.logit_split`); prompt tokens
   are scored by gradient x input of the chunk's log-probability (one backward pass per
   chunk, reusing the forward's graph) or integrated gradients (``ig_steps`` points
   between a baseline and the prompt, batched).

Everything lands in an :class:`~tda.schemas.AttributionReport`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tda import __version__
from tda.attribution.encoders import (
    ConceptActivations,
    ConceptEncoder,
    DocumentTokens,
    PooledChunks,
    encode_whole,
    load_encoder,
    logit_split,
)
from tda.attribution.encoders import pool_chunks as _pool_chunks
from tda.attribution.index.reader import IndexReader, IndexReadError
from tda.attribution.rerank import concept_overlap, longest_shared_run, rerank_order, words
from tda.schemas import (
    DEFAULT_CANDIDATES,
    DEFAULT_QUERY_SPAN,
    DEFAULT_RERANK,
    QUERY_SPANS,
    RERANKS,
    AttributionReport,
    AttributionSettings,
    ConceptContribution,
    ConfigError,
    LogitTotals,
    OutputChunk,
    SharedConcept,
    Timings,
    TokenScore,
    TrainingHit,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_QUERY_SPAN",
    "DEFAULT_RERANK",
    "INPUT_ATTRIBUTIONS",
    "MAX_OUTPUT_TOKENS",
    "QUERY_SPANS",
    "RERANKS",
    "Attributor",
    "generate_tokens",
]

INPUT_ATTRIBUTIONS = ("grad", "ig", "none")
IG_BASELINES = ("mask", "zero")
# IG evaluates this many interpolation points per forward pass (memory: rows x T x V logits).
IG_BATCH = 8
# Refuse outputs longer than this before tokenizing huge strings (the window refuses the rest).
MAX_OUTPUT_CHARS = 200_000
MAX_OUTPUT_TOKENS = 8192


@dataclass
class _Sequence:
    """Prompt + output tokens as the forward pass sees them."""

    ids: np.ndarray  # (T,) int64: prompt[truncated:] + output
    prompt_len: int  # P: tokens of prompt in ``ids``
    truncated: int  # prompt tokens dropped on the left
    prompt_text: str
    output_text: str
    prompt_chars: list[tuple[int, int]]  # (P,) character span of each prompt token
    output_chars: list[int]  # (n_out + 1,) character start of each output token, then end


def generate_tokens(
    encoder: ConceptEncoder,
    prompt_ids: Sequence[int],
    n: int,
    temperature: float = 0.0,
    seed: int = 0,
    window: int | None = None,
) -> list[int]:
    """Continue ``prompt_ids`` by up to ``n`` tokens with the encoder's own generator
    (:meth:`ConceptEncoder.generate`: left to right for the builtin model, Steerling's
    block diffusion for Steerling): greedy at ``temperature`` 0, else sampled with a
    generator seeded by ``seed`` (same inputs, same tokens)."""
    if n < 1:
        raise ConfigError(f"--generate must be at least 1, got {n}")
    if n > MAX_OUTPUT_TOKENS:
        raise ConfigError(f"--generate is limited to {MAX_OUTPUT_TOKENS} tokens, got {n}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    if not prompt_ids:
        raise ConfigError("--generate needs a non-empty prompt")
    window = window or encoder.info.max_window
    return encoder.generate(prompt_ids, n, temperature, seed, window)


class Attributor:
    """An opened index and the encoder that built it; :meth:`attribute` per output."""

    def __init__(self, reader: IndexReader, encoder: ConceptEncoder, forced: bool = False):
        self.reader = reader
        self.encoder = encoder
        self.forced = forced
        self.tokenizer = encoder.load_tokenizer()
        self.manifest = reader.manifest
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
        prompt: str | Sequence[int],
        output: str | Sequence[int] | None = None,
        *,
        generate: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        k: int = 10,
        nprobe: int | None = None,
        input_attribution: str = "grad",
        ig_steps: int = 32,
        ig_baseline: str = "mask",
        top_concepts: int = 10,
        chunk_size: int | None = None,
        query_span: str = DEFAULT_QUERY_SPAN,
        rerank: str = DEFAULT_RERANK,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> AttributionReport:
        """Attribute ``output`` (text or token ids) given ``prompt``, or the ``generate``
        tokens the model writes after it. Returns the report (see the module docstring).

        ``query_span``: what each output chunk's search vector pools (:data:`QUERY_SPANS`).
        ``rerank``: ``none``, or order the ``candidates`` nearest chunks by ``concepts``
        (sparse concept overlap) or ``span`` (longest shared word run with the query
        span's text) before keeping ``k`` (:mod:`~tda.attribution.rerank`)."""
        import torch

        started = time.perf_counter()
        self._check_args(
            output, generate, k, input_attribution, ig_steps, ig_baseline, top_concepts
        )
        if query_span not in QUERY_SPANS:
            raise ConfigError(
                f"--query-span must be one of {', '.join(QUERY_SPANS)}, got {query_span!r}"
            )
        if rerank not in RERANKS:
            raise ConfigError(f"--rerank must be one of {', '.join(RERANKS)}, got {rerank!r}")
        if rerank != "none" and candidates < k:
            raise ConfigError(f"--candidates ({candidates}) must be at least -k ({k}) to re-rank")
        chunk_size = chunk_size or self.manifest.chunking.chunk_size
        if chunk_size < 1:
            raise ConfigError(f"--chunk-size must be at least 1, got {chunk_size}")
        window = self.encoder.info.max_window  # the forward pass: the model's context limit
        prompt_ids = self._ids(prompt, "prompt")
        generated_ms = 0.0
        gen_settings = None
        if generate is not None:
            t = time.perf_counter()
            output_ids = generate_tokens(
                self.encoder, prompt_ids, generate, temperature, seed, window
            )
            generated_ms = (time.perf_counter() - t) * 1000
            gen_settings = {"tokens": generate, "temperature": temperature, "seed": seed}
            output = output_ids
        else:
            output_ids = self._ids(output, "output")
        if not output_ids:
            raise ConfigError("the output has no tokens")
        seq = self._sequence(prompt, prompt_ids, output, output_ids, window)
        spans = self._chunk_spans(seq, chunk_size)
        query_starts = self._query_starts(spans, chunk_size, query_span)

        # --- one forward pass (input embeddings, so gradients can reach the prompt)
        t = time.perf_counter()
        enc = self.encoder
        ids_t = torch.from_numpy(seq.ids).to(enc.device).unsqueeze(0)  # (1, T)
        want_grad = input_attribution == "grad" and seq.prompt_len > 0
        with torch.enable_grad() if want_grad else torch.inference_mode():
            embeds = enc.token_embeddings(ids_t).detach()
            if want_grad:
                embeds.requires_grad_(True)
            acts = enc.forward(None, embeds=embeds, with_logits=True)
            chunk_lp = (
                [_chunk_log_prob(acts.logits, ids_t, s, e) for s, e in spans] if want_grad else []
            )
        frozen = _detached(acts)
        with torch.no_grad():
            pooled = self._search_vectors(seq, frozen, spans, query_starts)
            targets = torch.roll(ids_t, -1, dims=1)  # position t predicts token t + 1
            split = logit_split(enc, frozen, targets)
            log_probs = _token_log_probs(frozen.logits, ids_t)  # (1, T)
        forward_ms = (time.perf_counter() - t) * 1000

        # --- prompt-token attribution
        t = time.perf_counter()
        prompt_scores: list[np.ndarray | None] = [None] * len(spans)
        completeness: list[dict[str, float] | None] = [None] * len(spans)
        if want_grad:
            for c, lp in enumerate(chunk_lp):
                (grad,) = torch.autograd.grad(lp, embeds, retain_graph=c < len(spans) - 1)
                scores = (grad[0, : seq.prompt_len] * embeds[0, : seq.prompt_len]).sum(-1)
                prompt_scores[c] = scores.detach().float().cpu().numpy()
        elif input_attribution == "ig" and seq.prompt_len > 0:
            prompt_scores, completeness = self._integrated_gradients(
                ids_t, seq.prompt_len, spans, ig_steps, ig_baseline
            )
        backward_ms = (time.perf_counter() - t) * 1000

        # --- search (all chunks at once), then provenance + shared concepts
        t = time.perf_counter()
        wanted = max(k, candidates) if rerank != "none" else k
        scores, hit_ids = self.reader.search(pooled.vectors, wanted, nprobe)
        search_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        chunks = []
        for c, (s, e) in enumerate(spans):
            out_concepts = dict(
                zip(
                    pooled.concept_ids[c].tolist(),
                    pooled.concept_weights[c].tolist(),
                    strict=True,
                )
            )
            query_text = (
                self.tokenizer.decode(seq.ids[query_starts[c] : e].tolist())
                if rerank == "span"
                else ""
            )
            keep, rerank_scores = self._rerank(rerank, hit_ids[c], out_concepts, query_text, k)
            hits = self._hits(scores[c][keep], hit_ids[c][keep], out_concepts, rerank_scores)
            chunks.append(
                OutputChunk(
                    index=c,
                    token_start=s - seq.prompt_len,
                    token_end=e - seq.prompt_len,
                    char_start=seq.output_chars[s - seq.prompt_len],
                    char_end=seq.output_chars[e - seq.prompt_len],
                    text=seq.output_text[
                        seq.output_chars[s - seq.prompt_len] : seq.output_chars[e - seq.prompt_len]
                    ],
                    query_token_start=query_starts[c] - seq.prompt_len,
                    totals=_totals(split, log_probs, s, e),
                    concepts=self._concepts(split, frozen, s, e, top_concepts),
                    hits=hits,
                    sources=_sources(hits),
                    prompt_tokens=self._token_scores(seq, prompt_scores[c]),
                    completeness=completeness[c],
                )
            )
        metadata_ms = (time.perf_counter() - t) * 1000

        warnings = []
        if seq.truncated:
            warnings.append(
                f"the prompt was cut to its last {seq.prompt_len} tokens ({seq.truncated} "
                f"dropped) to fit the model's context of {window}"
            )
        if seq.prompt_len == 0 and spans and spans[0][0] == 0:
            warnings.append(
                "with an empty prompt the first output token has no prediction: it is "
                "left out of the first chunk's logits and log-probability"
            )
        if self.forced:
            warnings.append(
                f"--force: encoder {enc.info.spec} ({enc.info.fingerprint[:19]}) is not the "
                f"index's ({self.manifest.encoder.fingerprint[:19]}); scores compare "
                f"vectors from different models"
            )
        settings = AttributionSettings(
            k=k,
            nprobe=nprobe or self.manifest.nprobe,
            chunk_size=chunk_size,
            input_attribution=input_attribution,
            ig_steps=ig_steps,
            ig_baseline=ig_baseline,
            top_concepts=top_concepts,
            model=enc.info.spec,
            forced=self.forced,
            pooling=self.manifest.pooling.name,
            window=self.manifest.context.window,
            generate=gen_settings,
            query_span=query_span,
            rerank=rerank,
            candidates=candidates if rerank != "none" else None,
        )
        total_ms = (time.perf_counter() - started) * 1000
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
            chunks=tuple(chunks),
            timings=Timings(
                generate=round(generated_ms, 3),
                forward=round(forward_ms, 3),
                backward=round(backward_ms, 3),
                search=round(search_ms, 3),
                metadata=round(metadata_ms, 3),
                total=round(total_ms, 3),
            ),
            warnings=tuple(warnings),
        )

    # ----------------------------------------------------------------------------------

    def _check_args(self, output, generate, k, input_attribution, ig_steps, ig_baseline, top):
        if (output is None) == (generate is None):
            raise ConfigError("give an output (--output) or --generate N, not both or neither")
        if k < 1:
            raise ConfigError(f"-k must be at least 1, got {k}")
        if input_attribution not in INPUT_ATTRIBUTIONS:
            raise ConfigError(
                f"--input-attribution must be one of {', '.join(INPUT_ATTRIBUTIONS)}, "
                f"got {input_attribution!r}"
            )
        if ig_steps < 1:
            raise ConfigError(f"--ig-steps must be at least 1, got {ig_steps}")
        if ig_baseline not in IG_BASELINES:
            raise ConfigError(
                f"--ig-baseline must be one of {', '.join(IG_BASELINES)}, got {ig_baseline!r}"
            )
        if top < 1:
            raise ConfigError(f"--top-concepts must be at least 1, got {top}")
        if isinstance(output, str) and len(output) > MAX_OUTPUT_CHARS:
            raise ConfigError(
                f"the output is {len(output)} characters; the limit is {MAX_OUTPUT_CHARS}"
            )

    def _ids(self, value: str | Sequence[int], what: str) -> list[int]:
        if isinstance(value, str):
            (encoded,) = self.tokenizer.encode_batch([value])
            return encoded.ids.tolist()
        ids = [int(i) for i in value]
        limit = self.encoder.vocab_size
        bad = [i for i in ids if not 0 <= i < limit]
        if bad:
            raise ConfigError(
                f"{what} token id {bad[0]} is outside the model's vocabulary (0..{limit - 1})"
            )
        return ids

    def _sequence(self, prompt, prompt_ids, output, output_ids, window) -> _Sequence:
        if len(output_ids) > window:
            raise ConfigError(
                f"the output is {len(output_ids)} tokens; the model's context holds {window} "
                f"(attribute it in parts)"
            )
        keep = min(len(prompt_ids), window - len(output_ids))
        truncated = len(prompt_ids) - keep
        kept_prompt = prompt_ids[truncated:]
        decode = self.tokenizer.decode
        prompt_text = prompt if isinstance(prompt, str) else decode(prompt_ids)
        output_text = output if isinstance(output, str) else decode(output_ids)
        prompt_chars = _token_char_spans(self.tokenizer, prompt, prompt_ids)[truncated:]
        output_spans = _token_char_spans(self.tokenizer, output, output_ids)
        output_chars = [s for s, _ in output_spans] + [len(output_text)]
        return _Sequence(
            ids=np.asarray(kept_prompt + list(output_ids), dtype=np.int64),
            prompt_len=len(kept_prompt),
            truncated=truncated,
            prompt_text=prompt_text,
            output_text=output_text,
            prompt_chars=prompt_chars,
            output_chars=output_chars,
        )

    def _chunk_spans(self, seq: _Sequence, chunk_size: int) -> list[tuple[int, int]]:
        """Output chunks as [start, end) positions in the forward sequence."""
        P, T = seq.prompt_len, len(seq.ids)
        align = max(1, self.encoder.info.block_align)
        if align > 1:  # block grid of the forward pass: chunks are whole blocks, as indexed
            bounds = [P, *list(range((P // chunk_size + 1) * chunk_size, T, chunk_size)), T]
        else:
            bounds = [*list(range(P, T, chunk_size)), T]
        return [(s, e) for s, e in itertools.pairwise(bounds) if e > s]

    def _query_starts(self, spans, chunk_size: int, query_span: str) -> list[int]:
        """Per output chunk [s, e), where its search vector's pooling starts: ``s``
        (``output``), or ``chunk_size`` tokens before ``e`` (``chunk``; on a block grid,
        the start of the grid chunk holding ``s``, which is what the index pooled)."""
        if query_span == "output":
            return [s for s, _ in spans]
        if self.encoder.info.block_align > 1:
            return [(s // chunk_size) * chunk_size for s, _ in spans]
        return [max(0, e - chunk_size) for _, e in spans]

    def _query_windows(self, spans, query_starts) -> list[int]:
        """Per output chunk [s, e): where its search vector's window starts, so that it
        holds at most the index's window of tokens ending at ``e`` (on a block grid: ending
        at the block holding ``e``, so the window starts on the grid as indexed windows
        do). 0 for chunks the forward pass's own start serves."""
        W = self.manifest.context.window
        align = max(1, self.encoder.info.block_align)
        out = []
        for (_, e), q in zip(spans, query_starts, strict=True):
            start = max(0, -(-e // align) * align - W)
            out.append(min(start, q))  # the pooled span stays whole (q >= e - chunk_size)
        return out

    def _search_vectors(
        self, seq: _Sequence, acts: ConceptActivations, spans, query_starts
    ) -> PooledChunks:
        """Per output chunk, its pooled search vector (n, D) and top known concepts,
        pooled over [query start, end) within its query window (:meth:`_query_windows`):
        from the forward pass's activations where the window starts at 0, else from one
        batched pass over the windows (:func:`~tda.attribution.encoders.encode_whole`)."""
        starts = np.array(query_starts, dtype=np.int64)
        ends = np.array([e for _, e in spans], dtype=np.int64)
        window_starts = self._query_windows(spans, query_starts)
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

    def _rerank(self, rerank: str, ids: np.ndarray, out_concepts, query_text: str, k: int):
        """ANN candidate ids (n,) -> (positions of the k kept, in final order; their
        re-rank scores or None)."""
        valid = [i for i, cid in enumerate(ids.tolist()) if cid >= 0]
        if rerank == "none":
            return np.array(valid[:k], dtype=np.int64), None
        if rerank == "concepts":
            signal = [
                concept_overlap(out_concepts, *self.reader.concepts(int(ids[i]))) for i in valid
            ]
        else:
            query = words(query_text)
            texts = [self.reader.lookup.get(int(ids[i])).text or "" for i in valid]
            signal = [float(longest_shared_run(query, words(text))) for text in texts]
        order = rerank_order(signal)[:k]
        return np.array([valid[i] for i in order], dtype=np.int64), [signal[i] for i in order]

    def _hits(
        self, scores, ids, out_concepts: dict[int, float], rerank_scores=None
    ) -> tuple[TrainingHit, ...]:
        names = self.encoder.concept_names
        hits = []
        for rank, (score, chunk_id) in enumerate(zip(scores, ids, strict=True), start=1):
            if chunk_id < 0:
                continue
            record = self.reader.lookup.get(int(chunk_id))
            train_ids, train_weights = self.reader.concepts(int(chunk_id))
            shared = [
                SharedConcept(
                    int(cid),
                    _name(names, int(cid)),
                    round(out_concepts[int(cid)], 4),
                    round(float(w), 4),
                )
                for cid, w in zip(train_ids.tolist(), train_weights.tolist(), strict=True)
                if int(cid) in out_concepts
            ]
            shared.sort(key=lambda s: -min(s.output_weight, s.training_weight))
            hits.append(
                TrainingHit(
                    rank=rank,
                    score=round(float(score), 6),
                    chunk_id=int(chunk_id),
                    source=record.source,
                    doc_id=record.doc_id,
                    record_index=record.record_index,
                    chunk_index=record.chunk_index,
                    char_start=record.char_start,
                    char_end=record.char_end,
                    url=record.url,
                    text=record.text,
                    shared_concepts=tuple(shared),
                    rerank_score=(
                        None if rerank_scores is None else round(rerank_scores[rank - 1], 6)
                    ),
                )
            )
        return tuple(hits)

    def _concepts(self, split, acts: ConceptActivations, s: int, e: int, top: int):
        """Concept contributions to the logits of the chunk's tokens (positions s..e-1
        are predicted from s-1..e-2), summed per concept; the largest ``top``."""
        import torch

        lo, hi = max(s - 1, 0), e - 1
        rows = []
        for kind, ids, contrib, size in (
            ("known", acts.known_ids, split.known, self.encoder.info.n_known),
            ("unknown", acts.unknown_ids, split.unknown, self.encoder.info.n_unknown),
        ):
            if size == 0 or ids.shape[-1] == 0:
                continue
            flat_ids = ids[0, lo:hi].reshape(-1)
            total = torch.zeros(size, dtype=torch.float64, device=flat_ids.device)
            total.index_add_(0, flat_ids, contrib[0, lo:hi].reshape(-1).double())
            count = torch.zeros(size, dtype=torch.int64, device=flat_ids.device)
            count.index_add_(0, flat_ids, torch.ones_like(flat_ids))
            # the largest ``top`` among concepts present in the chunk (absent ones are 0)
            total = torch.where(count > 0, total, torch.full_like(total, -math.inf))
            values, order = torch.topk(total, min(top, size))
            for value, cid in zip(values.tolist(), order.tolist(), strict=True):
                if value != -math.inf:
                    rows.append((kind, cid, value, int(count[cid])))
        rows.sort(key=lambda r: (-r[2], r[0], r[1]))
        names = self.encoder.concept_names
        return tuple(
            ConceptContribution(
                kind=kind,
                concept_id=cid,
                name=_name(names, cid) if kind == "known" else f"unknown:{cid}",
                contribution=round(value, 5),
                tokens=count,
            )
            for kind, cid, value, count in rows[:top]
        )

    def _token_scores(self, seq: _Sequence, scores: np.ndarray | None) -> tuple[TokenScore, ...]:
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

    def _integrated_gradients(self, ids_t, P: int, spans, steps: int, baseline: str):
        """Integrated gradients of each chunk's log-probability with respect to the prompt
        token embeddings, along the straight line from ``baseline`` (the mask token's
        embedding, or zeros) to the prompt; midpoint rule with ``steps`` points.
        Returns per chunk (P,) scores and {"sum", "delta"}: completeness says
        sum ~= log p(chunk | prompt) - log p(chunk | baseline prompt)."""
        import torch

        enc = self.encoder
        with torch.no_grad():
            x = enc.token_embeddings(ids_t).detach()  # (1, T, D)
            if baseline == "mask":
                mask_id = enc.mask_id if enc.mask_id is not None else enc.pad_id
                base_row = enc.token_embeddings(torch.tensor([[mask_id]], device=enc.device))
                base = x.clone()
                base[:, :P] = base_row
            else:
                base = x.clone()
                base[:, :P] = 0
        alphas = (torch.arange(steps, dtype=torch.float32, device=enc.device) + 0.5) / steps
        n_chunks = len(spans)
        grads = torch.zeros((n_chunks, P, x.shape[-1]), dtype=torch.float32, device=enc.device)
        for lo in range(0, steps, IG_BATCH):
            a = alphas[lo : lo + IG_BATCH].view(-1, 1, 1).to(x.dtype)
            points = (base + a * (x - base)).detach().requires_grad_(True)  # (b, T, D)
            with torch.enable_grad():
                acts = enc.forward(None, embeds=points, with_logits=True)
                lp = _token_log_probs(acts.logits, ids_t.expand(points.shape[0], -1))
                for c, (s, e) in enumerate(spans):
                    (g,) = torch.autograd.grad(
                        lp[:, s:e].sum(), points, retain_graph=c < n_chunks - 1
                    )
                    grads[c] += g[:, :P].float().sum(0)
        grads /= steps
        diff = (x - base)[0, :P].float()
        scores = (grads * diff.unsqueeze(0)).sum(-1)  # (n_chunks, P)
        with torch.inference_mode():
            both = torch.cat([x, base])
            lp = _token_log_probs(enc.forward(None, embeds=both, with_logits=True).logits,
                                  ids_t.expand(2, -1))  # fmt: skip
        out_scores, checks = [], []
        for c, (s, e) in enumerate(spans):
            delta = float(lp[0, s:e].sum() - lp[1, s:e].sum())
            out_scores.append(scores[c].cpu().numpy())
            checks.append({"sum": round(float(scores[c].sum()), 6), "delta": round(delta, 6)})
        return out_scores, checks


def _name(names: Sequence[str], cid: int) -> str:
    return names[cid] if 0 <= cid < len(names) else f"known:{cid}"


def _detached(acts: ConceptActivations) -> ConceptActivations:
    return ConceptActivations(
        **{
            name: (getattr(acts, name).detach() if getattr(acts, name) is not None else None)
            for name in (
                "hidden", "known_features", "unknown_features", "known_ids", "known_weights",
                "unknown_ids", "unknown_weights", "logits",
            )
        }
    )  # fmt: skip


def _token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), ids (B, T) -> (B, T) log p(ids[t] | ids[<t]); 0 at t = 0."""
    import torch

    low = logits.dtype in (torch.float16, torch.bfloat16)
    lp = torch.log_softmax(logits[:, :-1].float() if low else logits[:, :-1], dim=-1)
    picked = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


def _chunk_log_prob(logits: torch.Tensor, ids: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """logits (1, T, V), ids (1, T) -> log p(ids[s:e] | ids[:s]), a scalar, from logit rows
    s-1..e-2 only: its backward runs log-softmax over those rows, not all T x V (measured:
    two chunks' backwards 18.5 ms against 24-27 ms through the full log-softmax)."""
    lo = max(s - 1, 0)
    return _token_log_probs(logits[:, lo:e], ids[:, lo:e])[0, s - lo :].sum()


def _totals(split, log_probs, s: int, e: int) -> LogitTotals:
    """Logit sums over the chunk's predicted tokens (positions s-1..e-2 predict s..e-1)."""
    lo, hi = max(s - 1, 0), e - 1
    return LogitTotals(
        logit=round(float(split.logit[0, lo:hi].double().sum()), 5),
        known_total=round(float(split.known[0, lo:hi].double().sum()), 5),
        unknown_total=round(float(split.unknown[0, lo:hi].double().sum()), 5),
        residual=round(float(split.residual[0, lo:hi].double().sum()), 5),
        log_prob=round(float(log_probs[0, s:e].double().sum()), 5),
    )


def _sources(hits: Sequence[TrainingHit]) -> dict[str, float]:
    """Share of each source in the hits' scores (negative scores count as 0; equal
    shares per hit when no score is positive)."""
    weights: dict[str, float] = {}
    for hit in hits:
        weights[hit.source] = weights.get(hit.source, 0.0) + max(hit.score, 0.0)
    total = sum(weights.values())
    if total <= 0:
        weights = {}
        for hit in hits:
            weights[hit.source] = weights.get(hit.source, 0.0) + 1.0
        total = float(len(hits)) or 1.0
    return {src: round(w / total, 6) for src, w in sorted(weights.items(), key=lambda kv: -kv[1])}


def _token_char_spans(tokenizer, text, ids: Sequence[int]) -> list[tuple[int, int]]:
    """(n,) character span of each token in ``text`` (or in the decoded ids)."""
    if not ids:
        return []
    if isinstance(text, str):
        (encoded,) = tokenizer.encode_batch([text])
        starts = encoded.char_starts(range(encoded.n_tokens))
        ends = [*starts[1:], len(text)]
        return list(zip(starts, ends, strict=True))
    pieces = [tokenizer.decode([i]) for i in ids]
    if "".join(pieces) == tokenizer.decode(ids) and "\ufffd" not in "".join(pieces):
        ends = np.cumsum([len(p) for p in pieces]).tolist()
        return list(zip([0, *ends[:-1]], ends, strict=True))
    # tokens that split a character: exact spans from decoded prefixes (O(n^2), rare)
    spans, pos = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        spans.append((pos, max(pos, end)))
        pos = max(pos, end)
    return spans
