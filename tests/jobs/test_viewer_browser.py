"""The viewer of ``tda serve`` driven in headless Chromium (Debian's chromium and
chromium-driver, marked ``browser``) against a real server over the planted root:
generate mode writes the generated text into the output box; whitespace shows in the
rendered output and nowhere else; the retrieval settings set in the form reach the API;
a hit opens its whole training document with the hit marked and in view; the permalink
re-runs the same request; the JSON download is the report. Screenshots go to
build/viewer-shots/ (looked at by eye when the viewer changes)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.jobs.test_serve import _free_port, _passage

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "build" / "viewer-shots"


@pytest.fixture(scope="module")
def server(planted_root):
    from tda.jobs.serve import create_app

    app = create_app(str(planted_root), device="cpu")
    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def driver():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield browser
    browser.quit()


def _by():
    from selenium.webdriver.common.by import By

    return By


def _open(driver, url: str):
    """Load the viewer at url and wait until its form has the API's choices."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")  # a new document even when only the hash differs
    driver.get(url)
    wait = WebDriverWait(driver, 90)
    wait.until(lambda d: d.find_element(_by().ID, "ask").get_attribute("data-ready") == "true")
    return wait


def _set(driver, element_id: str, value) -> None:
    """Set a form control as a user would: a select by its option, an input by typing."""
    from selenium.webdriver.support.ui import Select

    element = driver.find_element(_by().ID, element_id)
    if element.tag_name == "select":
        Select(element).select_by_value(str(value))
    else:
        element.clear()
        element.send_keys(str(value))


def _submit_and_wait(driver, wait) -> dict:
    """Click Attribute; the report the page shows, read back from its JSON download."""
    before = driver.find_element(_by().ID, "download").get_attribute("href")
    driver.find_element(_by().ID, "run").click()
    wait.until(lambda d: d.find_element(_by().ID, "download").get_attribute("href") != before)
    wait.until(lambda d: d.find_elements(_by().CSS_SELECTOR, ".chunk[data-chunk='0']"))
    return _downloaded(driver)


def _downloaded(driver) -> dict:
    """The bytes behind the "Download JSON" link, parsed."""
    href = driver.find_element(_by().ID, "download").get_attribute("href")
    assert href.startswith("blob:")
    text = driver.execute_async_script(
        "fetch(arguments[0]).then(r => r.text()).then(arguments[1])", href
    )
    return json.loads(text)


def _settings(driver) -> dict:
    """The settings line under the output: setting name -> value as the report gives it."""
    return {
        e.get_attribute("data-setting"): json.loads(e.get_attribute("data-value"))
        for e in driver.find_elements(_by().CSS_SELECTOR, "#settings [data-setting]")
    }


def _rendered_output(driver) -> str:
    """The output view's chunks' characters (the chunk-number tags left out)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.chunk')].map(c => [...c.childNodes]"
        ".filter(n => !(n.classList && n.classList.contains('tag')))"
        ".map(n => n.textContent).join('')).join('')"
    )


def test_generate_fills_the_output_box_and_settings_reach_the_api(driver, server):
    wait = _open(driver, server + "/")
    # the form's choices and limits are the API's
    options = [o.get_attribute("value")
               for o in driver.find_elements(_by().CSS_SELECTOR, "#rerank option")]  # fmt: skip
    assert options == ["none", "concepts", "span", "evidence"]
    assert driver.find_element(_by().ID, "candidates").get_attribute("max") == "1000"
    assert driver.find_element(_by().ID, "nprobe").get_attribute("placeholder").startswith("index")

    _set(driver, "prompt", "The for statement")
    driver.find_element(_by().CSS_SELECTOR, "input[name=mode][value=generate]").click()
    _set(driver, "generate", 24)
    _set(driver, "rerank", "span")
    _set(driver, "candidates", 40)
    _set(driver, "query-span", "chunk")
    _set(driver, "nprobe", 3)
    report = _submit_and_wait(driver, wait)

    assert report["output"] and report["output_token_count"] == 24
    box = driver.find_element(_by().ID, "output")
    assert box.get_property("value") == report["output"]  # editable, exact, no marks
    mode = driver.find_element(_by().CSS_SELECTOR, "input[name=mode]:checked")
    assert mode.get_attribute("value") == "output"  # Attribute again attributes the box
    assert _rendered_output(driver) == report["output"]
    settings = report["settings"]
    assert (settings["rerank"], settings["candidates"], settings["query_span"],
            settings["nprobe"]) == ("span", 40, "chunk", 3)  # fmt: skip
    assert settings["generate"]["tokens"] == 24
    shown = _settings(driver)
    assert (shown["rerank"], shown["candidates"], shown["nprobe"]) == ("span", 40, 3)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "generate.png"))

    # the permalink names the request: loaded afresh it re-runs it, same report
    link = driver.find_element(_by().ID, "permalink").get_attribute("href")
    assert driver.current_url == link and "generate=24" in link and "rerank=span" in link
    wait = _open(driver, link)
    wait.until(lambda d: d.find_elements(_by().CSS_SELECTOR, ".chunk[data-chunk='0']"))
    wait.until(lambda d: d.find_element(_by().ID, "download").get_attribute("href") != "")
    again = _downloaded(driver)
    assert again["output"] == report["output"] and again["settings"] == report["settings"]
    assert driver.find_element(_by().ID, "output").get_property("value") == report["output"]
    assert driver.find_element(_by().ID, "rerank").get_property("value") == "span"
    assert driver.find_element(_by().ID, "nprobe").get_property("value") == "3"
    assert driver.find_element(_by().ID, "prompt").get_property("value") == "The for statement"


def test_whitespace_shows_in_the_rendered_output_only(driver, server):
    wait = _open(driver, server + "/")
    text = "  First line.\n\n\n\nSecond\tline, then spaces  "
    _set(driver, "prompt", "A note:")
    driver.execute_script("document.getElementById('output').value = arguments[0]", text)
    _set(driver, "input-attribution", "none")
    report = _submit_and_wait(driver, wait)
    assert report["output"] == text
    assert driver.find_element(_by().ID, "output").get_property("value") == text
    # the DOM keeps the exact characters; the marks are generated content
    assert _rendered_output(driver) == text
    css = _by().CSS_SELECTOR
    folded = driver.find_elements(css, ".chunk .ws.nl[data-count]")
    assert [e.get_attribute("data-count") for e in folded] == ["×4"]
    mark = driver.execute_script(
        "return getComputedStyle(arguments[0], '::before').content", folded[0]
    )
    assert "↵" in mark and "×4" in mark
    assert len(driver.find_elements(css, ".chunk .ws.sp")) == 4  # 2 leading, 2 trailing
    assert len(driver.find_elements(css, ".chunk .ws.tab")) == 1
    # the four breaks take one line, not four
    height = driver.execute_script(
        "return document.getElementById('output-view').getBoundingClientRect().height"
    )
    assert height < 120
    driver.save_screenshot(str(SHOTS / "whitespace.png"))
    driver.set_window_size(700, 1000)  # a narrow window: the form wraps, nothing overflows
    try:
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        driver.save_screenshot(str(SHOTS / "narrow.png"))
    finally:
        driver.set_window_size(1280, 1000)
    assert overflow <= 0


def test_a_hit_opens_its_whole_document_in_view(driver, server, planted_root, planted_corpus):
    wait = _open(driver, server + "/")
    prompt, output, doc_id = _passage(planted_root, planted_corpus)
    _set(driver, "prompt", prompt)
    driver.execute_script("document.getElementById('output').value = arguments[0]", output)
    report = _submit_and_wait(driver, wait)
    css = _by().CSS_SELECTOR
    hit = next(h for h in report["chunks"][0]["hits"] if h["doc_id"] == doc_id)
    button = driver.find_element(
        css, f"#hits li.hit[data-chunk-id='{hit['chunk_id']}'] button.open-document"
    )
    button.click()
    wait.until(lambda d: d.find_elements(css, "#document-body mark.current"))
    docs = {
        json.loads(line)["id"]: json.loads(line)["text"]
        for line in (planted_corpus / "docs.jsonl").read_text().splitlines()
    }
    body = driver.find_element(_by().ID, "document-body")
    assert body.get_property("textContent") == docs[doc_id]  # the whole document
    marked = "".join(
        m.get_property("textContent")
        for m in driver.find_elements(css, "#document-body mark.current")
    )
    assert marked == hit["text"]  # the hit's chunk, exactly
    in_view = driver.execute_script(
        "const m = document.querySelector('#document-body mark.current').getBoundingClientRect();"
        "const b = document.getElementById('document-body').getBoundingClientRect();"
        "return m.top >= b.top - 1 && m.top < b.bottom;"
    )
    assert in_view
    meta = driver.find_element(_by().ID, "document-meta").text
    assert "docs.jsonl" in meta and "truncated" not in meta
    driver.save_screenshot(str(SHOTS / "document.png"))
    driver.find_element(_by().ID, "document-close").click()
    assert not driver.find_element(_by().ID, "document-dialog").get_property("open")


def test_a_long_document_opens_at_its_hit(driver, server, planted_root):
    """A hit deep inside a document opens scrolled to it (the document is longer than the
    dialog), from the hit's text as well as its button."""
    rows = pq.read_table(planted_root / "chunks" / "part-000000.parquet").to_pylist()
    last = max(rows, key=lambda r: (r["chunk_index"], -r["chunk_id"]))
    assert last["chunk_index"] >= 8
    wait = _open(driver, server + "/")
    _set(driver, "prompt", "")
    driver.execute_script("document.getElementById('output').value = arguments[0]", last["text"])
    _set(driver, "input-attribution", "none")
    report = _submit_and_wait(driver, wait)
    css = _by().CSS_SELECTOR
    ids = [h["chunk_id"] for c in report["chunks"] for h in c["hits"]]
    assert last["chunk_id"] in ids  # a copied chunk finds itself
    index = next(i for i, c in enumerate(report["chunks"])
                 if last["chunk_id"] in [h["chunk_id"] for h in c["hits"]])  # fmt: skip
    driver.find_element(css, f".chunk[data-chunk='{index}']").click()
    driver.find_element(css, f"#hits li.hit[data-chunk-id='{last['chunk_id']}'] .hit-text").click()
    wait.until(lambda d: d.find_elements(css, "#document-body mark.current"))
    scrolled, visible = driver.execute_script(
        "const body = document.getElementById('document-body');"
        "const m = body.querySelector('mark.current').getBoundingClientRect();"
        "const b = body.getBoundingClientRect();"
        "return [body.scrollTop, m.top >= b.top - 1 && m.top < b.bottom];"
    )
    assert scrolled > 0 and visible
    driver.save_screenshot(str(SHOTS / "document-long.png"))
