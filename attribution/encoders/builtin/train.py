"""Train a builtin concept-bottleneck LM on a corpus, on CPU, in minutes.

1. Read documents (same readers and dead letters as the chunk stage) up to
   ``max_train_tokens``; train a byte-level BPE tokenizer on them.
2. Tokenize; label every token with the concept set's taggers; hold out the last
   ``holdout`` share of every document's tokens for evaluation.
3. Train on random crops of up to ``max_seq`` tokens (never across documents):
   loss = next-token cross-entropy (through the tied LM head)
        + ``concept_weight`` * BCE(known-concept logits, tagger labels)
        + normalised MSE of the unknown head's reconstruction of h - known_features.
4. With ``head_epochs`` (the concept phase, :mod:`.refit`): refit the concept heads on
   the frozen model's features; the LM's predictions do not change.
5. Evaluate on the held-out tokens: LM loss and, per known concept, the AUROC of its
   predicted weight against the tagger labels (0.5 = chance); save the model directory.

Deterministic: same corpus and settings, same weights (fixed seed, fixed crop order,
deterministic kernels while training; bit-for-bit on one machine).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from tda import __version__
from tda.attribution.corpus.readers import iter_documents, resolve_inputs
from tda.attribution.encoders.builtin.concepts import (
    FINAL,
    ConceptSet,
    load_concept_set,
    positives,
)
from tda.schemas import ChunkingPolicy, ConfigError, DeadLetter, TrainConfig

__all__ = ["AUROC_MIN_POSITIVES", "TrainProgress", "TrainResult", "auroc", "train_builtin"]

# A concept's AUROC is held to the 0.9 target once it has this many held-out positives
# (fewer, and one mislabelled token moves it by several points).
AUROC_MIN_POSITIVES = 50


@dataclass(frozen=True)
class TrainProgress:
    step: int
    steps: int
    loss: float  # total
    lm_loss: float
    concept_loss: float


@dataclass(frozen=True)
class TrainResult:
    out: str
    fingerprint: str
    report: dict  # what training.json holds


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); None if one class is absent."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class _Corpus:
    ids: list[np.ndarray]  # per document, (n_i,) int64
    labels: list[np.ndarray]  # per document, (n_i, C) uint8 (ConceptSet.label_tokens values)
    documents: int
    deadletters: dict[str, int]


def _read_corpus(cfg: TrainConfig, concept_set: ConceptSet, log) -> tuple[_Corpus, bytes, object]:
    from tda.attribution.corpus.tokenizer import (
        HFTokenizer,
        TokenizerError,
        read_tokenizer_json,
        train_bpe_tokenizer,
    )

    texts: list[str] = []
    dead: dict[str, int] = {}
    budget_chars = cfg.max_train_tokens * 4  # ~4 characters per BPE token on English text
    chars = 0
    for f in resolve_inputs(cfg.inputs, cfg.read.format):
        for item in iter_documents(f, cfg.read):
            if isinstance(item, DeadLetter):
                dead[item.reason.value] = dead.get(item.reason.value, 0) + 1
                continue
            texts.append(item.text)
            chars += len(item.text)
            if chars >= budget_chars:
                break
        if chars >= budget_chars:
            log(f"read the first {chars:,} characters (--max-train-tokens)")
            break
    if not texts:
        raise ConfigError("the inputs hold no usable documents to train on")
    if cfg.tokenizer:
        # a given tokenizer (e.g. a retraining that must keep the original model's
        # vocabulary: the same text, the same token ids)
        try:
            tokenizer_json = read_tokenizer_json(cfg.tokenizer)[0]
        except TokenizerError as exc:
            raise ConfigError(f"--tokenizer: {exc}") from None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = train_bpe_tokenizer(iter(texts), cfg.vocab_size, tmp)
            with open(path, "rb") as fh:
                tokenizer_json = fh.read()
    try:
        tokenizer = HFTokenizer(tokenizer_json, "builtin", "builtin")
    except TokenizerError as exc:
        raise ConfigError(f"--tokenizer {cfg.tokenizer}: {exc}") from None
    ids, labels = [], []
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        for text, enc in zip(batch, tokenizer.encode_batch(batch), strict=True):
            if enc.n_tokens == 0:
                continue
            starts = np.asarray(enc.char_starts(range(enc.n_tokens)), dtype=np.int64)
            ids.append(enc.ids.astype(np.int64))
            labels.append(_spread(concept_set.label_tokens(text, starts), cfg.label_spread))
    return _Corpus(ids, labels, len(texts), dead), tokenizer_json, tokenizer


def _spread(labels: np.ndarray, spread: int) -> np.ndarray:
    """(n, C) token labels -> every token within ``spread`` tokens either side of a token
    that overlaps a match labelled ``FINAL`` (a dilation along the document: a concept
    about a passage, so no token of it is pending)."""
    if spread <= 0 or len(labels) == 0:
        return labels
    hit = labels > 0
    out = hit.copy()
    for shift in range(1, spread + 1):
        out[shift:] |= hit[:-shift]
        out[:-shift] |= hit[shift:]
    return out.astype(np.uint8) * FINAL


def _segments(corpus: _Corpus, holdout: float, min_len: int):
    """(doc, start, end) token ranges for training and for evaluation."""
    train, held = [], []
    for d, ids in enumerate(corpus.ids):
        n = len(ids)
        cut = n - int(n * holdout)
        if cut > 1:
            train.append((d, 0, cut))
        if n - cut >= min_len:
            held.append((d, cut, n))
    return train, held


def _batch(corpus: _Corpus, segments, picks, offsets, seq: int, n_known: int):
    """Crops -> ids (B, T), labels (B, T, C) float (the label values 0, PENDING, FINAL),
    mask (B, T) of real tokens."""
    import torch

    B = len(picks)
    ids = np.zeros((B, seq), dtype=np.int64)
    labels = np.zeros((B, seq, n_known), dtype=np.float32)
    mask = np.zeros((B, seq), dtype=bool)
    for b, (p, off) in enumerate(zip(picks, offsets, strict=True)):
        d, start, end = segments[p]
        s = start + off
        e = min(s + seq, end)
        ids[b, : e - s] = corpus.ids[d][s:e]
        labels[b, : e - s] = corpus.labels[d][s:e]
        mask[b, : e - s] = True
    return torch.from_numpy(ids), torch.from_numpy(labels), torch.from_numpy(mask)


def _crop_sampler(corpus: _Corpus, segments, batch_size: int, seq: int, n_known: int):
    """Training's batches of ``segments`` ((doc, start, end) ranges) -> ``draw(rng)``: one
    batch (:func:`_batch`'s ids, labels, mask) of documents drawn in proportion to their
    length, each cropped at a uniformly random offset (the training loop, the concept
    phase and the benchmarks draw through it)."""
    lengths = np.array([e - s for _, s, e in segments], dtype=np.float64)
    p = lengths / lengths.sum()

    def draw(rng: np.random.Generator):
        picks = rng.choice(len(segments), size=batch_size, p=p)
        offsets = [int(rng.integers(0, max(1, lengths[i] - seq + 1))) for i in picks]
        return _batch(corpus, segments, picks, offsets, seq, n_known)

    return draw


def _pos_weight(corpus: _Corpus, segments, n_known: int, causal: bool = False):
    """(C,) BCE weight of positive labels (:func:`positives` with ``causal``): sqrt of the
    negative/positive ratio, in [1, 30].

    Tagged tokens are rare (well under 1%); unweighted, the head learns "never" first and
    its gradients for the positives stay tiny for hundreds of steps."""
    import torch

    pos = np.zeros(n_known, dtype=np.float64)
    total = np.zeros(n_known, dtype=np.float64)
    for d, s, e in segments:
        y, counts = positives(corpus.labels[d][s:e], causal)
        pos += y.sum(axis=0)
        total += counts.sum(axis=0)
    ratio = (total - pos) / np.maximum(pos, 1)
    return torch.from_numpy(np.clip(np.sqrt(ratio), 1.0, 30.0).astype(np.float32))


def _losses(model, ids, labels, mask, cfg: TrainConfig, pos_weight=None, paths=None):
    """One batch's losses: (total, lm, concept, known_logits, parts).

    ``paths`` (B,) int per sequence picks what the LM head reads while training: 0 the
    hidden state h (= known + unknown + residual), 1 the concepts alone (known +
    unknown), 2 the known concepts alone. Training some sequences through the concepts
    alone is what makes them carry the prediction: through h alone the concept vectors
    get no gradient from the LM loss at all, and the split of a logit is then whatever
    is left over. ``parts`` = (h, known, unknown) features (B, T, D) each and the unknown
    head's top-k (ids, weights) (B, T, k) each, for evaluation."""
    import torch
    import torch.nn.functional as F

    x0 = model.tok_emb(ids)
    h = model.hidden(None, x0)
    known_logits, (ki, kw), known, (ui, uw), unknown = model.heads(h, x0)
    z = h
    if paths is not None:
        # The LM loss trains the concept vectors through these paths, not the concept
        # head: its weights stay what the taggers supervise (detached), else the LM
        # gradient turns them into whatever predicts best and they stop meaning their
        # names (measured: AUROC 0.72 against 0.92 without the detach).
        known_lm = torch.einsum("btk,btkd->btd", kw.detach(), model.known_emb[ki])
        p = paths.view(-1, 1, 1)
        z = torch.where(p == 0, h, torch.where(p == 1, known_lm + unknown, known_lm))
    logits = model.logits(z)  # (B, T, V)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
    m = mask.unsqueeze(-1).float()
    target, counts = positives(labels, cfg.causal_labels)
    bce = F.binary_cross_entropy_with_logits(
        known_logits, target.float(), reduction="none", pos_weight=pos_weight
    )
    concept = (bce * m * counts).sum() / (m.sum() * labels.shape[-1]).clamp_min(1)
    # the unknown head reconstructs what the known concepts leave of h (as an SAE would)
    target = (h - known).detach()
    rec = (((unknown - target) ** 2) * m).sum() / ((target**2) * m).sum().clamp_min(1e-8)
    total = lm + cfg.concept_weight * concept + rec
    if cfg.residual_weight:
        # Steerling's constraint on epsilon: the residual's norm relative to h's
        res = h - known - unknown
        total = total + cfg.residual_weight * ((res**2) * m).sum() / (
            (h.detach() ** 2) * m
        ).sum().clamp_min(1e-8)
    return total, lm, concept, known_logits, (h, known, unknown, ui, uw)


def train_builtin(
    cfg: TrainConfig,
    progress: Callable[[TrainProgress], None] = lambda p: None,
    log: Callable[[str], None] = lambda s: None,
) -> TrainResult:
    """Train and save a builtin model directory at ``cfg.out`` (see the module docstring)."""
    import torch

    from tda.attribution.encoders.builtin.model import BuiltinConfig

    concept_set = load_concept_set(cfg.concepts)
    corpus, tokenizer_json, tokenizer = _read_corpus(cfg, concept_set, log)
    n_tokens = sum(len(i) for i in corpus.ids)
    log(
        f"{corpus.documents:,} documents, {n_tokens:,} tokens, "
        f"{len(concept_set)} known concepts; vocabulary {tokenizer.info.vocab_size:,}"
    )
    model_cfg = BuiltinConfig(
        vocab_size=tokenizer.info.vocab_size,
        n_known=len(concept_set),
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        max_seq=cfg.max_seq,
        n_unknown=cfg.n_unknown,
        token_head=cfg.token_head,
        known_topk=cfg.known_topk,
        known_hidden=cfg.known_hidden,
    )
    torch.manual_seed(cfg.seed)
    # Some CPU backward kernels (index accumulation) are not repeatable by default.
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(
            cfg, model_cfg, concept_set, corpus, tokenizer_json, tokenizer, n_tokens, progress,
            log,
        )  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(cfg, model_cfg, concept_set, corpus, tokenizer_json, tokenizer, n_tokens, progress, log):
    import torch

    from tda.attribution.encoders.builtin.model import ConceptLM, save_builtin
    from tda.attribution.encoders.builtin.refit import concept_phase

    model = ConceptLM(model_cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    train_segs, held_segs = _segments(corpus, cfg.holdout, min_len=16)
    draw = _crop_sampler(corpus, train_segs, cfg.batch_size, cfg.max_seq, len(concept_set))
    pos_weight = _pos_weight(corpus, train_segs, len(concept_set), cfg.causal_labels)
    rng = np.random.default_rng(cfg.seed)
    curve: list[list[float]] = []
    model.train()
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        ids, labels, mask = draw(rng)
        u = rng.random(cfg.batch_size)
        paths = torch.from_numpy(
            np.where(u < cfg.known_only, 2, np.where(u < cfg.known_only + cfg.bottleneck, 1, 0))
        )
        loss, lm, concept, _, _ = _losses(model, ids, labels, mask, cfg, pos_weight, paths)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        point = [float(loss.detach()), float(lm.detach()), float(concept.detach())]
        curve.append(point)
        progress(TrainProgress(step + 1, cfg.steps, *point))
    model.eval()
    phase = concept_phase(model, draw, cfg, pos_weight, log) if cfg.head_epochs else None
    heldout, calibration, unknown_labels = _evaluate(
        model, corpus, held_segs, cfg, concept_set, tokenizer
    )
    window = max(1, min(20, cfg.steps // 5))
    report = {
        "tda_version": __version__,
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("inputs", "out")},
        "corpus": {
            "inputs": list(cfg.inputs),
            "documents": corpus.documents,
            "tokens": n_tokens,
            "deadletters": dict(sorted(corpus.deadletters.items())),
        },
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.max_seq,
        "loss_first": float(np.mean([c[0] for c in curve[:window]])),
        "loss_last": float(np.mean([c[0] for c in curve[-window:]])),
        "lm_loss_first": float(np.mean([c[1] for c in curve[:window]])),
        "lm_loss_last": float(np.mean([c[1] for c in curve[-window:]])),
        "loss_curve": [[round(x, 5) for x in c] for c in curve[:: max(1, cfg.steps // 100)]],
        "heldout": heldout,
    }
    if phase is not None:
        report["concept_phase"] = phase
    fingerprint = save_builtin(
        cfg.out, model, concept_set, tokenizer_json, tokenizer.info.fingerprint, report,
        calibration, unknown_labels,
    )  # fmt: skip
    return TrainResult(out=cfg.out, fingerprint=fingerprint, report=report)


def _evaluate(model, corpus: _Corpus, segments, cfg: TrainConfig, concept_set, tokenizer):
    """One pass over the held-out tokens -> (report, calibration, unknown labels).

    The report holds the LM loss, every concept's AUROC of its predicted weight against
    the tagger labels (0.5 = chance), the logit shares and the targets they are held to.
    Also sets the model's pooling statistics (see :mod:`.calibrate`)."""
    import torch

    from tda.attribution.encoders.builtin.calibrate import (
        SHARE_DEFINITION,
        calibrate_concepts,
        hidden_statistics,
        label_unknown_concepts,
        logit_shares,
    )

    if not segments:
        return {"tokens": 0}, {}, ()
    chunk = ChunkingPolicy().chunk_size  # the index's default chunk size
    # every held-out token, in windows of max_seq
    segments = [
        (d, s, min(s + cfg.max_seq, e))
        for d, start, e in segments
        for s in range(start, e, cfg.max_seq)
    ]
    C, D = len(concept_set), model.cfg.d_model
    scores, labels, lm_losses, tokens = [], [], [], 0
    shares: list[np.ndarray] = []  # (3,) per chunk: known, unknown, residual logit sums
    chunk_w, chunk_y = [], []  # per chunk: (C,) max weight, (C,) any tagged token
    unk_ids, unk_w, unk_tok = [], [], []
    # over held-out chunks: the sum of chunk-mean hidden states and of their squares
    sum_h, sum_h2, n_chunks = np.zeros(D), np.zeros(D), 0
    with torch.inference_mode():
        for i in range(0, len(segments), cfg.batch_size):
            part = segments[i : i + cfg.batch_size]
            picks = list(range(len(part)))
            ids, lab, mask = _batch(corpus, part, picks, [0] * len(part), cfg.max_seq, C)
            _, lm, _, known_logits, (h, known, unknown, ui, uw) = _losses(
                model, ids, lab, mask, cfg
            )
            n = int(mask.sum())
            lm_losses.append(float(lm) * n)
            tokens += n
            weights = torch.sigmoid(known_logits)
            scores.append(weights[mask].numpy())
            labels.append(lab[mask].numpy())
            unk_ids.append(ui[mask].numpy())
            unk_w.append(uw[mask].numpy())
            unk_tok.append(ids[mask].numpy())
            # the weights pooling sees: every concept's (BuiltinEncoder gives them all)
            topk = weights
            # each part's contribution to the logit of the actual next token
            w_y = model.tok_emb.weight[ids[:, 1:]]  # (B, T-1, D)
            res = h - known - unknown
            parts = torch.stack([(x[:, :-1] * w_y).sum(-1) for x in (known, unknown, res)], -1)
            for b in range(len(part)):
                length = int(mask[b].sum())
                for c0 in range(0, length, chunk):
                    c1 = min(c0 + chunk, length)
                    # tokens c0..c1-1 are predicted from positions c0-1..c1-2
                    lo, hi = max(c0 - 1, 0), c1 - 1
                    if hi > lo:
                        shares.append(parts[b, lo:hi].double().sum(0).numpy())
                    pooled = h[b, c0:c1].double().mean(0).numpy()
                    sum_h += pooled
                    sum_h2 += pooled**2
                    n_chunks += 1
                    chunk_w.append(topk[b, c0:c1].max(0).values.numpy())
                    hit = positives(lab[b, c0:c1], cfg.causal_labels)[0]
                    chunk_y.append(hit.any(0).numpy())
    s, y = np.concatenate(scores), np.concatenate(labels)
    # the target's AUROC: causal labels, whatever the model was trained on; overlap beside it
    causal = _aurocs(s, y, concept_set.names, causal=True)
    overlap = _aurocs(s, y, concept_set.names, causal=False)
    mean, scale = hidden_statistics(sum_h, sum_h2, n_chunks)
    model.pool_mean.copy_(torch.from_numpy(mean))
    model.pool_scale.copy_(torch.from_numpy(scale))
    split = np.stack(shares) if shares else np.zeros((0, 3))
    share = logit_shares(split[:, 0], split[:, 1], split[:, 2])
    share["definition"] = SHARE_DEFINITION.replace("CHUNK", str(chunk))
    calibration = calibrate_concepts(np.stack(chunk_w), np.stack(chunk_y), concept_set.names)
    unknown_labels = label_unknown_concepts(
        np.concatenate(unk_ids), np.concatenate(unk_w), np.concatenate(unk_tok),
        model.cfg.n_unknown, lambda t: tokenizer.decode([t]),
    )  # fmt: skip
    lm_loss = sum(lm_losses) / tokens
    report = {
        "tokens": tokens,
        "lm_loss": lm_loss,
        "labels": "causal" if cfg.causal_labels else "overlap",
        **causal,
        **{_OVERLAP_KEYS[k]: v for k, v in overlap.items()},
        "logit_share": share,
        "targets": {
            "known_share >= 0.30": share["known"] >= 0.30,
            "residual_share <= 0.25": share["residual"] <= 0.25,
            f"auroc >= 0.9 (concepts with >= {AUROC_MIN_POSITIVES} positives, causal labels)": (
                causal["auroc_min"] is not None and causal["auroc_min"] >= 0.9
            ),
        },
        "calibration": {k: v.to_dict() for k, v in sorted(calibration.items())},
    }
    return report, calibration, unknown_labels


# training.json's keys for the AUROC against overlap labels
_OVERLAP_KEYS = {
    "concept_auroc_mean": "concept_auroc_overlap_mean",
    "concepts_scored": "concepts_scored_overlap",
    "concept_auroc": "concept_auroc_overlap",
    "concept_positives": "concept_positives_overlap",
    "auroc_min": "auroc_overlap_min",
    "auroc_below_0.9": "auroc_overlap_below_0.9",
}


def _aurocs(scores: np.ndarray, labels: np.ndarray, names, causal: bool) -> dict:
    """Held-out weights (N, C) and token labels (N, C) -> each concept's AUROC against
    :func:`positives` of the labels (``causal``: positives where a match ends, a match's
    earlier tokens left out), its positives, and the summary the targets read: the mean
    over every concept scored, the lowest and those below 0.9 among the concepts with at
    least ``AUROC_MIN_POSITIVES`` positives. Keys as ``training.json``'s ``heldout``."""
    y, counts = positives(labels, causal)
    per_concept, n_pos = {}, {}
    for c, name in enumerate(names):
        keep = counts[:, c]
        n_pos[name] = int(y[keep, c].sum())
        value = auroc(scores[keep, c], y[keep, c])
        if value is not None:
            per_concept[name] = round(value, 4)
    scored = {k: v for k, v in per_concept.items() if n_pos[k] >= AUROC_MIN_POSITIVES}
    return {
        "concept_auroc_mean": float(np.mean(list(per_concept.values()))) if per_concept else None,
        "concepts_scored": len(per_concept),
        "concept_auroc": per_concept,
        "concept_positives": n_pos,
        "auroc_min": min(scored.values()) if scored else None,
        "auroc_below_0.9": {k: v for k, v in sorted(scored.items()) if v < 0.9},
    }
