"""The training-recipe search behind docs/model.md ("Figures"): one builtin-model training
run of 250 steps with a chosen recipe, then the held-out LM loss, logit shares and
per-concept AUROC, as one JSON line.

    .venv/bin/python benchmarks/train_recipes.py --inputs 'build/demo/corpus/*' [recipe flags]

It reimplements ``tda model train``'s loop (same batches, schedule and evaluation) with
switches ``tda model train`` does not have: ``--detach-w 0`` lets the LM loss train the
concept head too (wave-1 of the recipe search, refused since), ``--aux`` an extra
known-only loss term. The defaults are the wave-1 recipe (LM through h only).
"""

import argparse
import glob
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from tda.attribution.encoders.builtin import train as T
from tda.attribution.encoders.builtin.concepts import load_concept_set
from tda.attribution.encoders.builtin.model import BuiltinConfig, ConceptLM
from tda.schemas import TrainConfig

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--inputs", default="build/demo/corpus/*", help="Corpus glob.")
p.add_argument("--steps", type=int, default=250)
p.add_argument("--p-known", type=float, default=0.0)  # share of sequences trained on known only
p.add_argument("--p-bottle", type=float, default=0.0)  # share trained on known+unknown
p.add_argument("--res-w", type=float, default=0.0)  # residual norm penalty
p.add_argument("--cw", type=float, default=1.0)
p.add_argument("--spread", type=int, default=0)  # label +-spread tokens around matches
p.add_argument("--unk-detach", type=int, default=1)
p.add_argument("--known-topk", type=int, default=8)
p.add_argument("--aux", type=float, default=0.0)
p.add_argument("--detach-w", type=int, default=0)
p.add_argument(
    "--tok-head", type=int, default=0
)  # weight of extra known-only CE term (separate matmul)
a = p.parse_args()

cs = load_concept_set("default")
cfg = TrainConfig(inputs=tuple(sorted(glob.glob(a.inputs))), out="unused")
corpus, _, _ = T._read_corpus(cfg, cs, print)
C = len(cs)
if a.spread:  # the same dilation as tda model train --label-spread
    corpus.labels = [T._spread(labels, a.spread) for labels in corpus.labels]
torch.manual_seed(0)
torch.use_deterministic_algorithms(True, warn_only=True)
mc = BuiltinConfig(vocab_size=4096, n_known=C, known_topk=a.known_topk)
model = ConceptLM(mc)
if a.tok_head:
    model.known_tok = torch.nn.Linear(mc.d_model, C)
    torch.nn.init.normal_(model.known_tok.weight, std=0.02)
    torch.nn.init.zeros_(model.known_tok.bias)
CUR = {}
decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
    lr=3e-3,
    betas=(0.9, 0.95),
)
train_segs, held_segs = T._segments(corpus, 0.05, min_len=16)
lengths = np.array([e - s for _, s, e in train_segs], dtype=np.float64)
pw = T._pos_weight(corpus, train_segs, C)
rng = np.random.default_rng(0)
B, S = 16, 256


def heads(h):
    kl = model.known_pred(h)
    if a.tok_head:
        kl = kl + model.known_tok(model.tok_emb(CUR["ids"]))
    kw, ki = torch.topk(torch.sigmoid(kl), min(mc.known_topk, C))
    known = torch.einsum(
        "btk,btkd->btd", kw.detach() if (a.detach_w and model.training) else kw, model.known_emb[ki]
    )
    src = h.detach() if a.unk_detach else h
    uw, ui = torch.topk(torch.sigmoid(model.unknown_pred(src)), mc.unknown_topk)
    unknown = torch.einsum("btk,btkd->btd", uw, model.unknown_emb[ui])
    return kl, known, unknown, (ki, kw, ui, uw)


t0 = time.time()
for step in range(a.steps):
    lr = (
        3e-3
        * min(1.0, (step + 1) / 50)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / a.steps)))
    )
    for g in opt.param_groups:
        g["lr"] = lr
    picks = rng.choice(len(train_segs), size=B, p=lengths / lengths.sum())
    offsets = [int(rng.integers(0, max(1, lengths[q] - S + 1))) for q in picks]
    ids, labels, mask = T._batch(corpus, train_segs, picks, offsets, S, C)
    CUR["ids"] = ids
    h = model.hidden(ids)
    kl, known, unknown, _ = heads(h)
    u = torch.from_numpy(rng.random(B)).float()
    mk = (u < a.p_known).float()[:, None, None]
    mb = ((u >= a.p_known) & (u < a.p_known + a.p_bottle)).float()[:, None, None]
    mf = 1 - mk - mb
    z = mf * h + mb * (known + unknown) + mk * known
    logits = z @ model.tok_emb.weight.T
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss = lm
    if a.aux:
        lk = known @ model.tok_emb.weight.T
        loss = loss + a.aux * F.cross_entropy(
            lk[:, :-1].reshape(-1, lk.shape[-1]), targets.reshape(-1)
        )
    m = mask.unsqueeze(-1).float()
    target = (labels > 0).float()  # overlap labels
    bce = F.binary_cross_entropy_with_logits(kl, target, reduction="none", pos_weight=pw)
    concept = (bce * m).sum() / (m.sum() * C).clamp_min(1)
    loss = loss + a.cw * concept
    if a.unk_detach:
        target = (h - known).detach()
        loss = loss + (((unknown - target) ** 2) * m).sum() / ((target**2) * m).sum().clamp_min(
            1e-8
        )
    if a.res_w:
        res = h - known - unknown
        loss = loss + a.res_w * ((res**2) * m).sum() / ((h.detach() ** 2) * m).sum().clamp_min(1e-8)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 50 == 0:
        print(
            step,
            round(float(lm), 3),
            round(float(concept), 4),
            f"{time.time() - t0:.0f}s",
            flush=True,
        )

# evaluation
model.eval()
segs = [(d, s, min(s + S, e)) for d, st, e in held_segs for s in range(st, e, S)]
tot, n, scores, labs = 0.0, 0, [], []
shares = np.zeros(3)
with torch.inference_mode():
    for i in range(0, len(segs), B):
        part = segs[i : i + B]
        ids, lab, mask = T._batch(corpus, part, list(range(len(part))), [0] * len(part), S, C)
        CUR["ids"] = ids
        h = model.hidden(ids)
        kl, known, unknown, _ = heads(h)
        logits = h @ model.tok_emb.weight.T
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        lm = F.cross_entropy(logits[:, :-1].reshape(-1, 4096), targets.reshape(-1), reduction="sum")
        tot += float(lm)
        n += int((targets != -100).sum())
        scores.append(torch.sigmoid(kl)[mask].numpy())
        labs.append(lab[mask].numpy())
        wy = model.tok_emb.weight[ids[:, 1:]]  # (B, T-1, D)
        res = h - known - unknown
        parts = [(x[:, :-1] * wy).sum(-1) for x in (known, unknown, res)]  # (B, T-1)
        valid = mask[:, 1:]
        # per 64-token chunk: sum, abs
        for b in range(len(part)):
            L = int(valid[b].sum())
            for c0 in range(0, L, 64):
                shares += [abs(float(pp[b, c0 : min(c0 + 64, L)].sum())) for pp in parts]
sc, y = np.concatenate(scores), np.concatenate(labs) > 0  # overlap labels, as recorded
au = {}
for c, name in enumerate(cs.names):
    if y[:, c].sum() >= 50:
        au[name] = T.auroc(sc[:, c], y[:, c])
fr = shares / shares.sum()
print(
    json.dumps(
        {
            "args": vars(a),
            "lm": tot / n,
            "known": fr[0],
            "unknown": fr[1],
            "residual": fr[2],
            "auroc_min": min(au.values()),
            "auroc_mean": float(np.mean(list(au.values()))),
            "n_au": len(au),
            "below": {k: round(v, 3) for k, v in au.items() if v < 0.9},
            "time": time.time() - t0,
        }
    )
)
