"""Steerling-8B's exact size and forward FLOPs per token, counted from the steerling
package's own model class built on torch's meta device (no weights, no memory, no GPU).

    .venv/bin/python benchmarks/steerling_size.py [--window 1024]  # build/steerling_size.json

FLOPs per token of the embed stage's forward = 2 x (weights a token is multiplied by:
every parameter except the token embedding table, a lookup, and the LM head tied to it,
which tda skips; the concept heads' concept tables are multiplied) + attention scores and
values, 2 x 2 x layers x d_model x (mean attended keys = window / 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=100_281)
    args = parser.parse_args()
    import torch
    from steerling.configs.causal_diffusion import CausalDiffusionConfig
    from steerling.configs.concept import ConceptConfig
    from steerling.models.interpretable.interpretable_causal_diffusion import (
        InterpretableCausalDiffusionLM,
    )

    model_cfg = CausalDiffusionConfig(interpretable=True)  # the defaults are the 8B shape
    concept_cfg = ConceptConfig()
    with torch.device("meta"):
        model = InterpretableCausalDiffusionLM(model_cfg, concept_cfg, vocab_size=args.vocab)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    matmul = total - args.vocab * model_cfg.n_embd
    attention = 2 * 2 * model_cfg.n_layers * model_cfg.n_embd * (args.window / 2)
    flops = 2 * matmul + attention
    report = {
        "n_layers": model_cfg.n_layers,
        "n_embd": model_cfg.n_embd,
        "n_known": concept_cfg.n_concepts,
        "n_unknown": concept_cfg.n_unknown_concepts,
        "parameters": total,
        "multiplied_parameters": matmul,
        "window": args.window,
        "forward_flops_per_token": round(flops),
    }
    out = REPO / "build" / "steerling_size.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
