"""Beam PTransforms and DoFns that distribute :mod:`tda.attribution` over workers.

Imports :mod:`tda.schemas` and :mod:`tda.attribution`, never :mod:`tda.jobs`.
"""
