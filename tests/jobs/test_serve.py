"""``tda serve`` against a real server on loopback, over an index built from real text in
the test: every endpoint, responses checked against the server's own OpenAPI
description, bad requests answered 4xx with a JSON error, a bounded load test, and the
viewer driven in headless Chromium (Debian's package, marked ``browser``)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(planted_root):
    from tda.jobs.serve import create_app

    app = create_app(str(planted_root), device="cpu")
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    return httpx.get(f"{server}/openapi.json").json()


def _check(openapi: dict, path: str, method: str, response) -> dict:
    """The response body validates against the OpenAPI schema for its status code."""
    import jsonschema

    body = response.json()
    spec = openapi["paths"][path][method]["responses"][str(response.status_code)]
    schema = spec["content"]["application/json"]["schema"]
    jsonschema.validate(
        body,
        {**schema, "components": openapi["components"]},
        cls=jsonschema.Draft202012Validator,
    )
    return body


def _passage(planted_root: Path, planted_corpus: Path) -> tuple[str, str, str]:
    """(prompt, output, doc id): a training document's first chunk as the prompt and its
    second chunk as the output (so the second chunk is the expected top hit)."""
    rows = pq.read_table(planted_root / "chunks" / "part-000000.parquet").to_pylist()
    second = next(r for r in rows if r["chunk_index"] == 1 and r["n_tokens"] == 64)
    docs = {
        json.loads(line)["id"]: json.loads(line)["text"]
        for line in (planted_corpus / "docs.jsonl").read_text().splitlines()
    }
    doc = docs[second["doc_id"]]
    return (
        doc[: second["char_start"]],
        doc[second["char_start"] : second["char_end"]],
        second["doc_id"],
    )


def test_endpoints_match_their_openapi_description(server, openapi, planted_root, planted_corpus):
    body = _check(openapi, "/health", "get", httpx.get(f"{server}/health"))
    assert body["status"] == "ok"
    info = _check(openapi, "/api/index", "get", httpx.get(f"{server}/api/index"))
    assert info["vectors"] > 0 and info["encoder"]["name"] == "builtin"
    assert body["index_manifest_id"] == info["index_manifest_id"]

    prompt, output, doc_id = _passage(planted_root, planted_corpus)
    r = httpx.post(f"{server}/api/attribute", json={"prompt": prompt, "output": output, "k": 5},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    report = _check(openapi, "/api/attribute", "post", r)
    assert report["kind"] == "tda.attribution" and report["chunks"]
    assert doc_id in [h["doc_id"] for h in report["chunks"][0]["hits"][:3]]
    r = httpx.post(f"{server}/api/attribute",
                   json={"prompt": "The for statement", "generate": 12, "input_attribution": "ig",
                         "ig_steps": 4}, timeout=60)  # fmt: skip
    assert r.status_code == 200 and _check(openapi, "/api/attribute", "post", r)["chunks"]

    r = httpx.get(f"{server}/api/search", params={"text": "class definitions", "k": 4})
    hits = _check(openapi, "/api/search", "get", r)["hits"]
    assert len(hits) == 4 and all(h["chunk"]["text"] for h in hits)

    chunk_id = report["chunks"][0]["hits"][0]["chunk_id"]
    r = httpx.get(f"{server}/api/chunks/{chunk_id}", params={"context": 2})
    data = _check(openapi, "/api/chunks/{chunk_id}", "get", r)
    assert data["chunk"]["chunk_id"] == chunk_id
    for other in data["previous"] + data["next"]:
        assert other["doc_id"] == data["chunk"]["doc_id"]
    assert [c["chunk_id"] for c in data["previous"]] == sorted(
        c["chunk_id"] for c in data["previous"]
    )


def test_document_of_a_hit_is_the_training_document(server, openapi, planted_root, planted_corpus):
    """GET /api/documents/{chunk_id}: the chunk's whole document, its chunks in order and
    their text joined equal to the corpus record; a cap returns a window around the chunk
    and says truncated."""
    rows = pq.read_table(planted_root / "chunks" / "part-000000.parquet").to_pylist()
    docs = {
        json.loads(line)["id"]: json.loads(line)["text"]
        for line in (planted_corpus / "docs.jsonl").read_text().splitlines()
    }
    middle = next(r for r in rows if r["chunk_index"] == 2)
    ids = [r["chunk_id"] for r in rows if r["doc_id"] == middle["doc_id"]]
    assert len(ids) >= 4
    r = httpx.get(f"{server}/api/documents/{middle['chunk_id']}")
    doc = _check(openapi, "/api/documents/{chunk_id}", "get", r)
    assert [c["chunk_id"] for c in doc["chunks"]] == ids
    assert [c["chunk_index"] for c in doc["chunks"]] == list(range(len(ids)))
    assert doc["text"] == docs[middle["doc_id"]] and doc["text_start"] == 0
    assert (doc["doc_id"], doc["chunk_id"], doc["truncated"]) == (
        middle["doc_id"], middle["chunk_id"], False,
    )  # fmt: skip
    assert doc["url"].endswith("docs.jsonl") and doc["record_index"] == middle["record_index"]
    r = httpx.get(f"{server}/api/documents/{middle['chunk_id']}", params={"limit": 3})
    doc = _check(openapi, "/api/documents/{chunk_id}", "get", r)
    assert [c["chunk_index"] for c in doc["chunks"]] == [1, 2, 3] and doc["truncated"]
    text = docs[middle["doc_id"]]
    assert doc["text"] == text[doc["chunks"][0]["char_start"] : doc["chunks"][-1]["char_end"]]


def test_request_body_is_derived_from_the_attribution_request(openapi):
    """The body's fields, defaults and choices are AttributionRequest's; a report's hits
    are described flat (the chunk record's keys beside rank and score), as sent."""
    from tda.schemas import AttributionRequest, ChunkRecord

    schemas = openapi["components"]["schemas"]
    body = schemas["AttributeRequest"]
    fields = dataclasses.fields(AttributionRequest)
    assert list(body["properties"]) == [f.name for f in fields]
    assert body["required"] == ["prompt"]
    for name, default in AttributionRequest.defaults().items():
        assert body["properties"][name].get("default") == default, name
    choices = {f.name: list(f.metadata["choices"]) for f in fields if "choices" in f.metadata}
    for name, values in choices.items():
        assert body["properties"][name]["enum"] == values, name
    hit = schemas["TrainingHit"]["properties"]
    assert "chunk" not in hit
    assert {f.name for f in dataclasses.fields(ChunkRecord)} <= set(hit)
    assert "Hit" not in schemas and "SearchHit" in schemas


ATTR = "/api/attribute"


def _body(**fields) -> dict:
    return {"json": fields}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("post", ATTR, {"content": b"{not json", "headers": {"content-type": "application/json"}},
         422, "JSON"),
        ("post", ATTR, _body(output="x"), 422, "prompt"),
        ("post", ATTR, _body(prompt="a"), 422, "exactly one of"),
        ("post", ATTR, _body(prompt="a", output="b", generate=3), 422, "exactly one of"),
        ("post", ATTR, _body(prompt="a", output="b", k="many"), 422, "k"),
        ("post", ATTR, _body(prompt="a", output="b", k=0), 422, "k"),
        ("post", ATTR, _body(prompt="x" * 20_001, output="b"), 422, "prompt"),
        ("post", ATTR, _body(prompt="a", output="b", input_attribution="shap"), 422,
         "input_attribution"),
        ("post", ATTR, _body(prompt="a", output="b", extra=1), 422, "extra"),
        ("post", ATTR, _body(prompt="a", generate=3, temperature=1.0,
                             seed=99999999999999999999999), 422, "seed"),
        ("post", ATTR, _body(prompt="a", generate=3, seed=-1), 422, "seed"),
        ("post", ATTR, _body(prompt="a", output=""), 400, "no tokens"),
        ("post", ATTR, _body(prompt="a", output="word " * 3000), 400, "context holds"),
        ("get", "/api/chunks/123456789", {}, 404, "not in this index"),
        ("get", "/api/chunks/-5", {}, 422, "chunk_id"),  # ids are non-negative int64
        ("get", "/api/chunks/abc", {}, 422, "chunk_id"),
        ("get", "/api/documents/123456789", {}, 404, "not in this index"),
        ("get", "/api/documents/-5", {}, 422, "chunk_id"),
        ("get", "/api/documents/0", {"params": {"limit": 0}}, 422, "limit"),
        ("get", "/api/documents/0", {"params": {"limit": 2001}}, 422, "limit"),
        ("get", "/api/search", {"params": {"k": 3}}, 422, "text"),
        ("get", "/api/search", {"params": {"text": "a", "k": 10_000}}, 422, "k"),
        ("get", "/nowhere", {}, 404, "Not Found"),
        ("get", "/static/../serve.py", {}, 404, "Not Found"),
        ("get", "/static/%2e%2e/serve.py", {}, 404, "Not Found"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_json_4xx_and_the_server_stays_up(
    server, openapi, method, path, kwargs, status, message
):
    r = getattr(httpx, method)(f"{server}{path}", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert message.lower() in (body["error"] + json.dumps(body.get("detail"))).lower()
    assert httpx.get(f"{server}/health").status_code == 200


def test_host_header_is_checked_against_dns_rebinding(server, planted_root):
    """A page on another site rebinding its name to 127.0.0.1 sends its own name in Host:
    refused with a JSON 400 naming it; the local names pass; --allowed-host adds one."""
    from tda.jobs.serve import create_app, host_name

    for name in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example"):
        r = httpx.get(f"{server}/health", headers={"host": name})
        assert r.status_code == 400 and "--allowed-host" in r.json()["error"], name
    for name in ("127.0.0.1", "localhost:8080", "[::1]:8080", "LOCALHOST"):
        assert httpx.get(f"{server}/health", headers={"host": name}).status_code == 200
    assert [host_name(h) for h in ("[::1]:80", "a.b:1", "a.b", "::1")] == [
        "::1", "a.b", "a.b", "::1",
    ]  # fmt: skip
    from fastapi.testclient import TestClient

    app = create_app(str(planted_root), device="cpu", allowed_hosts=("tda.lab.internal",))
    client = TestClient(app, base_url="http://tda.lab.internal:8080")
    assert client.get("/health").status_code == 200
    assert TestClient(app, base_url="http://other.internal").get("/health").status_code == 400


def test_viewer_page_and_static_files(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="output-view"' in page.text
    for name in ("viewer.js", "viewer.css"):
        assert httpx.get(f"{server}/static/{name}").status_code == 200


def test_bounded_load_on_loopback(server):
    """8 concurrent clients, 200 requests mixing attribute / search / chunk lookups: zero
    errors (latency figures: benchmarks/bench_serve.py)."""
    attribute = _body(prompt="The for statement", output=" loops over items.", k=5,
                      input_attribution="none")  # fmt: skip
    bodies = [
        ("post", ATTR, attribute),
        ("get", "/api/search", {"params": {"text": "exceptions", "k": 5}}),
        ("get", "/health", {}),
    ]

    def one(i: int) -> tuple[int, float]:
        method, path, kw = bodies[i % len(bodies)]
        start = time.perf_counter()
        r = getattr(httpx, method)(f"{server}{path}", timeout=60, **kw)
        return r.status_code, time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    assert [code for code, _ in results] == [200] * 200
    assert statistics.median(t for _, t in results) < 5.0


@pytest.mark.browser
def test_viewer_in_headless_chromium(server, planted_root, planted_corpus):
    """Enter a prompt and an output, click a chunk: the training-chunk panel shows the
    document the output was taken from."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=700,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        prompt, output, doc_id = _passage(planted_root, planted_corpus)
        driver.get(server + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "chunks" in d.find_element(By.ID, "index-info").text)
        driver.find_element(By.ID, "prompt").send_keys(prompt)
        driver.find_element(By.ID, "output").send_keys(output)
        driver.find_element(By.ID, "run").click()
        chunk = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, ".chunk[data-chunk='0']")))
        last = driver.find_elements(By.CSS_SELECTOR, ".chunk")[-1]
        last.send_keys(Keys.ENTER)  # keyboard: a focused chunk is selected with Enter
        assert last.get_attribute("aria-pressed") == "true"
        chunk.click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li.hit"))
        docs = [
            li.get_attribute("data-doc-id")
            for li in driver.find_elements(By.CSS_SELECTOR, "#hits li.hit")
        ]
        assert doc_id in docs[:3]
        assert chunk.get_attribute("aria-pressed") == "true"
        assert driver.find_elements(By.CSS_SELECTOR, "#concepts .bar-row")
        assert driver.find_elements(By.CSS_SELECTOR, "#prompt-tokens span")
        assert driver.find_elements(By.CSS_SELECTOR, "#sources .bar-row")
        # a hit opens its whole document with its chunk marked (test_viewer_browser.py)
        driver.find_element(By.CSS_SELECTOR, "#hits li.hit button.open-document").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#document-body mark.current"))
    finally:
        driver.quit()


def test_tda_serve_command_serves_and_stops(planted_root):
    """`tda serve ROOT --port P` binds to localhost, serves /health, exits on SIGTERM."""
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tda.jobs.cli", "serve", str(planted_root), "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "tda serve did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out
    bad = subprocess.run(
        [sys.executable, "-m", "tda.jobs.cli", "serve", "/nonexistent/root"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "Error" in bad.stderr
