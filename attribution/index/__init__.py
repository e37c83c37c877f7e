"""The retrieval index: FAISS factory choice and shard filling (:mod:`.build`), the
sharded reader with exact top-k merge and chunk lookup (:mod:`.reader`), and the
on-disk merged variant (:mod:`.merge`).
"""
