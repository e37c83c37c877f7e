"""tda serve on a root that gets damaged while it runs: /health says so (503, the file
named), and a request that reads the damaged file is a 500 naming it, not wrong text."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient


@pytest.fixture()
def damaged(tmp_path, planted_root):
    """A copy of the planted root (its model beside it, as the index names it) and a
    client of a server started on the copy while it was intact."""
    from tda.jobs.serve import create_app

    base = tmp_path / "copy"
    shutil.copytree(planted_root.parent, base)
    root = base / planted_root.name
    # the index names its model by absolute path: the copy keeps using the original one
    client = TestClient(create_app(str(root), device="cpu"), base_url="http://127.0.0.1")
    return root, client


def test_health_turns_unhealthy_when_a_chunk_part_is_truncated(damaged, monkeypatch):
    from tda.jobs import health

    root, client = damaged
    first = client.get("/health")
    assert first.status_code == 200 and first.json()["status"] == "ok"
    part = sorted((root / "chunks").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-100])
    monkeypatch.setattr(health.RootHealth, "stale", lambda self: True)  # no 5 s wait
    after = client.get("/health")
    assert after.status_code == 503
    body = after.json()
    assert body["status"] == "unhealthy"
    assert any(part.name in line for line in body["problems"])


def test_a_flipped_bit_in_a_chunk_part_is_a_500_naming_the_file(tmp_path, planted_root):
    """Damaged before the server starts (a part the server has not read yet): the first
    request that reads it is refused with the file's name, and /health says unhealthy
    once the reader has refused it."""
    import pyarrow.parquet as pq

    from tda.jobs.serve import create_app

    base = tmp_path / "copy"
    shutil.copytree(planted_root.parent, base)
    root = base / planted_root.name
    # the last part: the server's warm-up reads a chunk of the first one (a damaged
    # part it reads at start makes `tda serve` refuse to start, with the same line)
    part = sorted((root / "chunks").glob("part-*.parquet"))[-1]
    chunk_id = pq.read_table(part, columns=["chunk_id"])["chunk_id"][0].as_py()
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    app = create_app(str(root), device="cpu")
    # as a real server answers: the exception handler's response, not a re-raise
    client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    got = client.get(f"/api/chunks/{chunk_id}")
    assert got.status_code == 500
    assert part.name in got.json()["error"] and "sha256" in got.json()["error"]
