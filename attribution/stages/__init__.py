"""Each Beam-free stage of the build on one runtime (:mod:`.base`): plan on the driver,
process one unit (an input file or a shard) on a worker, finish on the driver (manifest
written last); the runtime owns completion markers, ``--resume``, counters and per-unit
read / compute / write timings. ``chunk``, ``embed`` and ``index`` are the stages.
"""
