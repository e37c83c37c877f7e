"""``tda serve`` under hostile requests, on real uvicorn servers on loopback (issue 20):
oversized bodies (declared and chunked), 500,000 keys, deep nesting, huge validation
errors, out-of-range integers, a full model queue, and ``/health`` latency while a slow
attribution and a 7 MB body are in flight. Each HTTP case runs a few times in a bounded
loop and checks that the server still answers. Figures: benchmarks/bench_serve_faults.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tda.jobs.asgi_limits import (
    MAX_JSON_DEPTH,
    MAX_JSON_MEMBERS,
    MAX_REQUEST_BYTES,
    BodyLimits,
    json_shape_problem,
)
from tda.jobs.serve import ECHO_CHARS
from tda.schemas.config import ConfigError
from tda.schemas.request import REQUEST_RANGES

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

ROUNDS = 3  # each HTTP case, this many times in a row
BIG_LIMIT = 16 << 20  # the second server's --max-request-bytes: the key bound answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(app) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture(scope="module")
def servers(planted_root):
    """Two servers on one index: the defaults (1 MiB bodies, 16 pending model requests),
    and one taking 16 MiB bodies with room for one model request only."""
    from tda.jobs.serve import create_app

    started = [
        _start(create_app(str(planted_root), device="cpu")),
        _start(
            create_app(str(planted_root), device="cpu", max_request_bytes=BIG_LIMIT, max_pending=1)
        ),
    ]
    yield [base for base, _, _ in started]
    for _, server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(servers) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def roomy(servers) -> str:
    return servers[1]


def _raw(base: str, head: bytes, chunks=(), timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """Send a request's head and body pieces over a plain socket (the body may stop short:
    the answer must not wait for it) -> (status, lower-cased headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        for piece in chunks:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed: read what it said
        data = b""
        while b"\r\n\r\n" not in data:
            data += _recv(sock)
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(headers.get("content-length", 0))
        while len(rest) < length:
            more = _recv(sock)
            assert more, "connection closed mid-body"
            rest += more
    return int(lines[0].split()[1]), headers, rest


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def _head(method: str, path: str, **headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _healthy(base: str) -> None:
    r = httpx.get(f"{base}/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def _post_json(base: str, body: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{base}/api/attribute",
        content=body,
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def _unknown_keys(n: int) -> bytes:
    """An attribution body with ``n`` unknown keys (500,000: 6.9 MB)."""
    return json.dumps({"prompt": "a", "output": "b", **{f"k{i}": 0 for i in range(n)}}).encode()


# -- the body limit -------------------------------------------------------------------


def test_declared_oversized_body_is_refused_before_it_is_sent(server):
    """Content-Length 100 MB and no body at all: a 413 naming the flag comes back at once,
    so the server read nothing."""
    for _ in range(ROUNDS):
        head = _head(
            "POST", "/api/attribute", content_type="application/json", content_length=10**8
        )
        start = time.perf_counter()
        status, headers, body = _raw(server, head)
        assert time.perf_counter() - start < 5
        assert status == 413 and headers["connection"] == "close"
        error = json.loads(body)
        assert "--max-request-bytes" in error["error"] and "100000000 bytes" in error["error"]
        assert error["detail"] == {"max_request_bytes": MAX_REQUEST_BYTES}
    _healthy(server)


def test_chunked_oversized_body_is_refused_as_it_streams(server):
    """A chunked body that never ends: the 413 comes once 1 MiB has arrived, without the
    terminating chunk (the server does not wait for the rest)."""
    pieces = [_chunk(b"x" * 65536)] * (MAX_REQUEST_BYTES // 65536 + 2)  # no final 0-chunk
    for _ in range(ROUNDS):
        head = _head(
            "POST", "/api/attribute", content_type="application/json", transfer_encoding="chunked"
        )
        status, _, body = _raw(server, head, pieces)
        assert status == 413, body
        assert f"over the {MAX_REQUEST_BYTES}-byte limit" in json.loads(body)["error"]
    _healthy(server)


def test_chunked_body_within_the_limit_reaches_the_endpoint_intact(server):
    """The middleware buffers and replays a body: sent in three chunks, split inside a
    string, it is the same request FastAPI validates (a 200 report for this prompt)."""
    body = json.dumps({"prompt": "The for statement", "output": " loops.", "k": 3}).encode()
    pieces = [_chunk(body[:7]), _chunk(body[7:30]), _chunk(body[30:]), b"0\r\n\r\n"]
    head = _head(
        "POST", "/api/attribute", content_type="application/json", transfer_encoding="chunked"
    )
    status, _, answer = _raw(server, head, pieces, timeout=120)
    assert status == 200, answer
    report = json.loads(answer)
    assert report["prompt"] == "The for statement" and report["chunks"]
    assert len(report["chunks"][0]["hits"]) == 3


# -- keys, nesting, error size --------------------------------------------------------


def test_500k_keys_get_a_small_413_at_once(server, roomy):
    """The issue's body (500,000 unknown keys; once 5.1 s and a 34 MB answer): over the
    default 1 MiB it is refused by size; where 16 MiB are allowed, by the key bound,
    before any parse, with a small answer."""
    body = _unknown_keys(500_000)
    assert len(body) > 6_000_000
    for _ in range(ROUNDS):
        r = _post_json(server, body)
        assert r.status_code == 413 and "--max-request-bytes" in r.json()["error"]
        start = time.perf_counter()
        r = _post_json(roomy, body)
        assert time.perf_counter() - start < 5
        assert r.status_code == 413 and len(r.content) < 300
        assert r.json()["error"] == (
            f"the JSON body has more than {MAX_JSON_MEMBERS} object keys and array items in all"
        )
    _healthy(server)
    _healthy(roomy)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_naming_the_bound(server, depth):
    """Nested arrays in a field (100,000 levels would also overflow a recursive parser)."""
    nested = "[" * depth + "]" * depth
    body = f'{{"prompt": "a", "output": "b", "channels": {nested}}}'.encode()
    for _ in range(ROUNDS):
        r = _post_json(server, body)
        assert r.status_code == 413
        assert r.json()["error"] == f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
    ok = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)  # within: FastAPI's 422
    r = _post_json(server, f'{{"prompt": "a", "output": "b", "channels": {ok}}}'.encode())
    assert r.status_code == 422 and r.json()["error"].startswith("body.channels")
    _healthy(server)


def test_huge_validation_errors_are_bounded(server):
    """900 unknown keys (within the key bound): the answer lists 5 problems and counts the
    rest; an unknown key of 200,000 characters is clipped, not echoed."""
    for _ in range(ROUNDS):
        r = _post_json(server, _unknown_keys(900))
        assert r.status_code == 422
        error = r.json()
        assert error["error"] == "body.k0: Extra inputs are not permitted (and 899 more problems)"
        assert [p["where"] for p in error["detail"]] == [f"body.k{i}" for i in range(5)]
        assert len(r.content) < 1000
        long_key = "q" * 200_000
        r = _post_json(server, json.dumps({"prompt": "a", "output": "b", long_key: 1}).encode())
        assert r.status_code == 422 and len(r.content) < 1000
        where = r.json()["detail"][0]["where"]  # "body." + the key, cut
        assert where == f"body.{long_key}"[:ECHO_CHARS] + f"... ({5 + 200_000 - ECHO_CHARS} more)"
    _healthy(server)


def test_long_user_error_is_clipped(server):
    """A 400 built from the request's own words (an unknown channel of 100,000
    characters) echoes at most 800 characters of it."""
    body = json.dumps({"prompt": "a", "output": "b", "channels": ["z" * 100_000]}).encode()
    r = _post_json(server, body)
    assert r.status_code == 400 and "--channels" in r.json()["error"]
    assert len(r.content) < 1000


# -- integers and floats in range -----------------------------------------------------


def _body_cases() -> list[tuple[str, object]]:
    """(field, value) just outside each REQUEST_RANGES bound, and far outside."""
    cases = []
    for name, r in REQUEST_RANGES.items():
        step = 1 if r.kind is int else 0.5
        cases += [(name, r.lo - step), (name, r.hi + step)]
        if r.kind is int:
            cases.append((name, 2**64))
    return cases


@pytest.mark.parametrize(("field", "value"), _body_cases())
def test_body_numbers_out_of_range_get_422_naming_the_field(server, field, value):
    base = {"prompt": "a", "output": "b"} if field != "generate" else {"prompt": "a"}
    if field in ("temperature", "seed"):
        base = {"prompt": "a", "generate": 3}
    for _ in range(ROUNDS):
        r = httpx.post(f"{server}/api/attribute", json={**base, field: value}, timeout=60)
        assert r.status_code == 422, r.text
        assert r.json()["error"].startswith(f"body.{field}:")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_temperature_gets_422(server, literal):
    """Python's JSON parser reads NaN and Infinity; they are refused by name."""
    r = _post_json(server, b'{"prompt": "a", "generate": 3, "temperature": ' + literal + b"}")
    assert r.status_code == 422 and r.json()["error"] == (
        "body.temperature: Input should be a finite number"
    )


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        (f"/api/chunks/{2**63}", {}, "chunk_id"),
        (f"/api/chunks/{10**30}", {}, "chunk_id"),
        ("/api/chunks/-1", {}, "chunk_id"),
        ("/api/chunks/0", {"context": -1}, "context"),
        ("/api/chunks/0", {"context": 9}, "context"),
        ("/api/chunks/0", {"context": 2**64}, "context"),
        (f"/api/documents/{2**63}", {}, "chunk_id"),
        ("/api/documents/-1", {}, "chunk_id"),
        ("/api/search", {"text": "a", "k": 0}, "k"),
        ("/api/search", {"text": "a", "k": REQUEST_RANGES["k"].hi + 1}, "k"),
        ("/api/search", {"text": "a", "k": 2**64}, "k"),
    ],
)
def test_path_and_query_integers_out_of_range_get_422(server, path, params, field):
    for _ in range(ROUNDS):
        r = httpx.get(f"{server}{path}", params=params, timeout=60)
        assert r.status_code == 422, r.text
        assert field in r.json()["error"]
    _healthy(server)


# -- the event loop stays free --------------------------------------------------------

SLOW = {
    "prompt": "The for statement is used to iterate over the elements of a sequence.",
    "generate": 180,
    "input_attribution": "ig",
    "ig_steps": 128,
    "k": 20,
}


def _poll_health(base: str, busy: threading.Event, gap: float = 0.01) -> list[float]:
    """GET /health every ``gap`` seconds while ``busy`` is unset -> latencies (s)."""
    latencies = []
    with httpx.Client(timeout=30) as client:
        while not busy.is_set() and len(latencies) < 5000:
            start = time.perf_counter()
            assert client.get(f"{base}/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(gap)
    return latencies


def test_health_stays_fast_during_a_slow_attribution_and_a_huge_body(roomy):
    """A 180-token generation with integrated gradients runs while a 7 MB body with
    500,000 keys is refused: /health, polled every 10 ms, never takes 250 ms (it took
    5.6 s behind that body before). The benchmark measures the figures."""
    done = threading.Event()
    results = {}
    # built first: this process also runs the server, and json.dumps of 500,000 keys
    # holds the interpreter lock for a second, which is the client's time, not the server's
    huge = _unknown_keys(500_000)

    def slow() -> None:
        try:
            results["slow"] = httpx.post(f"{roomy}/api/attribute", json=SLOW, timeout=300)
            results["huge"] = _post_json(roomy, huge)
        finally:
            done.set()

    worker = threading.Thread(target=slow)
    start = time.perf_counter()
    worker.start()
    latencies = _poll_health(roomy, done)
    worker.join(timeout=300)
    wall = time.perf_counter() - start
    assert results["slow"].status_code == 200, results["slow"].text
    assert results["huge"].status_code == 413
    assert len(latencies) >= 10, f"the slow requests took only {wall:.2f} s"
    assert max(latencies) < 0.25, sorted(latencies)[-5:]


def test_full_model_queue_answers_503_with_retry_after(roomy):
    """With room for one model request, a search sent while a slow attribution holds the
    model gets 503 at once (not a wait), and succeeds once the model is free."""
    done = threading.Event()
    results = {}

    def slow() -> None:
        try:
            # a probing search may hold the one slot when this arrives: then it gets the
            # 503 itself; retry (bounded) until it holds the model
            for _ in range(200):
                results["slow"] = httpx.post(f"{roomy}/api/attribute", json=SLOW, timeout=300)
                if results["slow"].status_code != 503:
                    break
                time.sleep(0.01)
        finally:
            done.set()

    worker = threading.Thread(target=slow)
    worker.start()
    time.sleep(0.2)  # let the slow request take the slot before probing
    busy = None
    for _ in range(2000):  # bounded: until the slow request is seen holding the model
        if done.is_set():
            break
        r = httpx.get(f"{roomy}/api/search", params={"text": "loops", "k": 2}, timeout=60)
        if r.status_code == 503:
            busy = r
            break
        assert r.status_code == 200, r.text
        time.sleep(0.005)
    worker.join(timeout=300)
    assert results["slow"].status_code == 200
    assert busy is not None, "the slow attribution never held the model"
    assert busy.headers["retry-after"] == "1"
    assert busy.json()["error"].startswith("busy: 1 model requests are running or waiting")
    r = httpx.get(f"{roomy}/api/search", params={"text": "loops", "k": 2}, timeout=60)
    assert r.status_code == 200


def test_model_turns_admit_at_most_the_limit():
    """Without HTTP: two turns held (one running, one waiting), a third is refused."""
    from fastapi import HTTPException

    from tda.jobs.serve import _ModelTurns

    turns = _ModelTurns(2)
    holding, release, waiting = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with turns.turn():
            holding.set()
            release.wait(10)

    def second() -> None:
        waiting.set()
        with turns.turn():
            pass

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    assert waiting.wait(10)
    time.sleep(0.05)  # the second is now blocked on the model lock, holding a slot
    with pytest.raises(HTTPException) as refused, turns.turn():
        pass
    assert refused.value.status_code == 503
    release.set()
    for t in threads:
        t.join(10)
    with turns.turn():  # free again
        pass


# -- the scan and the settings, without a server --------------------------------------


def _shape(value, depth: int = 1) -> tuple[int, int]:
    """Reference: (members, depth) of a parsed JSON value, counted as the scan counts:
    each key, each array item, and one per empty array."""
    if isinstance(value, dict):
        inner = [_shape(v, depth + 1) for v in value.values()]
        return len(value) + sum(m for m, _ in inner), max([depth, *(d for _, d in inner)])
    if isinstance(value, list):
        inner = [_shape(v, depth + 1) for v in value]
        return max(len(value), 1) + sum(m for m, _ in inner), max([depth, *(d for _, d in inner)])
    return 0, depth - 1


def test_shape_scan_agrees_with_a_parser():
    """On random JSON (strings full of quotes, backslashes, brackets, colons and commas),
    the scan refuses exactly what a full parse counts as over the bounds."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    text = st.text(alphabet=st.sampled_from('ab"\\:,[]{}\u00e9\n '), max_size=8)
    leaves = st.none() | st.booleans() | st.integers() | text
    values = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=30,
    )

    @settings(max_examples=400, deadline=None, derandomize=True)
    @given(values, st.integers(1, 12), st.integers(1, 5), st.booleans())
    def check(value, max_members, max_depth, ascii_only):
        body = json.dumps(value, ensure_ascii=ascii_only).encode()
        members, depth = _shape(value)
        over = members > max_members or depth > max_depth
        assert (json_shape_problem(body, max_members, max_depth) is not None) == over

    check()


@pytest.mark.parametrize(
    "body",
    [
        b'"' * MAX_REQUEST_BYTES,  # half a million empty strings, not JSON
        b'"' + b'\\"' * (MAX_REQUEST_BYTES // 2),  # one unterminated string of escapes
        b" " * MAX_REQUEST_BYTES,
        b"}" * MAX_REQUEST_BYTES,
        b"[0," + b"0," * (MAX_REQUEST_BYTES // 2),
    ],
    ids=["quotes", "escapes", "spaces", "closers", "items"],
)
def test_shape_scan_of_a_hostile_megabyte_is_fast(body):
    """The scan runs on the event loop: a 1 MiB body of any shape takes milliseconds
    (asserted under 0.5 s for a loaded machine; about 5 ms measured)."""
    start = time.perf_counter()
    json_shape_problem(body, MAX_JSON_MEMBERS, MAX_JSON_DEPTH)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("size", [0, 1023, 2**30 + 1])
def test_max_request_bytes_outside_its_range_is_one_line(size):
    with pytest.raises(ConfigError, match=r"^--max-request-bytes must be in 1024\.\.1073741824"):
        BodyLimits(max_bytes=size)


def test_tda_serve_refuses_a_bad_max_request_bytes_in_one_line(planted_root):
    import subprocess
    import sys

    for value, words in (("10", "must be in 1024..1073741824, got 10"), ("1x", "not a size")):
        r = subprocess.run(
            [sys.executable, "-m", "tda.jobs.cli", "serve", str(planted_root),
             "--max-request-bytes", value],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode in (1, 2) and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3
