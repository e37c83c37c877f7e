"""What every benchmark report records about the machine its figures come from."""

from __future__ import annotations

import os
import platform
import sys


def machine(**versions) -> dict:
    """Cores, platform and Python, plus the library versions / settings given."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **versions,
    }
