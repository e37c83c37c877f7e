"""Validate the counterfactual check (``tda check``, :mod:`tda.attribution.check`)
against the real thing: the retraining counterfactual of a finished ``make eval`` run.

``python -m tda.jobs.quality.check_validation --eval build/eval`` reuses that run's
files (nothing is retrained): its model, its default build root (the one with the lexical
channel), its chunk table and the models it retrained without each method's top-k chunks
per reproduced fact (OUT/counterfactual-N, named by their prune lists' reason). Then:

1. The reproduced facts (greedy after the verbatim prompt, as the harness scores them)
   and each method's top-k per fact, ranked again as the harness ranked them (the
   default tda option, tda's span channel, BM25, exact span; the true sources for the
   oracle), and the share of each fact's set that method's prune list holds (100%: the
   retrained model removed these chunks; less when a ranker changed since the run).
   A run whose models are builtin format 1 is read through converted copies and a
   rebuilt default root (:func:`format_2`, :func:`rebuild_root`), held to the facts and
   chunk ids the run recorded.
2. Retraining: per fact, the change of the answer's log-probability after its verbatim
   prompt in each retrained model against the original.
3. The check: per fact, :func:`~tda.attribution.check.check_chunks` on the answer
   tokens with each method's top-k as the attributed set (random draws matched to the
   set's lengths, as ``tda check`` draws them).
4. Per method: Spearman correlation over facts between the check's drop and the
   retraining's drop; the methods ranked by mean drop both ways; and the share of facts
   where the oracle's sources are ``supported`` (their drop above every random draw).
5. ``--retrain-seeds S``: each set retrained S - 1 more times with the next seeds
   (:func:`seeded`), the reference then their mean drop, and how the seeds agree with
   each other per fact; and always the check of each retraining's whole removal
   (:func:`union_drops`: every fact's set at once, as the retraining removed them).
6. ``--retrain-each N``: the first N facts each retrained without its own true sources
   alone (:func:`singles`), the counterfactual a check of one output stands for, and the
   check of the oracle's set against those drops (``single`` in the JSON). Every
   retraining keeps the original model's tokenizer (:mod:`.counterfactual`).

Prints a Markdown table (docs/quality.md publishes it) and writes OUT/check_validation.json.

``--build N`` first makes a reduced harness run in OUT (:func:`build`): N facts, no
passages or paraphrases, ``--steps`` training steps, the default index only, and the
retrainings without the default tda option's top-k, BM25's, the true sources and random
chunks (``make eval``'s counterfactual less its exact-span and best-option rows): the
same pieces as the harness, a quarter of its cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


def _slots(out: Path) -> dict[str, Path]:
    """Prune-list reason (the counterfactual row's name) -> its retrained model."""
    import pyarrow.parquet as pq

    slots = {}
    for cf in sorted(out.glob("counterfactual-*")):
        reasons = pq.read_table(cf / "prune.parquet", columns=["reason"])["reason"]
        if len(reasons) and (cf / "model").exists():
            slots[reasons[0].as_py()] = cf / "model"
    return slots


def _pruned(out: Path, reason: str) -> set[int]:
    import pyarrow.parquet as pq

    for cf in sorted(out.glob("counterfactual-*")):
        table = pq.read_table(cf / "prune.parquet", columns=["reason", "chunk_id"])
        if len(table) and table["reason"][0].as_py() == reason:
            return set(table["chunk_id"].to_pylist())
    return set()


def _recipe(model: Path) -> dict:
    """A trained model's recipe, from its ``training.json``: the :class:`~.commands.Training`
    fields (steps, seed, lr, max_seq, tokenizer; None where it does not record one)."""
    s = json.loads((model / "training.json").read_text())["settings"]
    return {key: s.get(key) for key in ("steps", "seed", "lr", "max_seq", "tokenizer")}


def seeded(slots: dict[str, Path], rows: list[str], seeds: int, jobs: int) -> dict[str, list[Path]]:
    """Per row (a counterfactual's name), its retrained model (``slots[row]``) and
    ``seeds - 1`` more, each trained on the same pruned corpus with that model's recipe
    (its ``training.json``: steps, lr, max_seq, tokenizer) and the next seed: OUT/counterfactual-N/
    model-seed-S (one already there, trained with that seed and recipe, is kept) ->
    {row: [its models, first the run's]}. ``jobs`` trainings at once."""
    from .commands import Tda, Training, parallel

    models, todo = {}, []
    for row in rows:
        first = slots[row]
        base = _recipe(first)
        models[row] = [first]
        for s in range(1, seeds):
            want = {**base, "seed": base["seed"] + s}
            path = first.parent / f"model-seed-{want['seed']}"
            models[row].append(path)
            if (path / "training.json").exists() and _recipe(path) == want:
                continue
            shutil.rmtree(path, ignore_errors=True)  # another recipe's, or an unfinished one
            corpus = first.parent / "corpus"
            if not corpus.is_dir():
                raise SystemExit(f"{corpus} is gone: the retraining of {row!r} cannot be "
                                 f"repeated with another seed")  # fmt: skip
            tda = Tda(1, Training(**want))
            todo.append(lambda t=tda, c=corpus, m=path: t.train(c, m))
    if todo:
        print(f"training {len(todo)} more retrainings (other seeds), {jobs} at once", flush=True)
        parallel(jobs, todo)
    return models


def singles(out: Path, sets: dict, root: Path, table, jobs: int) -> dict:
    """Per query of ``sets`` (query -> the chunk ids of its fact's true sources), the
    original model's recipe (OUT/model's ``training.json``, its tokenizer kept) retrained
    on OUT/corpus less those chunks alone: OUT/single-F/model for fact index F (one already
    there with that recipe and that prune list is kept) -> {query: model}. ``jobs``
    trainings at once. Removing one fact at a time is the counterfactual a check of one
    output stands for; the harness's retrainings remove every fact's set at once, and a
    fact then also loses what the others' removed chunks taught (other places that begin
    or end like its own)."""
    import pyarrow.parquet as pq

    from .commands import Tda, Training, parallel
    from .counterfactual import ORACLE, retrain_without

    want = {**_recipe(out / "model"), "tokenizer": str(out / "model")}
    training = Training(**want)
    models, todo = {}, []
    for q, ids in sets.items():
        cf = out / f"single-{q.fact.index}"
        models[q] = cf / "model"
        if (cf / "model" / "training.json").exists() and (cf / "prune.parquet").exists():
            pruned = pq.read_table(cf / "prune.parquet", columns=["chunk_id"])["chunk_id"]
            if _recipe(cf / "model") == want and set(pruned.to_pylist()) == set(ids):
                continue
        name = f"{ORACLE} of {q.fact.entity}"
        todo.append(lambda c=cf, n=name, r=set(ids): retrain_without(
            Tda(1, training), table, root, out / "corpus", c, n, r))  # fmt: skip
    if todo:
        print(f"training {len(todo)} single-fact retrainings, {jobs} at once", flush=True)
        parallel(jobs, todo)
    return models


def answer_sequence(tokenizer, q) -> tuple:
    """A query's verbatim prompt and its fact's answer as the check reads them -> (ids (T,)
    int64 numpy array, the answer's token span's start, its end)."""
    import numpy as np

    p = tokenizer.encode_batch([q.prompt])[0].ids.tolist()
    a = tokenizer.encode_batch([" " + q.fact.place])[0].ids.tolist()
    return np.array(p + a, dtype=np.int64), len(p), len(p) + len(a)


def union_drops(encoder, tokenizer, queries, removed: set[int], texts, settings) -> list[float]:
    """What the retraining did, done by the check: ``removed`` (a row's whole prune list,
    every fact's set at once) unlearned from the original weights by plain normalised
    ascent (``settings``' steps, lr and scope; the unique method's basis for a whole
    prune list would not fit in memory), then every query's answer log-probability drop
    (no control: with answers of equal token counts it shifts every fact alike).
    ``texts``: chunk id -> text."""
    import numpy as np

    from tda.attribution.check import ModelCopy, unlearn

    window = encoder.info.max_window
    model = ModelCopy(encoder, settings.scope)
    answers = [answer_sequence(tokenizer, q) for q in queries]

    def log_probs() -> list[float]:
        return [float(model.chunk_log_probs(ids, [(s, e)])[0]) for ids, s, e in answers]

    before = log_probs()
    chunks = [np.asarray(e.ids[:window], dtype=np.int64)
              for e in tokenizer.encode_batch([texts(c) for c in sorted(removed)])]  # fmt: skip
    unlearn(model, chunks, settings.steps, settings.lr)
    return [float(b - a) for b, a in zip(before, log_probs(), strict=True)]


def format_2(path: Path, scratch: Path) -> Path:
    """``path`` when it holds a builtin model of the current format. A model of format 1
    (a ``make eval`` run from before format 2) -> a copy in ``scratch`` with format 2's
    one new piece of state, the pooling statistics, set to their untrained identity
    (mean 0, scale 1: pooling exactly as format 1 pooled) and every weight the file's.
    :func:`main` holds such a copy to the facts the run says its model reproduced."""
    import hashlib

    config = json.loads((path / "config.json").read_text())
    if config.get("format_version") != 1:
        return path
    import torch
    from safetensors.torch import load, save

    state = load((path / "model.safetensors").read_bytes())
    d = config["model"]["d_model"]
    state["pool_mean"], state["pool_scale"] = torch.zeros(d), torch.ones(d)
    copy = scratch / "-".join(path.parts[-2:])
    copy.mkdir(parents=True, exist_ok=True)
    converted = save(state)
    config = {**config, "format_version": 2,
              "weights_fingerprint": "sha256:" + hashlib.sha256(converted).hexdigest()}  # fmt: skip
    (copy / "model.safetensors").write_bytes(converted)
    (copy / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "concepts.yaml"):
        if (path / name).exists():
            (copy / name).write_bytes((path / name).read_bytes())
    return copy


def load_model(path: Path, scratch: Path):
    """The builtin encoder in ``path`` (:func:`format_2`) on the CPU."""
    from tda.attribution.encoders import load_encoder

    return load_encoder(str(format_2(path, scratch)), "cpu")


def rebuild_root(out: Path, model: Path, scratch: Path) -> tuple[Path, Path]:
    """The run's default build root cut and indexed again in ``scratch`` with ``model``
    (the run's, in the current format): (chunks root, default root). For a run whose
    roots an older tda wrote (manifests without sha256); the chunk ids must come out as
    the run's, which the retrainings' prune lists name (checked)."""
    from .chunks import ChunkTable
    from .commands import Tda, Training
    from .variants import build_roots, cut_chunks, default_variant, make_variants

    tda = Tda(1, Training(0, 0, 0.0, 128))  # runs no training
    base = cut_chunks(tda, out / "corpus", model, scratch)
    dv = default_variant(make_variants(["mean:hidden"], False))
    root = build_roots(tda, base, model, scratch, [dv], 1, channels=dv)[dv]
    old, new = ChunkTable(out / "root-chunks"), ChunkTable(base)
    if (old.ids, old.texts) != (new.ids, new.texts):
        raise SystemExit(f"{out}'s chunks cut again do not match its root-chunks")
    return base, root


def build(out: Path, facts_n: int, steps: int, lr: float, k: int, seed: int, jobs: int) -> None:
    """A reduced ``make eval`` in ``out`` (the module docstring): corpus, model, the
    default build root, and the counterfactual retrainings; OUT/quality.json records what
    the validation reads back (seed, facts)."""
    from tda.attribution.encoders import load_encoder
    from tda.schemas import DEFAULT_QUERY_SPAN

    from .chunks import ChunkTable
    from .commands import Tda, Training
    from .counterfactual import run_counterfactual
    from .facts import build_corpus, make_facts
    from .outputs import Query, reproduced_verbatim
    from .rankers import BM25Ranker, TdaRanker
    from .variants import build_roots, cut_chunks, default_variant, make_variants

    out.mkdir(parents=True, exist_ok=True)
    facts = make_facts(facts_n, seed)
    corpus = build_corpus(out, facts, 3, seed, 0, 3, ())
    tda = Tda(1, Training(steps, seed, lr, 128))
    tda.train(corpus, out / "model")
    encoder = load_encoder(str(out / "model"), "cpu")
    answers = reproduced_verbatim(encoder, encoder.load_tokenizer(), facts)
    print(f"facts reproduced: {len(answers)} of {len(facts)}", flush=True)
    if len(answers) < 3:
        raise SystemExit(f"only {len(answers)} facts reproduced: train longer (--train-steps)")
    verbatim = [Query("verbatim", f, f.verbatim_prompt, answers[f.index])
                for f in facts if f.index in answers]  # fmt: skip
    variants = make_variants(["mean:hidden"], False)
    dv = default_variant(variants)
    base = cut_chunks(tda, corpus, out / "model", out)
    root = build_roots(tda, base, out / "model", out, [dv], jobs, channels=dv)[dv]
    table = ChunkTable(base)
    from tda.attribution.attributor import Attributor

    attributor = Attributor.from_root(str(root), device="cpu")
    ranked = {
        "tda channels dense+span+lexical (default)": TdaRanker(
            attributor, DEFAULT_QUERY_SPAN, "none", 100, None),
        "BM25": BM25Ranker(table),
    }  # fmt: skip
    removed = {name: {q: r.rank_output(q.prompt, q.output, k) for q in verbatim}
               for name, r in ranked.items()}  # fmt: skip
    rows = run_counterfactual(tda, k, seed, jobs, verbatim, removed, table, encoder, root,
                              corpus, out, out / "model")  # fmt: skip
    summary = {"seed": seed, "facts": facts_n, "steps": steps, "lr": lr, "reduced": True,
               "counterfactual": {r.name: r.to_json() for r in rows}}  # fmt: skip
    (out / "quality.json").write_text(json.dumps(summary, indent=2) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    from tda.schemas import CheckSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", default="build/eval", help="A finished make eval's OUT.")
    parser.add_argument("--k", type=int, default=10, help="The harness's --counterfactual-k.")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--check-method", default="ascent", help="The check's --method.")
    parser.add_argument(
        "--control",
        type=int,
        default=CheckSettings().control,
        metavar="N",
        help="The check's --control (0: none).",
    )
    parser.add_argument("--scope", default="all", help="The check's --scope.")
    parser.add_argument("--limit", type=int, default=None, help="Check only the first N facts.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--build",
        type=int,
        default=None,
        metavar="FACTS",
        help="First make a reduced harness run of FACTS facts in --eval.",
    )
    parser.add_argument(
        "--retrain-seeds",
        type=int,
        default=1,
        metavar="S",
        help="Retrain each method's set S times (the run's seed and the next S-1) and "
        "compare the check with the mean drop (1: the run's retrainings only).",
    )
    parser.add_argument(
        "--retrain-each",
        type=int,
        default=0,
        metavar="N",
        help="Also retrain without each of the first N facts' true sources alone "
        "(OUT/single-F, one training per fact, kept for reruns) and compare the check of "
        "the oracle's set with those drops.",
    )
    parser.add_argument("--train-steps", type=int, default=800, help="With --build.")
    parser.add_argument("--train-lr", type=float, default=0.003, help="With --build.")
    parser.add_argument("--jobs", type=int, default=2, help="With --build: trainings at once.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the validation (see the module) and return what it writes."""
    args = parse(argv)
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from tda.attribution.attributor import LEXICAL_CONTEXT, Attributor
    from tda.attribution.check import CheckTarget, check_chunks
    from tda.schemas import CheckSettings

    from .chunks import ChunkTable
    from .counterfactual import ORACLE
    from .facts import make_facts
    from .outputs import Query, answer_log_prob, reproduced_verbatim
    from .rankers import BM25Ranker, ExactSpanRanker, TdaRanker

    torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.eval).resolve()
    if args.build is not None:
        build(out, args.build, args.train_steps, args.train_lr, args.k, 0, args.jobs)
    quality = json.loads((out / "quality.json").read_text())
    scratch = Path(tempfile.mkdtemp(prefix="tda-check-validation-"))
    encoder = load_model(out / "model", scratch)
    tokenizer = encoder.load_tokenizer()
    facts = make_facts(quality["facts"], quality["seed"])
    answers = reproduced_verbatim(encoder, tokenizer, facts)
    recorded = quality.get("reproduced", {}).get("verbatim")
    if recorded is not None and recorded != len(answers):
        raise SystemExit(f"the model in {out} reproduces {len(answers)} facts, the run "
                         f"recorded {recorded}: it does not compute what it did then")  # fmt: skip
    queries = [Query("verbatim", f, f.verbatim_prompt, answers[f.index])
               for f in facts if f.index in answers][: args.limit]  # fmt: skip
    base = out / "root-chunks"
    root = next(p for p in sorted(out.glob("root-*")) if (p / "index" / "lexical").exists())
    if format_2(out / "model", scratch) != out / "model":
        base, root = rebuild_root(out, format_2(out / "model", scratch), scratch)
    table = ChunkTable(base)
    attributor = Attributor.from_root(str(root), model=encoder.info.spec, device="cpu")
    k = args.k
    default = "tda channels dense+span+lexical (default)"
    rankers = {
        default: TdaRanker(attributor, "output", "none", 100, None),
        "tda channels span": TdaRanker(attributor, "output", "none", 100, ("span",)),
        "BM25": BM25Ranker(table),
        "exact span": ExactSpanRanker(table),
    }
    slots = _slots(out)
    sets = {name: {q: r.rank_output(q.prompt, q.output, k)[:k] for q in queries}
            for name, r in rankers.items() if f"{name} top-{k}" in slots}  # fmt: skip
    sets[ORACLE] = {q: sorted(table.relevant(q.fact)) for q in queries}
    rows = {name if name == ORACLE else f"{name} top-{k}": ranked for name, ranked in sets.items()}
    # The share of each fact's set that the retraining removed (1 when the ranking today is
    # the run's; below 1 when a ranker changed since, so the two compare other sets).
    in_prune_list = {}
    for row, ranked in rows.items():
        removed = _pruned(out, row)
        shares = [len(set(ids) & removed) / max(len(ids), 1) for ids in ranked.values()]
        in_prune_list[row] = round(float(np.mean(shares)), 4)
    missing = [row for row in rows if row not in slots]
    if missing:
        raise SystemExit(f"{out} has no retrained model for {missing[0]!r}: run make eval")

    def log_probs(enc) -> list[float]:
        return [answer_log_prob(enc, q.prompt, q.fact.place) for q in queries]

    original = np.array(log_probs(encoder))
    # per row, per seed: the drops (before - after); the reference is their mean
    models = seeded(slots, list(rows), max(1, args.retrain_seeds), args.jobs)
    by_seed = {row: [original - np.array(log_probs(load_model(m, scratch))) for m in models[row]]
               for row in rows}  # fmt: skip
    retrain = {row: np.mean(drops, axis=0) for row, drops in by_seed.items()}
    # Whether every retraining of a row kept the original's tokenizer (the harness's
    # counterfactual does since it passes --tokenizer; a run from before did not, and its
    # per-fact drops then follow how many tokens the new tokenizer cuts each answer into).
    vocabulary = (out / "model" / "tokenizer.json").read_bytes()
    same_tokenizer = {row: all((m / "tokenizer.json").read_bytes() == vocabulary
                               for m in models[row]) for row in rows}  # fmt: skip
    # one fact's true sources removed at a time (--retrain-each): each fact's own model
    single_queries = queries[: max(0, args.retrain_each)]
    single_models = singles(out, {q: sets[ORACLE][q] for q in single_queries}, root, table,
                            args.jobs) if single_queries else {}  # fmt: skip
    single = np.array([original[i] - answer_log_prob(load_model(single_models[q], scratch),
                                                      q.prompt, q.fact.place)
                       for i, q in enumerate(single_queries)])  # fmt: skip
    random_row = next(name for name in slots if name.startswith("random "))
    retrain_random = original - np.array(log_probs(load_model(slots[random_row], scratch)))

    settings = CheckSettings(steps=args.steps, lr=args.lr, draws=args.draws, seed=quality["seed"],
                             scope=args.scope, method=args.check_method,
                             control=args.control)  # fmt: skip
    cheap = {row: [] for row in rows}
    cheap_random, separated, seconds, oracle_z = [], [], [], []
    for q in queries:
        ids, s, e = answer_sequence(tokenizer, q)
        lexical = tokenizer.decode(ids[max(0, s - LEXICAL_CONTEXT) : e].tolist())
        targets = [CheckTarget(s, e, tuple(ranked[q]), lexical) for ranked in rows.values()]
        checks, done = check_chunks(encoder, attributor.reader, ids, targets, settings)
        seconds.append(done.seconds)
        for row, check in zip(rows, checks, strict=True):
            cheap[row].append(check.attributed_drop)
        oracle = checks[list(rows).index(ORACLE)]
        separated.append(oracle.verdict == "supported")
        oracle_z.append(oracle.z)
        cheap_random.append(checks[0].random_mean)
        print(f"{q.fact.entity}: oracle {oracle.attributed_drop:.3f} vs random "
              f"{oracle.random_mean:.3f} ± {oracle.random_std:.3f} ({oracle.verdict})",
              flush=True)  # fmt: skip

    def text(cid: int) -> str:
        return table.texts[table.position[cid]]

    union = {row: union_drops(encoder, tokenizer, queries, _pruned(out, row), text, settings)
             for row in rows}  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)  # converted models, rebuilt root

    def rho(x, y) -> float | None:
        value = spearmanr(x, y).statistic
        return None if np.isnan(value) else round(float(value), 3)

    methods = []
    for row in rows:
        methods.append({
            "method": row, "facts": len(queries), "in_prune_list": in_prune_list[row],
            "same_tokenizer": same_tokenizer[row],
            "check_mean_drop": round(float(np.mean(cheap[row])), 4),
            "retrain_mean_drop": round(float(np.mean(retrain[row])), 4),
            "spearman_per_fact": rho(cheap[row], retrain[row]),
            "retrainings": len(by_seed[row]),
            # the check (plain ascent) of the whole removal the retraining made
            "spearman_union": rho(union[row], retrain[row]),
            "union_drops": [round(float(x), 4) for x in union[row]],
            # with several: the check against the run's one retraining, and how the
            # retrainings (seeds) agree with each other per fact, mean over pairs
            **({"spearman_vs_one_retraining": rho(cheap[row], by_seed[row][0]),
                "seed_agreement": round(float(np.mean(
                    [rho(a, b) or 0.0 for i, a in enumerate(by_seed[row])
                     for b in by_seed[row][i + 1:]])), 3)}
               if len(by_seed[row]) > 1 else {}),
            # per fact, in "per_fact_entities" order: what the two measured
            "check_drops": [round(float(x), 4) for x in cheap[row]],
            "retrain_drops": [round(float(x), 4) for x in retrain[row]],
            "retrain_drops_per_seed": [[round(float(x), 4) for x in d] for d in by_seed[row]],
        })  # fmt: skip
    methods.append({
        "method": f"random (check: {args.draws} draws of k; retraining: {random_row})",
        "facts": len(queries), "in_prune_list": None,
        "check_mean_drop": round(float(np.mean(cheap_random)), 4),
        "retrain_mean_drop": round(float(np.mean(retrain_random)), 4),
        "spearman_per_fact": rho(cheap_random, retrain_random),
    })  # fmt: skip
    # How the rows' retrainings agree with each other: each removed every source of every
    # fact, but also other chunks for the other facts (distractors, template sentences), so
    # they are different counterfactuals; with --retrain-seeds the same removal retrained
    # with other seeds agrees with itself far better (seed_agreement).
    named = [row for row in rows if in_prune_list[row] >= 0.99]
    mean_retrain = np.mean([retrain[row] for row in named], axis=0) if named else None
    agreement = {
        row: rho(retrain[row], np.mean([retrain[o] for o in named if o != row], axis=0))
        for row in named
        if len(named) > 1
    }
    for m in methods[:-1]:
        if mean_retrain is not None:
            m["spearman_vs_mean_retrain"] = rho(cheap[m["method"]], mean_retrain)
    result = {
        "eval": str(out), "k": k, "settings": {"steps": args.steps, "lr": args.lr,
                                                "draws": args.draws, "seed": quality["seed"],
                                                "scope": args.scope,
                                                "method": args.check_method,
                                                "control": args.control},
        "retrain_seeds": max(1, args.retrain_seeds),
        "facts": len(queries), "methods": methods,
        "per_fact_entities": [q.fact.entity for q in queries],
        "answer_log_probs": [round(float(x), 4) for x in original],
        "method_ranking_spearman": rho([m["check_mean_drop"] for m in methods],
                                       [m["retrain_mean_drop"] for m in methods]),
        "oracle_separated": round(sum(separated) / max(len(separated), 1), 4),
        # per fact: the oracle's z against the random draws (None: the draws did not vary)
        "oracle_z": oracle_z,
        # per row: Spearman of its retraining's per-fact drops against the mean of the
        # other rows' retrainings (rows that removed every fact's sources)
        "retrain_self_agreement": agreement,
        "check_seconds_per_fact": round(float(np.mean(seconds)), 2),
        "seconds": round(time.time() - started),
    }  # fmt: skip
    if len(single):
        n = len(single)
        oracle_row = list(rows).index(ORACLE)
        result["single"] = {
            "facts": n,
            "retrain_drops": [round(float(x), 4) for x in single],
            "retrain_mean_drop": round(float(np.mean(single)), 4),
            # the check of the oracle's set (per fact: that fact's sources) against them
            "spearman_check": rho(cheap[ORACLE][:n], single),
            # and the harness's retraining without every fact's sources at once
            "spearman_union_retrain": rho(retrain[ORACLE][:n], single),
            "check_mean_drop": round(float(np.mean(cheap[ORACLE][:n])), 4),
            "union_retrain_mean_drop": round(float(np.mean(retrain[ORACLE][:n])), 4),
            "row": methods[oracle_row]["method"],
        }
    (out / "check_validation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def _table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines after a blank one; none without rows."""
    if not rows:
        return []
    cells = ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *cells]


def markdown(result: dict) -> str:
    """The validation as docs/quality.md's table."""
    lines = [
        "| method (retrained without its top-k per fact) | set in the prune list | check: "
        "mean drop | retraining: mean drop | Spearman per fact |",
        "|---|---|---|---|---|",
    ]
    for m in result["methods"]:
        rho = "n/a" if m["spearman_per_fact"] is None else f"{m['spearman_per_fact']:.3f}"
        share = "-" if m["in_prune_list"] is None else f"{m['in_prune_list']:.0%}"
        lines.append(f"| {m['method']} | {share} | {m['check_mean_drop']:.3f} | "
                     f"{m['retrain_mean_drop']:.3f} | {rho} |")  # fmt: skip
    methods = result["methods"]
    lines += _table(
        ["method", "Spearman per fact: the check of the fact's set (above)",
         "the check (plain ascent) of the whole removal the retraining made"],
        [[m["method"], m["spearman_per_fact"], m["spearman_union"]]
         for m in methods if "spearman_union" in m],
    )  # fmt: skip
    if result.get("retrain_seeds", 1) > 1:
        lines += _table(
            ["method", "retrainings", "check vs the run's one retraining",
             "retrainings vs each other (mean over pairs)"],
            [[m["method"], m["retrainings"], m["spearman_vs_one_retraining"],
              m["seed_agreement"]] for m in methods if "seed_agreement" in m],
        )  # fmt: skip
    agreement = result.get("retrain_self_agreement") or {}
    lines += _table(
        ["method", "check vs the mean retraining of every row",
         "its retraining vs the other rows'"],
        [[m["method"], m.get("spearman_vs_mean_retrain"), agreement[m["method"]]]
         for m in methods if m["method"] in agreement],
    )  # fmt: skip
    single = result.get("single")
    if single:
        lines += _table(
            [f"one fact's true sources removed at a time ({single['facts']} facts, one "
             f"retraining each)", "mean drop", "Spearman per fact with those retrainings"],
            [["the check (the oracle's set)", single["check_mean_drop"],
              single["spearman_check"]],
             ["the retraining without every fact's sources at once",
              single["union_retrain_mean_drop"], single["spearman_union_retrain"]],
             ["the retrainings themselves", single["retrain_mean_drop"], 1.0]],
        )  # fmt: skip
    relearned = [m["method"] for m in methods if m.get("same_tokenizer") is False]
    if relearned:
        lines += ["", f"Retrained with a tokenizer learned again on the pruned corpus (not "
                      f"the original's): {', '.join(relearned)}. Their per-fact drops follow "
                      f"how many tokens that tokenizer cuts each answer into."]  # fmt: skip
    lines += [
        "",
        f"Facts: {result['facts']}; methods ranked by mean drop, Spearman: "
        f"{result['method_ranking_spearman']}; oracle's sources above every random draw: "
        f"{result['oracle_separated']:.0%}; check: {result['check_seconds_per_fact']} s per "
        f"fact ({len(result['methods']) - 1} sets + BM25 + random draws).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
