"""``tda index retrain ROOT``: a new quantizer for a root whose added vectors drifted
from the sample its index was trained on (:mod:`.drift`), as a new generation.

1. preserve every file of the live index under ``ROOT/generations/<id>/index/`` and
   snapshot the live manifests (:mod:`.generations`);
2. run the index stage over ROOT's embeddings with the live index's settings (factory,
   metric, nprobe, channels, shard count): it trains on an even sample of all the
   vectors, the added ones included, and fills every shard (the index stage's own
   ``plan`` / ``fill`` / ``finish``);
3. the manifest's lineage names the parent; seal it, append ``ROOT/audit.jsonl``.

The result is the index a build from scratch over the same embeddings writes (tested:
the same hits).
"""

from __future__ import annotations

import hashlib

from tda.attribution.io.fs import build_root
from tda.schemas import IndexConfig
from tda.schemas.changes import RetrainConfig

from .generations import append_audit, current, preserve, seal, snapshot, who

__all__ = ["run_retrain"]


def run_retrain(config: RetrainConfig) -> dict:
    """Retrain ROOT's quantizer and refill its shards (see the module docstring); ->
    the audit entry."""
    from tda.attribution.stages.index import IndexStage

    parent = current(config.root)
    old = parent.index
    written = snapshot(config.root, parent)
    written += preserve(config.root, parent.id, [f"index/{f.path}" for f in old.files])
    stage = IndexStage()
    index_config = IndexConfig(
        root=config.root, factory=old.factory, shards=len(old.shards), nprobe=old.nprobe,
        metric=old.metric, train_sample=config.train_sample,
        threads=config.threads, channels=tuple(c.name for c in old.channels), overwrite=True,
    )  # fmt: skip
    plan = stage.plan(index_config)
    for element in stage.elements(plan):
        for _ in stage.run_element(plan, element):
            pass
    by = who(config.by)
    lineage = {
        "kind": "retrain",
        "parent_manifest_id": parent.id,
        "by": by,
        "counts": {"vectors": sum(plan.shard_counts), "train_vectors": plan.train_size},
    }
    manifest = stage.finish(plan, lineage=lineage)
    fs, broot = build_root(config.root)
    with fs.open(broot.index_manifest, "rb") as f:
        child = hashlib.sha256(f.read()).hexdigest()
    seal(config.root, parent.id, child, "retrain")
    return append_audit(
        config.root,
        {
            "change": "retrain",
            "by": by,
            "parent_manifest_id": parent.id,
            "child_manifest_id": child,
            "factory": manifest.factory,
            "train_vectors": manifest.train_vectors,
            "vectors": manifest.vectors,
            "bytes_preserved": written,
        },
    )
