"""The concept phase of ``tda model train``: after the LM is trained, refit its concept
heads on its frozen features (``--head-epochs``).

Why (docs/model.md, "The AUROC target and label visibility"): trained jointly for a few hundred
steps, the known head reads the concepts out of the hidden state far worse than a head
fitted to convergence on the same, frozen, features (held-out AUROC mean 0.85 against
0.96 for an MLP over [h, input token embedding]). The transformer does not change here,
so the LM's predictions (and its loss) stay exactly as trained; three small fits follow:

1. **Known head** (every known-head parameter: the linear map of h, the token head and
   the MLP when the model has them), re-initialised and fitted by class-weighted BCE
   against the tagger labels on standardised features; the standardisation is folded
   into the first layers afterwards, so the saved model computes the same function with
   no extra parameters.
2. **Known concept vectors** ``E_known`` (from their trained values): the LM read through
   the known concepts alone (``sum_i w_i E_known[i]`` with the new head's top-k weights,
   held fixed), next-token cross-entropy: what ``--known-only`` trains them on, now
   against the new weights, so the named concepts keep carrying the logit.
3. **Unknown head** (from its trained values): normalised reconstruction of ``h -
   known``, as in training, against the new known features.

Features: ``head_batches`` batches of training crops drawn as training draws them (a seed
of their own), cached once; the known head makes ``head_epochs`` passes over them in
batches of 8,192 tokens, the vectors and the unknown head ``vector_epochs`` passes over
their first quarter in batches of 2,048 (seeded shuffles): deterministic like training.
"""

from __future__ import annotations

import numpy as np

__all__ = ["concept_phase"]

_BATCH = 8192
# The concept vectors (C x D numbers) and the unknown head need far fewer tokens than the
# known head: they fit on the first quarter of the cached tokens, in smaller batches (more
# steps for the same arithmetic; the vectors' fit computes every token's full vocabulary
# logits, the phase's largest cost).
_SMALL_SHARE = 4
_SMALL_BATCH = 2048


def _features(model, draw, batches: int, seed: int):
    """``batches`` training batches (``draw(rng)`` -> ids (B, T), labels (B, T, C), mask
    (B, T)) -> per real token: h (N, D), x0 (N, D), labels (N, C) float (label values), and the next
    token's id (N,) int64 (-1 at a crop's last token)."""
    import torch

    rng = np.random.default_rng(seed)
    hs, xs, ys, nexts = [], [], [], []
    with torch.inference_mode():
        for _ in range(batches):
            ids, labels, mask = draw(rng)
            x0 = model.tok_emb(ids)
            h = model.hidden(None, x0)
            nxt = torch.full_like(ids, -1)
            nxt[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:], -1)
            hs.append(h[mask].clone())
            xs.append(x0[mask].clone())
            ys.append(labels[mask].clone())
            nexts.append(nxt[mask])
    return torch.cat(hs), torch.cat(xs), torch.cat(ys), torch.cat(nexts)


def _fold(linear, mu, sd) -> None:
    """A Linear fitted on (v - mu) / sd -> the same map of v, in place."""
    import torch

    with torch.no_grad():
        linear.weight.div_(sd[None, :])
        linear.bias.sub_(linear.weight @ mu)


def _epochs(n: int, epochs: int, seed: int, batch: int = _BATCH):
    """Seeded shuffled batches of token indices in [0, n) over ``epochs`` passes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            yield perm[i : i + batch]


def concept_phase(model, draw, cfg, pos_weight, log=lambda s: None) -> dict:
    """Refit ``model``'s concept heads in place (the module's three fits) on features of
    ``cfg.head_batches`` batches that ``draw(rng)`` makes as training makes them
    (``train._crop_sampler``); ``pos_weight`` (C,): training's BCE weight of positives.
    -> figures for training.json (tokens, each fit's last-epoch loss)."""
    import torch
    import torch.nn.functional as F

    from tda.attribution.encoders.builtin.concepts import positives

    C = model.cfg.n_known
    H, X, Y, nxt = _features(model, draw, cfg.head_batches, cfg.seed + 1)
    n = len(Y)
    # targets and the tokens that count (causal labels leave a match's earlier tokens out)
    Y, counts = positives(Y, cfg.causal_labels)
    Y, counts = Y.float(), (counts.float() if cfg.causal_labels else None)
    torch.manual_seed(cfg.seed + 1)

    # 1. the known head, on standardised features
    mu_h, sd_h = H.mean(0), H.std(0) + 1e-5
    mu_x, sd_x = X.mean(0), X.std(0) + 1e-5
    Hs, Xs = (H - mu_h) / sd_h, (X - mu_x) / sd_x
    head = [m for m in (model.known_pred, model.known_token, model.known_mlp) if m is not None]
    for module in head:
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear):
                torch.nn.init.normal_(sub.weight, std=0.02)
                torch.nn.init.zeros_(sub.bias)
    params = [p for m in head for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    known_loss = float("nan")
    for b in _epochs(n, cfg.head_epochs, cfg.seed + 1):
        loss = F.binary_cross_entropy_with_logits(
            model.known_logits(Hs[b], Xs[b]), Y[b], pos_weight=pos_weight,
            weight=None if counts is None else counts[b],
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        known_loss = float(loss.detach())
    _fold(model.known_pred, mu_h, sd_h)
    if model.known_token is not None:
        _fold(model.known_token, mu_x, sd_x)
    if model.known_mlp is not None:
        _fold(model.known_mlp[0], torch.cat([mu_h, mu_x]), torch.cat([sd_h, sd_x]))
    for p in params:
        p.grad = None

    # 2. the known concept vectors, read alone by the LM head (the weights held fixed)
    small = n // _SMALL_SHARE
    H, X, nxt = H[:small], X[:small], nxt[:small]
    with torch.no_grad():  # the head is final: its top-k serve steps 2 and 3
        kw_all, ki_all = torch.topk(
            torch.sigmoid(model.known_logits(H, X)), min(model.cfg.known_topk, C)
        )  # (N/4, k) each
    has_next = nxt >= 0
    kw, ki, nx = kw_all[has_next], ki_all[has_next], nxt[has_next]
    opt = torch.optim.Adam([model.known_emb], lr=1e-2)
    emb = model.tok_emb.weight.detach()
    vector_loss = float("nan")
    for b in _epochs(len(nx), cfg.vector_epochs, cfg.seed + 2, _SMALL_BATCH):
        z = torch.einsum("nk,nkd->nd", kw[b], model.known_emb[ki[b]])
        loss = F.cross_entropy(z @ emb.T, nx[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        vector_loss = float(loss.detach())
    model.known_emb.grad = None

    # 3. the unknown head, reconstructing what the new known features leave of h
    with torch.no_grad():
        target = H - torch.einsum("nk,nkd->nd", kw_all, model.known_emb[ki_all])
    params = [*model.unknown_pred.parameters(), model.unknown_emb]
    opt = torch.optim.Adam(params, lr=1e-3)
    k_u = min(model.cfg.unknown_topk, model.cfg.n_unknown)
    rec_loss = float("nan")
    for b in _epochs(small, cfg.vector_epochs, cfg.seed + 3, _SMALL_BATCH):
        uw, ui = torch.topk(torch.sigmoid(model.unknown_pred(H[b])), k_u)
        rec = torch.einsum("nk,nkd->nd", uw, model.unknown_emb[ui])
        loss = ((rec - target[b]) ** 2).sum() / (target[b] ** 2).sum().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec_loss = float(loss.detach())
    for p in params:
        p.grad = None
    log(f"concept phase: {n:,} tokens; known head BCE {known_loss:.4f}, known-only LM "
        f"{vector_loss:.4f}, unknown reconstruction {rec_loss:.4f}")  # fmt: skip
    return {
        "tokens": n,
        "head_epochs": cfg.head_epochs,
        "vector_epochs": cfg.vector_epochs,
        "known_bce_last": round(known_loss, 5),
        "known_only_lm_last": round(vector_loss, 5),
        "unknown_reconstruction_last": round(rec_loss, 5),
    }
