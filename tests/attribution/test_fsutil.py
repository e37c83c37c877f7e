"""Process-level and file helpers of the stages (attribution/io/fs.py)."""

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


def test_one_way_to_hash_a_file(tmp_path):
    """sha256_file (any filesystem), local_sha256 and HashingWriter agree with hashlib."""
    import hashlib

    import fsspec

    from tda.attribution.io.fs import local_sha256, sha256_file, write_hashed

    data = bytes(range(256)) * 20_000  # 5 MB: more than one 4 MiB block
    path = tmp_path / "blob.bin"
    fs = fsspec.filesystem("file")
    written = write_hashed(fs, str(path), lambda write: write(data))
    expected = hashlib.sha256(data).hexdigest()
    assert written == sha256_file(fs, str(path)) == (expected, len(data))
    assert local_sha256(str(path)) == expected
