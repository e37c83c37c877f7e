"""Each Beam-free stage of the build: plan on the driver, process one unit (an input
file or a shard) on a worker, finish on the driver (manifest written last).
"""
