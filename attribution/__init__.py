"""The science, free of Beam: corpus reading, tokenization, chunking (and, in later
stages, concept encoders, pooling, the index reader, the attributor and scans).

Imports only :mod:`tda.schemas` of tda's own packages.
"""
