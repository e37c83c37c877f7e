"""``python -m tda.jobs.cli``: the ``tda`` console script (the demo and the quality
harness run the command line this way)."""

import sys

from . import main

sys.exit(main())
