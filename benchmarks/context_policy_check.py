"""How much the query's context matters: MRR over the facts the model reproduces after
their verbatim prompt, when each output is searched as ``tda attribute`` does (the output
conditioned on the prompt tokens that fit the index's window), encoded alone, or as
prompt + output with no prompt, on the default index (each chunk encoded alone) and on
windows with left context. Needs ``make eval``'s build/eval (figures in
docs/quality.md):

    .venv/bin/python benchmarks/context_policy_check.py [--out build/eval]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="build/eval")
    args = parser.parse_args()
    import torch

    from tda.attribution.attributor import Attributor
    from tda.attribution.encoders import load_encoder
    from tda.jobs.quality.chunks import ChunkTable
    from tda.jobs.quality.facts import make_facts
    from tda.jobs.quality.outputs import reproduced_verbatim

    torch.set_num_threads(2)
    out = Path(args.out)
    facts = make_facts(48, 0)
    encoder = load_encoder(str(out / "model"), "cpu")
    tokenizer = encoder.load_tokenizer()
    table = ChunkTable(out / "root-chunks")
    relevant = table.relevant
    outputs = reproduced_verbatim(encoder, tokenizer, facts)  # scored as in the table
    facts = [f for f in facts if f.index in outputs]
    queries = {
        "output given its prompt (tda attribute, the table)": lambda f: (
            f.verbatim_prompt, outputs[f.index]
        ),
        "output encoded alone": lambda f: ("", outputs[f.index]),
        "prompt + output encoded alone": lambda f: ("", f.verbatim_prompt + outputs[f.index]),
    }  # fmt: skip
    roots = {
        "default (each chunk encoded alone)": "root-mean-hidden-None-False-None-None",
        "left context (--window 128 --context 32)": "root-mean-hidden-None-False-128-32",
    }
    for label, root in roots.items():
        attributor = Attributor.from_root(str(out / root), device="cpu")
        for name, query in queries.items():
            reciprocal = []
            for f in facts:
                prompt, output = query(f)
                report = attributor.attribute(prompt, output, k=10, input_attribution="none")
                hits = [h.chunk_id for h in report.chunks[0].hits]
                good = relevant(f)
                reciprocal.append(next((1 / r for r, c in enumerate(hits, 1) if c in good), 0.0))
            print(
                f"{label}; query {name}: MRR {sum(reciprocal) / len(reciprocal):.3f} "
                f"({len(reciprocal)} facts)"
            )


if __name__ == "__main__":
    main()
