"""The viewer's "Check the hits" button (issue 24) in headless Chromium against a real
server over the planted root: after an attribution, the button adds every output
chunk's check to the report the page shows (and downloads), and the selected chunk's
panel states its verdict and figures."""

from __future__ import annotations

import pytest

from tests.jobs.test_serve import _passage
from tests.jobs.test_viewer_browser import (  # noqa: F401 (fixtures)
    SHOTS,
    _by,
    _downloaded,
    _open,
    _set,
    _submit_and_wait,
    driver,
    server,
)

pytestmark = pytest.mark.browser


def test_check_button_checks_the_shown_report(driver, server, planted_root, planted_corpus):  # noqa: F811
    prompt, output, _ = _passage(planted_root, planted_corpus)
    wait = _open(driver, server + "/")
    _set(driver, "prompt", prompt)
    _set(driver, "output", output)
    _set(driver, "k", 3)
    before = _submit_and_wait(driver, wait)
    assert "check" not in before
    driver.find_element(_by().CSS_SELECTOR, ".chunk[data-chunk='0']").click()
    assert driver.find_element(_by().ID, "check-result").text == ""
    link = driver.find_element(_by().ID, "download").get_attribute("href")
    driver.find_element(_by().ID, "check").click()
    wait.until(lambda d: d.find_element(_by().ID, "download").get_attribute("href") != link)
    checked = _downloaded(driver)
    assert checked["check"]["draws"] == 8 and checked["output"] == before["output"]
    first = checked["chunks"][0]["check"]
    assert first["chunks"] == 3 and len(first["random_drops"]) == 8
    shown = driver.find_element(_by().ID, "check-result").text
    assert shown.startswith(first["verdict"]) and f"{first['attributed_drop']:.3f}" in shown
    assert "checked in" in driver.find_element(_by().ID, "status").text
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / "check.png"))
