"""The retrieval index: FAISS factory choice and shard filling (:mod:`.build`), the
sharded reader with exact top-k merge and chunk lookup (:mod:`.reader`), the on-disk
merged variant (:mod:`.merge`), and the channels beside the dense shards: exact spans over
token ids (:mod:`.spans`, suffix tables), BM25 over words (:mod:`.lexical`), built and
opened per shard (:mod:`.channels`), fused by reciprocal rank (:mod:`.fusion`) and
searched together (:mod:`.retrieval`).
"""
