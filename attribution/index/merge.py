"""The on-disk merged variant of a sharded index: ``index/merged/``, one index whose
inverted lists live in one file, tied to its parent manifest (read by
:meth:`~tda.attribution.index.reader.IndexReader.open` with ``merged=True``).
"""

from __future__ import annotations

import os

import numpy as np

from tda.attribution.index.reader import MERGED_DIR, IndexReader, IndexReadError
from tda.attribution.io.fs import build_root, is_local, sha256_file
from tda.schemas import IndexFile, MergedIndexManifest

__all__ = ["merge_index"]


def merge_index(root_url: str) -> dict:
    """Write ``index/merged/``: every shard merged into one index whose inverted lists live
    in ``merged.ivfdata`` (faiss OnDiskInvertedLists; a flat index is concatenated into
    ``merged.faiss``), then ``merged/manifest.json`` (a
    :class:`~tda.schemas.MergedIndexManifest` naming the parent manifest), last. Searches
    over it return what the shards return. Local roots only. Returns that manifest's JSON
    object."""
    import shutil
    import uuid

    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    fs, root = build_root(root_url)
    if not is_local(fs):
        raise IndexReadError("tda index merge writes next to the shards: give a local ROOT")
    reader = IndexReader.open(root_url)  # sizes and sha256 of every shard checked
    m = reader.manifest
    final = f"{root.index_dir}/{MERGED_DIR}"
    tmp = f"{root.index_dir}/_tmp-merged-{uuid.uuid4().hex}"
    os.makedirs(tmp)
    try:
        shard_paths = [f"{root.index_dir}/{s.path}" for s in m.shards]
        with open(f"{root.index_dir}/trained.faiss", "rb") as f:
            trained = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        files = ["merged.faiss"]
        try:
            faiss.extract_index_ivf(trained)
            is_ivf = True
        except RuntimeError:
            is_ivf = False
        if is_ivf:
            merge_ondisk(trained, shard_paths, f"{tmp}/merged.ivfdata")
            files.append("merged.ivfdata")
            merged = trained
        else:
            merged = trained
            for path in shard_paths:
                merged.merge_from(faiss.read_index(path), 0)
        faiss.write_index(merged, f"{tmp}/merged.faiss")
        if merged.ntotal != m.vectors:
            raise IndexReadError(f"merged {merged.ntotal} vectors, the manifest says {m.vectors}")
        record = MergedIndexManifest(
            parent_manifest_id=reader.manifest_id,
            vectors=m.vectors,
            files=tuple(IndexFile(name, *sha256_file(fs, f"{tmp}/{name}")) for name in files),
        )
        with open(f"{tmp}/manifest.json", "w") as f:
            f.write(record.to_json())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record.to_dict()
