"""``python -m tda.jobs.quality [options]``: the quality harness (what ``make eval`` runs)."""

from . import main

# "quality.py": the usage line `python -m tda.jobs.quality --help` has always printed (the
# harness was one module of that name); argparse would otherwise show "__main__.py".
main(prog="quality.py")
