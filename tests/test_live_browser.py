"""The Live tab in real Chromium against the real server on the SmolLM2 demo model: a staged edit that
zeroes the " Paris" embedding row changes the next token of "The capital of France is"; turning the
edit off and on in the tab changes the Plotly chart and the table and brings them back; a dropped
WebSocket reconnects by itself and keeps working. Any console error fails the test (the `ui`
fixture of test_browser.py).

Run: pytest -m browser tests/test_live_browser.py
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .test_browser import CHROMIUM, api_get, browser, server, ui  # noqa: F401 (fixtures)

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

EMB = "model.embed_tokens.weight"
HIDDEN = 576
LOAD_TIMEOUT_MS = 120_000  # the first load of the model on a busy 2-core machine


def api_post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def chart(page) -> list:
    """The Plotly chart's traces as [name, labels, values]."""
    return page.evaluate(
        "document.getElementById('live-chart').data.map((t) => [t.name, t.y, t.x])")


def top_row(page) -> str:
    return page.locator("#live-table tr:nth-child(2) td:first-child").inner_text()


def wait_top(page, token: str, timeout: int = 60_000) -> None:
    playwright_api.expect(page.locator("#live-table tr:nth-child(2) td:first-child")).to_have_text(
        json.dumps(token), timeout=timeout)


def test_live_tab_toggles_an_edit_and_survives_a_dropped_socket(ui, smol_dir):
    from transformers import AutoTokenizer

    page = ui.page
    paris = AutoTokenizer.from_pretrained(str(smol_dir))(" Paris", add_special_tokens=False)["input_ids"]
    assert len(paris) == 1
    edit = api_post(ui.base, "/api/edit_tensor", {
        "tensor_name": EMB, "op": "zero",
        "slice": {"dim0_start": paris[0], "dim0_end": paris[0] + 1, "dim1_start": 0, "dim1_end": HIDDEN}})
    edit_id = edit["edit"]["id"]

    ui.open()
    ui.tab("live")  # opening the tab loads the model
    page.wait_for_function("document.getElementById('live-chart').data?.length === 2", timeout=LOAD_TIMEOUT_MS)
    wait_top(page, " the")  # with the row zeroed, " Paris" is no longer first
    ui.wait_text("#live-state", "ready")
    ui.wait_text("#live-facts", "dtype bfloat16")
    ui.wait_text("#live-timing", "forward")
    box = page.locator(f'#live-edits input[data-edit="{edit_id}"]')
    playwright_api.expect(box).to_be_checked()
    patched = chart(page)
    assert [t[0] for t in patched] == ["base", "patched"]
    assert patched[0][1][0] == json.dumps(" the") and json.dumps(" Paris") in patched[0][1]

    box.click()  # off: the live model runs without the edit
    wait_top(page, " Paris")
    without = chart(page)
    assert without != patched
    assert without[1][2] == without[0][2]  # patched == base, token for token
    playwright_api.expect(page.locator(f'#live-edits input[data-edit="{edit_id}"]')).not_to_be_checked()

    page.locator(f'#live-edits input[data-edit="{edit_id}"]').click()  # on again: back to the same chart
    wait_top(page, " the")
    assert chart(page) == patched

    # drop the socket: the page reconnects by itself, gets the state again and keeps working
    page.evaluate("() => { window.__oldSocket = window.__tsLive.socket(); window.__oldSocket.close(); }")
    page.wait_for_function(
        "window.__tsLive.socket() !== window.__oldSocket && window.__tsLive.socket().readyState === WebSocket.OPEN")
    playwright_api.expect(page.locator("#live-conn")).to_have_text("connected")
    page.locator(f'#live-edits input[data-edit="{edit_id}"]').click()
    wait_top(page, " Paris")
    assert chart(page) == without
    assert api_get(ui.base, "/api/live/logits")["edits"] == [
        {"id": edit_id, "description": edit["edit"]["description"], "enabled": False}]
    latencies = page.evaluate("window.__tsLive.metrics.latencies")
    assert len(latencies) >= 3  # each toggle's answer was matched to its request
