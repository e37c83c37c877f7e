"""Corpus in, chunks out: readers for JSONL / Parquet / text (local or fsspec URLs),
tokenizers, and the chunking that cuts token chunks with exact provenance.
"""
