"""File systems and the build root: fsspec helpers, atomic and hashed writes, Parquet
part writers, run records, human sizes.
"""
