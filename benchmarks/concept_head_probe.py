"""The builtin model's known-concept head and its AUROC target (docs/model.md, "The AUROC
target and label visibility"): probes of a trained model's frozen features, and a head-only refit.

    .venv/bin/python benchmarks/concept_head_probe.py probe MODEL_DIR CORPUS [--windows 1500]
    .venv/bin/python benchmarks/concept_head_probe.py refit MODEL_DIR CORPUS [--batches 64]
    .venv/bin/python benchmarks/concept_head_probe.py phase MODEL_DIR CORPUS [--hidden 256]
        [--head-batches 128] [--head-epochs 10] [--vector-epochs 4] [--causal-labels] [--out DIR]

MODEL_DIR is a ``tda model train`` output, CORPUS the input it was trained on (the same
settings are read back from its training.json, so the held-out split is the same).

``probe`` prints, as text lines:

1. label visibility: per concept, the share of tagger positives that are not the last token
   of their match (the taggers label every token overlapping a match, so a causal model
   has not yet seen the rest of the match there);
2. the trained head's held-out AUROC (as ``tda model train`` computes it), and again with
   the not-yet-visible positives left out;
3. heads refitted on frozen features of a sample of training windows (class-weighted BCE,
   Adam): linear on h, linear on [h, input token embedding], an MLP of 256 on the same,
   each with its held-out AUROC, all positives and span-final ones only.

Per-concept AUROCs and the visibility table also go to ``--json``, when given.

``refit`` adds a linear token head, refits it and the known head on frozen features of
``--batches`` training batches for ``--epochs`` epochs (the trunk, the concept vectors and
the unknown head stay as trained), then runs the full held-out evaluation of ``tda model
train`` (AUROC, logit shares, LM loss) and prints it as JSON: what a refit phase after
training would give.

``phase`` applies ``tda model train``'s concept phase
(:mod:`tda.attribution.encoders.builtin.refit`) to a trained model with the given
settings (``--hidden N`` first gives a model trained without one an MLP known head of
width N) and prints the same held-out evaluation: how the phase's settings in
docs/model.md were chosen, without retraining the LM.

Each takes about 2 to 10 minutes on 2 cores for the demo corpus.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tda.attribution.corpus.readers import iter_documents, resolve_inputs
from tda.attribution.encoders.builtin import train as T
from tda.attribution.encoders.builtin.concepts import FINAL, load_concept_set
from tda.attribution.encoders.builtin.model import BuiltinConfig, ConceptLM, load_builtin
from tda.schemas import DeadLetter, ReadOptions, TrainConfig


def train_config(model_dir: str, corpus: str) -> TrainConfig:
    """The TrainConfig the model at ``model_dir`` was trained with, on ``corpus``: its
    held-out split, crop length and reader settings (from training.json)."""
    settings = json.loads((Path(model_dir) / "training.json").read_text())["settings"]
    keep = ("holdout", "max_seq", "batch_size", "seed", "max_train_tokens", "concepts")
    return TrainConfig(
        inputs=(corpus,),
        out="unused",
        read=ReadOptions(**settings["read"]),
        **{k: settings[k] for k in keep},
    )


def read_with_span_ends(cfg: TrainConfig, concept_set, tokenizer):
    """Documents -> (corpus as train.py labels it, per document a (n, C) uint8 array that
    is 1 where a token holds the last character of a match of the concept)."""
    texts = []
    for f in resolve_inputs(cfg.inputs, cfg.read.format):
        for item in iter_documents(f, cfg.read):
            if not isinstance(item, DeadLetter):
                texts.append(item.text)
    ids, labels, final = [], [], []
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        for text, e in zip(batch, tokenizer.encode_batch(batch), strict=True):
            if e.n_tokens == 0:
                continue
            starts = np.asarray(e.char_starts(range(e.n_tokens)), dtype=np.int64)
            ids.append(e.ids.astype(np.int64))
            tagged = concept_set.label_tokens(text, starts)
            labels.append((tagged > 0).astype(np.uint8))
            final.append((tagged == FINAL).astype(np.uint8))
    return T._Corpus(ids, labels, len(texts), {}), final


def features(model, corpus, final, segments, n_concepts: int, seq: int):
    """(doc, start, end) windows -> per real token: h, x0 (input token embedding), labels,
    span-final flags, the trained head's weights."""
    out = {k: [] for k in ("h", "x0", "y", "fin", "w")}
    with torch.inference_mode():
        for i in range(0, len(segments), 16):
            part = segments[i : i + 16]
            rows = list(range(len(part)))
            ids, lab, mask = T._batch(corpus, part, rows, [0] * len(part), seq, n_concepts)
            fin = np.zeros(lab.shape, dtype=np.uint8)
            for b, (d, s, e) in enumerate(part):
                fin[b, : e - s] = final[d][s:e]
            x0 = model.tok_emb(ids)
            h = model.hidden(None, x0)
            logits = model.heads(h, x0)[0]
            out["h"].append(h[mask])
            out["x0"].append(x0[mask])
            out["y"].append(lab[mask].numpy())
            out["fin"].append(fin[mask.numpy()])
            out["w"].append(torch.sigmoid(logits)[mask].numpy())
    return {
        k: (np.concatenate(v) if k in ("y", "fin", "w") else torch.cat(v).float())
        for k, v in out.items()
    }


def aurocs(names, scores, y, fin=None) -> dict[str, float]:
    """Per concept with >= AUROC_MIN_POSITIVES held-out positives; with ``fin``, positives
    whose match is not complete at their token are left out."""
    out = {}
    for c, name in enumerate(names):
        if y[:, c].sum() < T.AUROC_MIN_POSITIVES:
            continue
        lab = y[:, c].astype(bool)
        keep = slice(None) if fin is None else ~lab | (fin[:, c] > 0)
        value = T.auroc(scores[keep, c], lab[keep])
        if value is not None:
            out[name] = value
    return out


def summary(tag: str, au: dict[str, float]) -> dict[str, float]:
    v = np.array(list(au.values()))
    low = sorted(au.items(), key=lambda kv: kv[1])[:4]
    print(
        f"{tag:44s} mean {v.mean():.3f} min {v.min():.3f} below 0.9 "
        f"{int((v < 0.9).sum())}/{len(v)}  " + " ".join(f"{k}={x:.3f}" for k, x in low),
        flush=True,
    )
    return au


def fit_head(x_train, y_train, x_test, n_concepts: int, epochs: int, hidden: int = 0):
    """Class-weighted BCE head (linear, or one GELU layer of ``hidden``) on standardised
    features, Adam at 3e-3, batches of 8192 -> its logits on ``x_test``."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    y = torch.from_numpy(y_train.astype(np.float32))
    pos = y_train.sum(0)
    ratio = np.sqrt((len(y_train) - pos) / np.maximum(pos, 1))
    pos_weight = torch.from_numpy(np.clip(ratio, 1, 30).astype(np.float32))
    nn = torch.nn
    net = (
        nn.Sequential(nn.Linear(x_train.shape[1], hidden), nn.GELU(), nn.Linear(hidden, n_concepts))
        if hidden
        else nn.Linear(x_train.shape[1], n_concepts)
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(x_train), 8192):
            b = perm[i : i + 8192]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                net(x_train[b]), y[b], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return net(x_test).numpy()


def probe(args) -> None:
    t0 = time.time()
    torch.manual_seed(0)
    encoder = load_builtin("builtin", args.model, device="cpu")
    model = encoder.model.eval()
    cfg = train_config(args.model, args.corpus)
    cs = load_concept_set(cfg.concepts)
    C = len(cs)
    corpus, final = read_with_span_ends(cfg, cs, encoder.load_tokenizer())
    tokens = sum(map(len, corpus.ids))
    print(f"read {corpus.documents} documents, {tokens:,} tokens in {time.time() - t0:.0f}s")
    train_segs, held_segs = T._segments(corpus, cfg.holdout, min_len=16)

    Y, F = np.concatenate(corpus.labels), np.concatenate(final)
    visibility = {}
    for c, name in enumerate(cs.names):
        pos = int(Y[:, c].sum())
        visibility[name] = (pos, 1 - float((F[:, c] & Y[:, c]).sum()) / max(pos, 1))

    seq = cfg.max_seq
    held = [(d, s, min(s + seq, e)) for d, st, e in held_segs for s in range(st, e, seq)]
    te = features(model, corpus, final, held, C, seq)
    # training windows: documents drawn by length, a random crop of each (as training does)
    rng = np.random.default_rng(1)
    lengths = np.array([e - s for _, s, e in train_segs], dtype=np.float64)
    windows = []
    for p in rng.choice(len(train_segs), size=args.windows, p=lengths / lengths.sum()):
        d, s, e = train_segs[p]
        off = int(rng.integers(0, max(1, e - s - seq + 1)))
        windows.append((d, s + off, min(s + off + seq, e)))
    tr = features(model, corpus, final, windows, C, seq)
    print(f"features: train {len(tr['y']):,}, held-out {len(te['y']):,} tokens; "
          f"{time.time() - t0:.0f}s")  # fmt: skip

    print("\n== label visibility (all tokens) ==")
    worst = sorted(visibility.items(), key=lambda kv: -kv[1][1])[:12]
    print("share of positives not at their match's last token (top 12): "
          + ", ".join(f"{k} {v[1]:.2f} (n={v[0]})" for k, v in worst))  # fmt: skip
    total = sum(v[0] for v in visibility.values())
    share = sum(v[0] * v[1] for v in visibility.values()) / total
    print(f"overall: {share:.3f} of {total:,} positives")

    print("\n== held-out AUROC ==")
    results = {"trained head": summary("trained head", aurocs(cs.names, te["w"], te["y"]))}
    summary("   span-final positives only", aurocs(cs.names, te["w"], te["y"], te["fin"]))

    def cat(f, keys):
        return torch.cat([f[k] for k in keys], 1)

    token = ("h", "x0")
    probes = [
        ("refit linear on h", tr["h"], te["h"], 0),
        ("refit linear on [h, x0]", cat(tr, token), cat(te, token), 0),
        ("refit MLP(256) on [h, x0]", cat(tr, token), cat(te, token), 256),
    ]
    for tag, x_train, x_test, hidden in probes:
        t1 = time.time()
        scores = fit_head(x_train, tr["y"], x_test, C, args.epochs, hidden)
        au = aurocs(cs.names, scores, te["y"])
        results[tag] = summary(f"{tag} ({time.time() - t1:.0f}s)", au)
        summary("   span-final positives only", aurocs(cs.names, scores, te["y"], te["fin"]))
    if args.json:
        rounded = {k: {n: round(v, 4) for n, v in d.items()} for k, d in results.items()}
        vis = {k: [v[0], round(v[1], 4)] for k, v in visibility.items()}
        Path(args.json).write_text(json.dumps(rounded | {"visibility": vis}, indent=1))
    print(f"done in {time.time() - t0:.0f}s")


def refit(args) -> None:
    from safetensors.torch import load_file

    t0 = time.time()
    torch.manual_seed(0)
    cfg = train_config(args.model, args.corpus)
    cs = load_concept_set(cfg.concepts)
    C = len(cs)
    corpus, _, tokenizer = T._read_corpus(cfg, cs, print)
    config = json.loads((Path(args.model) / "config.json").read_text())
    if tokenizer.info.fingerprint != config["tokenizer_fingerprint"]:
        raise SystemExit("the corpus does not rebuild the model's tokenizer: not its corpus")
    model = ConceptLM(BuiltinConfig(**(config["model"] | {"token_head": True})))
    weights = load_file(str(Path(args.model) / "model.safetensors"))
    model.load_state_dict(weights, strict=False)  # the token head is new
    torch.nn.init.zeros_(model.known_token.weight)
    torch.nn.init.zeros_(model.known_token.bias)
    train_segs, held_segs = T._segments(corpus, cfg.holdout, min_len=16)
    draw = T._crop_sampler(corpus, train_segs, cfg.batch_size, cfg.max_seq, C)
    pos_weight = T._pos_weight(corpus, train_segs, C)
    rng = np.random.default_rng(cfg.seed + 1)
    model.eval()
    hs, xs, ys = [], [], []
    with torch.inference_mode():
        for _ in range(args.batches):
            ids, lab, mask = draw(rng)
            x0 = model.tok_emb(ids)
            h = model.hidden(None, x0)
            hs.append(h[mask].clone())
            xs.append(x0[mask].clone())
            ys.append(lab[mask].clone())
    H, X, Y = torch.cat(hs), torch.cat(xs), torch.cat(ys)
    print(f"features {len(Y):,} tokens, {time.time() - t0:.0f}s", flush=True)
    params = [*model.known_pred.parameters(), *model.known_token.parameters()]
    opt = torch.optim.Adam(params, lr=args.lr)
    g = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(Y), generator=g)
        for i in range(0, len(Y), 8192):
            b = perm[i : i + 8192]
            logits = model.known_pred(H[b]) + model.known_token(X[b])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, Y[b], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch} loss {float(loss.detach()):.4f}", flush=True)
    report, _, _ = T._evaluate(model, corpus, held_segs, cfg, cs, tokenizer)
    scored = {
        k: v
        for k, v in report["concept_auroc"].items()
        if report["concept_positives"][k] >= T.AUROC_MIN_POSITIVES
    }
    shares = {k: report["logit_share"][k] for k in ("known", "unknown", "residual")}
    print(json.dumps({
        "lm_loss": report["lm_loss"],
        "share": shares,
        "auroc_mean": report["concept_auroc_mean"],
        "auroc_mean_scored": float(np.mean(list(scored.values()))),
        "auroc_min": report["auroc_min"],
        "n_scored": len(scored),
        "below": report["auroc_below_0.9"],
    }, indent=1))  # fmt: skip
    print(f"done in {time.time() - t0:.0f}s")


def phase(args) -> None:
    from dataclasses import replace

    from safetensors.torch import load_file

    from tda.attribution.encoders.builtin.refit import concept_phase

    t0 = time.time()
    cfg = train_config(args.model, args.corpus)
    cs = load_concept_set(cfg.concepts)
    corpus, tokenizer_json, tokenizer = T._read_corpus(cfg, cs, print)
    config = json.loads((Path(args.model) / "config.json").read_text())
    if tokenizer.info.fingerprint != config["tokenizer_fingerprint"]:
        raise SystemExit("the corpus does not rebuild the model's tokenizer: not its corpus")
    hidden = args.hidden if args.hidden is not None else config["model"]["known_hidden"]
    model = ConceptLM(BuiltinConfig(**(config["model"] | {"known_hidden": hidden})))
    model.load_state_dict(load_file(str(Path(args.model) / "model.safetensors")), strict=False)
    train_segs, held_segs = T._segments(corpus, cfg.holdout, min_len=16)
    cfg = replace(cfg, known_topk=model.cfg.known_topk, head_epochs=args.head_epochs,
                  head_batches=args.head_batches, vector_epochs=args.vector_epochs,
                  causal_labels=args.causal_labels)  # fmt: skip
    t1 = time.time()
    model.eval()
    draw = T._crop_sampler(corpus, train_segs, cfg.batch_size, cfg.max_seq, len(cs))
    pos_weight = T._pos_weight(corpus, train_segs, len(cs), cfg.causal_labels)
    stats = concept_phase(model, draw, cfg, pos_weight, print)
    print(f"phase {time.time() - t1:.0f}s", flush=True)
    report, calibration, unknown_labels = T._evaluate(model, corpus, held_segs, cfg, cs, tokenizer)
    if args.out:  # the phased model, to embed and scan with
        from tda.attribution.encoders.builtin.model import save_builtin

        training = json.loads((Path(args.model) / "training.json").read_text())
        training |= {
            "heldout": report,
            "concept_phase": stats,
            "settings": training["settings"] | {"causal_labels": cfg.causal_labels},
        }
        save_builtin(args.out, model, cs, tokenizer_json, tokenizer.info.fingerprint, training,
                     calibration, unknown_labels)  # fmt: skip
    scored = [v for k, v in report["concept_auroc"].items()
              if report["concept_positives"][k] >= T.AUROC_MIN_POSITIVES]  # fmt: skip
    print(json.dumps({
        "phase": stats, "lm_loss": report["lm_loss"],
        "share": {k: report["logit_share"][k] for k in ("known", "unknown", "residual")},
        "auroc_mean": report["concept_auroc_mean"], "auroc_mean_scored": float(np.mean(scored)),
        "auroc_min": report["auroc_min"], "below": report["auroc_below_0.9"],
        "overlap_labels": {"auroc_mean": report["concept_auroc_overlap_mean"],
                           "auroc_min": report["auroc_overlap_min"],
                           "below": report["auroc_overlap_below_0.9"]},
    }, indent=1))  # fmt: skip
    print(f"done in {time.time() - t0:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("probe", "label visibility and refitted-head probes of frozen features"),
        ("refit", "refit a linear [h, token] head on the frozen model, then evaluate"),
        ("phase", "apply tda model train's concept phase to a trained model, then evaluate"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", metavar="MODEL_DIR", help="A tda model train output.")
        p.add_argument("corpus", metavar="CORPUS", help="The input the model was trained on.")
        if name == "probe":
            p.add_argument("--windows", type=int, default=1500, help="Training windows.")
            p.add_argument("--epochs", type=int, default=30)
            p.add_argument("--json", metavar="PATH", help="Write per-concept AUROCs here.")
        elif name == "refit":
            p.add_argument("--batches", type=int, default=64, help="Training batches.")
            p.add_argument("--epochs", type=int, default=20)
            p.add_argument("--lr", type=float, default=3e-3)
        else:
            p.add_argument("--hidden", type=int, default=None, help="Add an MLP known head.")
            p.add_argument("--head-batches", type=int, default=128)
            p.add_argument("--head-epochs", type=int, default=10)
            p.add_argument("--vector-epochs", type=int, default=4)
            p.add_argument(
                "--causal-labels",
                action="store_true",
                help="Fit the head on causal labels (tda model train --causal-labels).",
            )
            p.add_argument("--out", metavar="DIR", help="Also save the phased model here.")
    args = parser.parse_args()
    torch.set_num_threads(2)
    {"probe": probe, "refit": refit, "phase": phase}[args.command](args)


if __name__ == "__main__":
    main()
