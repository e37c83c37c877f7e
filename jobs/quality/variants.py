"""Step 3 of the harness, the index variants: every tda representation under test
(:class:`Variant`: pooling, index factory or whitening, embed context, query span) and
the build roots behind them, made with the real commands (``tda chunk`` once, then ``tda
embed`` and ``tda index build`` per representation). The default variant's index is
built as ``tda index build`` builds it by default, with the span and lexical channels
beside the dense vectors; its channel rows (:data:`CHANNEL_SETS`, :func:`channel_row`)
search each channel alone, each fusion and the default fusion re-ranked. Every other
index is dense only (``--channels dense``): its rows measure the dense channel."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tda.schemas import CHANNELS, QUERY_SPANS, IndexConfig

from .commands import Tda, parallel

__all__ = [
    "CHANNEL_RERANKS",
    "CHANNEL_SETS",
    "DEFAULT_CHANNELS",
    "Variant",
    "build_roots",
    "channel_row",
    "cut_chunks",
    "default_variant",
    "make_variants",
]

# What `tda index build` builds by default, and so what `tda attribute` searches and fuses
# by default (every channel the index has).
DEFAULT_CHANNELS = ("dense", *IndexConfig(root="-").channels)
# The channel rows: every channel alone, then every fusion of two, then all three.
CHANNEL_SETS = [c for n in range(1, len(CHANNELS) + 1) for c in itertools.combinations(CHANNELS, n)]
# The re-ranks the default fusion is also attributed with (one row each).
CHANNEL_RERANKS = ("concepts", "span", "evidence")


@dataclass(frozen=True)
class Variant:
    """One tda representation under test, as product options: the dense pooling (``tda
    embed --pooling``), the index (``tda index build --whiten``, or a ``--factory`` such
    as PCA centring; None: the one chosen; a pre-transform lives in the index and applies
    to queries too), the embed context (``--window`` / ``--context``; None: the stage's
    default) and the query span (``tda attribute --query-span``). Every variant is
    attributed twice: without a re-rank and with ``--rerank concepts``."""

    name: str
    pooling: str
    factory: str | None = None
    window: int | None = None
    context: int | None = None
    query_span: str = "output"
    whiten: bool = False

    @property
    def slug(self) -> str:
        """The build root's name (variants differing only in ``query_span`` share one)."""
        index = (self.pooling, self.factory, self.whiten, self.window, self.context)
        return "".join(ch if ch.isalnum() else "-" for ch in "-".join(map(str, index)))


def make_variants(
    poolings: list[str], more: bool = True, left_context: tuple[int, int] = (128, 32)
) -> list[Variant]:
    """The tda rows: every pooling with both query spans, on the default index (each
    chunk encoded alone); with ``more``, for ``mean:hidden`` and ``mean:concepts`` also
    centred (PCA) and whitened (PCAW) indexes with both query spans, and ``mean:hidden``
    on windows with left context (``left_context`` = ``--window`` / ``--context``; the
    defaults are the embed stage's old default for a 128-token model)."""
    variants = []
    indexes = [("", None, False)]
    if more:
        indexes += [(" centred", "IDMap2,PCA{D},L2norm,Flat", False), (" whitened", None, True)]
    for p in poolings:
        for label, factory, whiten in (
            indexes if p in ("mean:hidden", "mean:concepts") else indexes[:1]
        ):
            for span in QUERY_SPANS:
                variants.append(Variant(f"tda {p}{label}, query span {span}", p, factory,
                                        query_span=span, whiten=whiten))  # fmt: skip
    if more and "mean:hidden" in poolings:
        window, context = left_context
        for span in QUERY_SPANS:
            name = (
                f"tda mean:hidden left context (--window {window} --context {context}), "
                f"query span {span}"
            )
            variants.append(
                Variant(name, "mean:hidden", window=window, context=context, query_span=span)
            )
    return variants


def channel_row(channels: tuple[str, ...] = DEFAULT_CHANNELS, rerank: str = "none") -> str:
    """The name of the channel row searching ``channels`` (on the default variant's
    index, query span output) with ``rerank``: ``tda channels dense+span+lexical
    (default)``, ``tda channels span``, ``tda channels dense+span+lexical, --rerank
    concepts``."""
    name = "tda channels " + "+".join(channels)
    if rerank != "none":
        return f"{name}, --rerank {rerank}"
    return name + (" (default)" if tuple(channels) == DEFAULT_CHANNELS else "")


def default_variant(variants: list[Variant]) -> Variant:
    """The variant that ``tda embed`` / ``tda index build`` / ``tda attribute`` build and
    query with their defaults (its index also holds the default channels); refused when
    none of ``variants`` is."""
    from tda.schemas import DEFAULT_QUERY_SPAN, Pooling

    pooling, whiten = Pooling().name, IndexConfig(root="-").whiten
    for v in variants:
        if (v.pooling, v.factory, v.whiten, v.window, v.context, v.query_span) == (
            pooling, None, whiten, None, None, DEFAULT_QUERY_SPAN
        ):  # fmt: skip
            return v
    raise ValueError(f"no variant is the default ({pooling}, query span {DEFAULT_QUERY_SPAN})")


def cut_chunks(tda: Tda, corpus: Path, model: Path, out: Path) -> Path:
    """``tda chunk`` of ``corpus`` with ``model``'s tokenizer into OUT/root-chunks, cut once
    for every variant; returns that root."""
    base = out / "root-chunks"
    tda.run("chunk", str(corpus), "--out", str(base), "--tokenizer", str(model), "--overwrite")
    return base


def build_roots(
    tda: Tda, base: Path, model: Path, out: Path, variants: list[Variant], jobs: int,
    channels: Variant | None = None,
) -> dict[Variant, Path]:  # fmt: skip
    """One build root per representation, OUT/root-{slug}: ``base``'s chunks embedded once
    per (pooling, window, context), then indexed per variant (``jobs`` commands at once);
    variants differing only in their query span share a root. ``channels``' root gets
    ``tda index build``'s default channels, every other root the dense channel only.
    Returns variant -> root."""
    roots = {v: out / f"root-{v.slug}" for v in variants}
    channel_root = roots[channels] if channels is not None else None
    first: dict[Path, Variant] = {}  # root -> the variant that builds it
    for v in variants:
        first.setdefault(roots[v], v)
    embedded: dict[tuple, Path] = {}  # (pooling, window, context) -> root that embeds it
    for root, v in first.items():
        embedded.setdefault((v.pooling, v.window, v.context), root)

    def embed(root: Path, v: Variant) -> None:
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(base / "chunks", root / "chunks")
        extra = [] if v.window is None else ["--window", str(v.window)]
        extra += [] if v.context is None else ["--context", str(v.context)]
        tda.run("embed", str(root), "--model", str(model), "--pooling", v.pooling, *extra,
                "--overwrite")  # fmt: skip

    def index(root: Path, v: Variant) -> None:
        source = embedded[(v.pooling, v.window, v.context)]
        if source != root:  # same vectors, another index: copy the embedding root's parts
            if root.exists():
                shutil.rmtree(root)
            shutil.copytree(source / "chunks", root / "chunks")
            shutil.copytree(source / "embeddings", root / "embeddings")
        dim = json.loads((root / "embeddings" / "manifest.json").read_text())["dim"]
        extra = [] if v.factory is None else ["--factory", v.factory.format(D=dim)]
        extra += ["--whiten" if v.whiten else "--no-whiten"]
        if root != channel_root:  # the channel rows search the default index only
            extra += ["--channels", "dense"]
        tda.run("index", "build", str(root), "--overwrite", *extra)

    parallel(jobs, [lambda r=r, v=first[r]: embed(r, v) for r in embedded.values()])
    parallel(jobs, [lambda r=r, v=v: index(r, v) for r, v in first.items()])
    return roots
