"""TRAK on a subset: where dattri's TRAK and Grad-Cos rank the planted sources of the first
six reproduced facts among those sources plus 150 random chunks, with TRAK's scores sorted both ways
(the figures in docs/quality.md). Needs the output of ``make eval`` in build/eval:

    .venv/bin/python benchmarks/trak_sign_check.py [--out build/eval]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


class Subset:
    """A ChunkTable-shaped subset (``ids`` and ``texts``, what the rankers read)."""

    def __init__(self, ids: list[int], texts: list[str]) -> None:
        self.ids, self.texts = ids, texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="build/eval")
    args = parser.parse_args()
    import torch

    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality.chunks import ChunkTable
    from tda.jobs.quality.facts import make_facts
    from tda.jobs.quality.gradients import GradCosRanker, TRAKRanker
    from tda.jobs.quality.outputs import reproduced_verbatim

    torch.set_num_threads(2)
    out = Path(args.out)
    encoder = load_encoder(str(out / "model"), "cpu")
    tokenizer = encoder.load_tokenizer()
    outputs = reproduced_verbatim(encoder, tokenizer, make_facts(48, 0), limit=6)
    facts = [f for f in make_facts(48, 0) if f.index in outputs]
    table = ChunkTable(out / "root-chunks")
    text = dict(zip(table.ids, table.texts, strict=True))
    relevant = table.relevant
    keep = set().union(*[relevant(f) for f in facts]) | set(random.Random(0).sample(table.ids, 150))
    ids = [c for c in table.ids if c in keep]
    subset = Subset(ids, [text[c] for c in ids])
    trak = TRAKRanker(subset, encoder, 0, proj_dim=512)
    gradcos = GradCosRanker(subset, encoder, 0)
    for f in facts:
        output = outputs[f.index]
        p, o = trak._encode(f.verbatim_prompt), trak._encode(output)
        scores = trak.attributor.attribute(trak._loader([trak._pack(p + o, len(p))]))[:, 0]
        good = relevant(f)

        def first(order: list[int], good=good) -> int:
            return next(rank for rank, i in enumerate(order, start=1) if ids[i] in good)

        ranked = gradcos.rank_output(f.verbatim_prompt, output, len(ids))
        print(
            f"fact {f.index}: TRAK rank {first(torch.argsort(-scores, stable=True).tolist())} "
            f"(scores ascending: {first(torch.argsort(scores, stable=True).tolist())}), "
            f"Grad-Cos rank {next(r for r, c in enumerate(ranked, start=1) if c in good)}, "
            f"of {len(ids)} chunks"
        )


if __name__ == "__main__":
    main()
