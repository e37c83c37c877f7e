"""Process-level helpers of the stages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_bound_heap_sets_glibc_thresholds_once_per_process():
    # In a child: the thresholds are process-wide and must not leak into the test run.
    code = (
        "from tda.attribution.io.fs import bound_heap\n"
        "print(bound_heap(), bound_heap(), bound_heap.cache_info().misses)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True", "1"]
