"""Steps 1 and 2 of an attribution: prompt + output as the token sequence the forward pass
sees, and the output chunks in it with where each one's search vector pools from.

* :func:`build_sequence`: tokenize prompt and output (or take token ids, or generate the
  output with :func:`generate_tokens`), cut the prompt on the left to fit the model's
  context, and record each token's characters (:class:`TokenSequence`);
* :func:`chunk_spans`: the output cut into chunks of ``chunk_size`` tokens from its first
  token (on an attention-block grid for Steerling, as at index time);
* :func:`query_starts` / :func:`query_windows`: per chunk, where its search vector's
  pooling starts (``query_span``) and where the window it is encoded in starts, so it never
  sees more context than an indexed chunk's window holds.

Positions are in the forward sequence of T = P (kept prompt tokens) + output tokens.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np

from tda.attribution.encoders import ConceptEncoder
from tda.schemas import MAX_OUTPUT_TOKENS, AttributionRequest, ConfigError

__all__ = [
    "TokenSequence",
    "build_sequence",
    "chunk_spans",
    "generate_tokens",
    "query_starts",
    "query_windows",
    "token_char_spans",
]


@dataclass
class TokenSequence:
    """Prompt + output tokens as the forward pass sees them."""

    ids: np.ndarray  # (T,) int64: prompt[truncated:] + output
    prompt_len: int  # P: tokens of prompt in ``ids``
    truncated: int  # prompt tokens dropped on the left
    prompt_text: str
    output_text: str
    prompt_chars: list[tuple[int, int]]  # (P,) character span of each prompt token
    output_chars: list[int]  # (n_out + 1,) character start of each output token, then end
    generated: dict | None  # {"tokens", "temperature", "seed"} when the model wrote the output


def generate_tokens(
    encoder: ConceptEncoder,
    prompt_ids: Sequence[int],
    n: int,
    temperature: float = 0.0,
    seed: int = 0,
    window: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
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
    if n > window:  # refused before generating: the output must fit the model's context
        raise ConfigError(
            f"--generate {n} is more than the model's context of {window} tokens; ask for "
            f"at most {window}"
        )
    defaults = encoder.generation_defaults
    return encoder.generate(
        prompt_ids, n, temperature, seed, window,
        top_p=defaults["top_p"] if top_p is None else top_p,
        repetition_penalty=(
            defaults["repetition_penalty"] if repetition_penalty is None else repetition_penalty
        ),
    )  # fmt: skip


def build_sequence(
    encoder: ConceptEncoder,
    tokenizer,
    request: AttributionRequest,
    timed: Callable[[str], AbstractContextManager] = lambda step: contextlib.nullcontext(),
) -> TokenSequence:
    """Step 1: the request's prompt and output as token ids (the output generated when
    asked, inside ``timed("generate")``), the prompt cut on the left to fit the model's
    context, and each token's characters."""
    window = encoder.info.max_window  # the forward pass: the model's context limit
    prompt, output = request.prompt, request.output
    prompt_ids = _token_ids(encoder, tokenizer, prompt, "prompt")
    generated = None
    if request.generate is not None:
        with timed("generate"):
            output_ids = generate_tokens(
                encoder, prompt_ids, request.generate, request.temperature, request.seed, window,
                request.top_p, request.repetition_penalty,
            )  # fmt: skip
        defaults = encoder.generation_defaults
        generated = {
            "tokens": request.generate,
            "temperature": request.temperature,
            "seed": request.seed,
            "top_p": defaults["top_p"] if request.top_p is None else request.top_p,
            "repetition_penalty": (
                defaults["repetition_penalty"]
                if request.repetition_penalty is None
                else request.repetition_penalty
            ),
        }
        output = output_ids
    else:
        output_ids = _token_ids(encoder, tokenizer, output, "output")
    if not output_ids:
        raise ConfigError("the output has no tokens")
    if len(output_ids) > window:
        raise ConfigError(
            f"the output is {len(output_ids)} tokens; the model's context holds {window} "
            f"(attribute it in parts)"
        )
    keep = min(len(prompt_ids), window - len(output_ids))
    truncated = len(prompt_ids) - keep
    kept_prompt = prompt_ids[truncated:]
    decode = tokenizer.decode
    prompt_text = prompt if isinstance(prompt, str) else decode(prompt_ids)
    output_text = output if isinstance(output, str) else decode(output_ids)
    prompt_chars = token_char_spans(tokenizer, prompt, prompt_ids)[truncated:]
    output_spans = token_char_spans(tokenizer, output, output_ids)
    output_chars = [s for s, _ in output_spans] + [len(output_text)]
    return TokenSequence(
        ids=np.asarray(kept_prompt + list(output_ids), dtype=np.int64),
        prompt_len=len(kept_prompt),
        truncated=truncated,
        prompt_text=prompt_text,
        output_text=output_text,
        prompt_chars=prompt_chars,
        output_chars=output_chars,
        generated=generated,
    )


def _token_ids(encoder: ConceptEncoder, tokenizer, value: str | Sequence[int], what: str):
    """A text (tokenized) or token ids (checked against the vocabulary) -> list of ids."""
    if isinstance(value, str):
        (encoded,) = tokenizer.encode_batch([value])
        return encoded.ids.tolist()
    ids = [int(i) for i in value]
    limit = encoder.vocab_size
    bad = [i for i in ids if not 0 <= i < limit]
    if bad:
        raise ConfigError(
            f"{what} token id {bad[0]} is outside the model's vocabulary (0..{limit - 1})"
        )
    return ids


def token_char_spans(tokenizer, text, ids: Sequence[int]) -> list[tuple[int, int]]:
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


def chunk_spans(
    prompt_len: int, length: int, chunk_size: int, block_align: int
) -> list[tuple[int, int]]:
    """Step 2: the output chunks of a sequence of ``length`` tokens whose first
    ``prompt_len`` are the prompt, as [start, end) positions (n chunks). With attention
    blocks (``block_align`` > 1) the boundaries follow the forward pass's block grid:
    chunks are whole blocks, as indexed."""
    P, T = prompt_len, length
    if max(1, block_align) > 1:
        bounds = [P, *list(range((P // chunk_size + 1) * chunk_size, T, chunk_size)), T]
    else:
        bounds = [*list(range(P, T, chunk_size)), T]
    return [(s, e) for s, e in itertools.pairwise(bounds) if e > s]


def query_starts(
    spans: Sequence[tuple[int, int]], chunk_size: int, query_span: str, block_align: int
) -> list[int]:
    """Per output chunk [s, e), where its search vector's pooling starts: ``s``
    (``output``), or ``chunk_size`` tokens before ``e`` (``chunk``; on a block grid, the
    start of the grid chunk holding ``s``, which is what the index pooled)."""
    if query_span == "output":
        return [s for s, _ in spans]
    if block_align > 1:
        return [(s // chunk_size) * chunk_size for s, _ in spans]
    return [max(0, e - chunk_size) for _, e in spans]


def query_windows(
    spans: Sequence[tuple[int, int]], starts: Sequence[int], window: int, block_align: int
) -> list[int]:
    """Per output chunk [s, e) pooled from ``starts``: where its search vector's window
    starts, so that it holds at most the index's ``window`` of tokens ending at ``e`` (on
    a block grid: ending at the block holding ``e``, so the window starts on the grid as
    indexed windows do). 0 for chunks the forward pass's own start serves."""
    align = max(1, block_align)
    out = []
    for (_, e), q in zip(spans, starts, strict=True):
        start = max(0, -(-e // align) * align - window)
        out.append(min(start, q))  # the pooled span stays whole (q >= e - chunk_size)
    return out
