"""The builtin encoder: a small Steerling-shaped concept-bottleneck causal LM
(:mod:`.model`), its CPU trainer (:mod:`.train`) and the concept taggers that supervise
its named concepts (:mod:`.concepts`).
"""
