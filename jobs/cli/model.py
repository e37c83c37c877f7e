"""The model maker's commands: ``model train`` (the builtin concept-bottleneck model),
``model info`` (a model SPEC's identity) and ``tokenizer train`` (a BPE tokenizer for the
chunk stage).

What a command prints is in :mod:`tda.jobs.render`.
"""

from __future__ import annotations

import click

from tda.schemas import TrainConfig

from .. import render
from .options import read_config, read_options, stage_type

__all__ = ["COMMANDS", "model", "tokenizer"]


@click.group()
def tokenizer() -> None:
    """Tokenizers for the chunk stage."""


@tokenizer.command("train")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", required=True, metavar="DIR", help="Directory to write tokenizer.json into.")
@click.option("--vocab-size", type=stage_type("--vocab-size"), default=8192, show_default=True)
@click.option(
    "--max-docs",
    type=stage_type("--max-docs"),
    default=None,
    help="Train on at most this many documents.",
)
@read_options
def tokenizer_train(inputs, out, vocab_size, max_docs, **kw) -> None:
    """Train a byte-level BPE tokenizer (no unknown tokens, exact offsets) on a corpus.

    Reads documents the way `tda chunk` does (unusable records are skipped and counted).
    """
    from tda.attribution.corpus.readers import Document, iter_documents, resolve_inputs
    from tda.attribution.corpus.tokenizer import load_tokenizer, train_bpe_tokenizer

    read = read_config(kw)
    files = resolve_inputs(inputs, read.format)
    stats = {"documents": 0, "skipped": 0}

    def texts():
        for f in files:
            for item in iter_documents(f, read):
                if max_docs is not None and stats["documents"] >= max_docs:
                    return
                if isinstance(item, Document):
                    stats["documents"] += 1
                    yield item.text
                else:
                    stats["skipped"] += 1

    path = train_bpe_tokenizer(texts(), vocab_size, out)
    info = load_tokenizer(out).info
    render.report_tokenizer(path, info, stats["documents"], stats["skipped"])


@click.group()
def model() -> None:
    """The builtin concept-bottleneck model: train it, inspect a model SPEC."""


@model.command("train")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--out", required=True, metavar="DIR", help="Model directory to write.")
@click.option(
    "--concepts",
    default="default",
    show_default=True,
    metavar="YAML",
    help="Concept set: name -> terms / regexes (default: the packaged set).",
)
@click.option("--steps", type=stage_type("--steps"), default=500, show_default=True)
@click.option("--d-model", type=stage_type("--d-model"), default=128, show_default=True)
@click.option("--layers", type=stage_type("--layers"), default=4, show_default=True)
@click.option("--heads", type=stage_type("--heads"), default=4, show_default=True)
@click.option(
    "--vocab-size", type=stage_type("--vocab-size"), default=TrainConfig.vocab_size,
    show_default=True, help="Vocabulary of the BPE tokenizer learned on the inputs.",
)  # fmt: skip
@click.option(
    "--tokenizer", default=None, metavar="SPEC",
    help="Train with this tokenizer (a tokenizer.json or a directory holding one, such as "
    "another builtin model's) instead of learning one on the inputs: a retraining on a "
    "pruned corpus then keeps the original model's token ids.",
)  # fmt: skip
@click.option(
    "--max-seq", type=stage_type("--max-seq"), default=256, show_default=True, help="Context limit."
)
@click.option("--batch-size", type=stage_type("--batch-size"), default=16, show_default=True)
@click.option("--lr", type=stage_type("--lr"), default=3e-3, show_default=True)
@click.option(
    "--holdout",
    type=stage_type("--holdout"),
    default=0.05,
    show_default=True,
    help="Share of every document's tokens held out for evaluation.",
)
@click.option(
    "--max-train-tokens",
    type=stage_type("--max-train-tokens"),
    default=8_000_000,
    show_default=True,
)
@click.option(
    "--known-only", type=stage_type("--known-only"), default=TrainConfig.known_only,
    show_default=True,
    help="Share of training sequences whose LM loss reads the known concepts alone.",
)  # fmt: skip
@click.option(
    "--bottleneck", type=stage_type("--bottleneck"), default=TrainConfig.bottleneck,
    show_default=True,
    help="Share of training sequences whose LM loss reads known + unknown concepts alone.",
)  # fmt: skip
@click.option(
    "--residual-weight", type=stage_type("--residual-weight"),
    default=TrainConfig.residual_weight, show_default=True,
    help="Weight of the residual's norm penalty (Steerling's epsilon).",
)  # fmt: skip
@click.option(
    "--label-spread", type=stage_type("--label-spread"), default=TrainConfig.label_spread,
    show_default=True, help="Spread each tagger label to this many tokens either side.",
)  # fmt: skip
@click.option(
    "--causal-labels/--overlap-labels", default=TrainConfig.causal_labels, show_default=True,
    help="Train the known-concept head to fire where a tagger match ends, leaving out the "
    "match's earlier tokens (a causal model has not read it yet), or on every token of it.",
)  # fmt: skip
@click.option(
    "--known-topk", type=stage_type("--known-topk"), default=TrainConfig.known_topk,
    show_default=True, help="Known concepts each token's features use (top-k of the head).",
)  # fmt: skip
@click.option(
    "--token-head/--no-token-head", default=TrainConfig.token_head, show_default=True,
    help="The known-concept head also reads the input token's embedding.",
)  # fmt: skip
@click.option(
    "--known-hidden", type=stage_type("--known-hidden"), default=TrainConfig.known_hidden,
    show_default=True,
    help="Hidden width of an MLP added to the known-concept head, over the hidden state and "
    "the input token's embedding (0: none, the linear head alone).",
)  # fmt: skip
@click.option(
    "--head-epochs", type=stage_type("--head-epochs"), default=TrainConfig.head_epochs,
    show_default=True,
    help="After training, refit the known-concept head on the frozen model's features for "
    "this many passes, then the concept vectors and the unknown head (0: no concept phase).",
)  # fmt: skip
@click.option(
    "--head-batches", type=stage_type("--head-batches"), default=TrainConfig.head_batches,
    show_default=True, help="Training batches whose features the concept phase fits on.",
)  # fmt: skip
@click.option(
    "--vector-epochs", type=stage_type("--vector-epochs"), default=TrainConfig.vector_epochs,
    show_default=True, help="Concept phase: passes fitting the concept vectors and unknown head.",
)  # fmt: skip
@click.option("--seed", type=stage_type("--seed"), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training report as JSON.")
@read_options
def model_train(
    inputs, out, concepts, steps, d_model, layers, heads, vocab_size, tokenizer, max_seq,
    batch_size, lr,
    holdout, max_train_tokens, known_only, bottleneck, residual_weight, label_spread,
    causal_labels, known_topk, token_head, known_hidden, head_epochs, head_batches,
    vector_epochs, seed, as_json, **kw,
) -> None:  # fmt: skip
    """Train a BPE tokenizer (or take --tokenizer's) and a builtin concept-bottleneck LM
    on a corpus (CPU).

    Known concepts are supervised by the concept set's taggers; the model directory
    (safetensors weights, config.json, tokenizer.json, concepts.yaml, training.json) is a
    model SPEC for `tda embed --model` and a tokenizer SPEC for `tda chunk --tokenizer`.
    """
    given = click.get_current_context().get_parameter_source("vocab_size")
    if tokenizer and given is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --vocab-size or --tokenizer, not both: the tokenizer "
                               "has its own vocabulary")  # fmt: skip
    config = TrainConfig(
        inputs=tuple(inputs),
        out=out,
        concepts=concepts,
        read=read_config(kw),
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        d_model=d_model,
        n_layers=layers,
        n_heads=heads,
        max_seq=max_seq,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        holdout=holdout,
        max_train_tokens=max_train_tokens,
        known_only=known_only,
        bottleneck=bottleneck,
        residual_weight=residual_weight,
        label_spread=label_spread,
        causal_labels=causal_labels,
        known_topk=known_topk,
        token_head=token_head,
        known_hidden=known_hidden,
        head_epochs=head_epochs,
        head_batches=head_batches,
        vector_epochs=vector_epochs,
        seed=seed,
    )
    result = _train_with_progress(config, quiet=as_json)
    render.report_model_train(result, out, as_json)


def _train_with_progress(config, quiet: bool):
    """Train the builtin model (``config``: a TrainConfig) with a progress bar on stderr
    (none when ``quiet``); returns the training result."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tda.attribution.encoders.builtin.train import train_builtin

    console = Console(stderr=True, quiet=quiet)
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} (LM {task.fields[lm]:.3f})"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("train", total=config.steps, loss=float("nan"), lm=float("nan"))

        def progress(p) -> None:
            bar.update(task, completed=p.step, loss=p.loss, lm=p.lm_loss)

        return train_builtin(config, progress, log=console.print)


@model.command("info")
@click.argument("spec", metavar="SPEC")
@click.option("--json", "as_json", is_flag=True)
def model_info(spec, as_json) -> None:
    """Show a model SPEC's identity: encoder, fingerprint, sizes, known concepts."""
    from tda.attribution.encoders import load_encoder

    render.report_model_info(load_encoder(spec, device="cpu"), as_json)


COMMANDS = (model, tokenizer)
