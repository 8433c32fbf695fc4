"""The Steer tab in real Chromium against the real server on the SmolLM2 demo model: extract a
steering vector from a shipped example pair set, switch it on and see the steered continuation
differ from the default one; open the logit lens table. Any console error fails the test.

Run: pytest -m browser tests/test_browser_steer.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_browser import CHROMIUM, browser, server, ui  # noqa: F401 (fixtures)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

SLOW_MS = 300_000  # loading the model and a dozen forward passes on a busy 2-core machine


def test_steer_tab_extracts_applies_and_shows_the_lens(ui):
    page = ui.page
    ui.open()
    ui.tab("steer")  # opening the tab loads the live model
    page.wait_for_function("document.querySelectorAll('#steer-example option').length > 1", timeout=SLOW_MS)
    page.select_option("#steer-example", "happy_sad")
    expect(page.locator("#steer-name")).to_have_value("happy_sad")
    pos = page.locator("#steer-pos").input_value().split("\n")
    assert len(pos) == 24 and pos[0].startswith("I am so happy")
    # the first 6 pairs of the set: every text is one forward pass, seconds each on a busy 2-core machine
    for side in ("#steer-pos", "#steer-neg"):
        page.fill(side, "\n".join(page.locator(side).input_value().split("\n")[:6]))
    page.fill("#steer-layers", "8-12")
    expect(page.locator("#steer-extract")).to_be_enabled(timeout=SLOW_MS)  # once the live model is ready
    expect(page.locator("#steer-state")).to_have_text("live model: ready")
    page.click("#steer-extract")
    item = page.locator('#steer-vectors li[data-vector="happy_sad"]')
    expect(item).to_be_visible(timeout=SLOW_MS)
    expect(item).to_contain_text("L8,9,10,11,12 mean")
    box = item.locator('input[data-steer="happy_sad"]')
    expect(box).not_to_be_checked()

    default = page.locator("#steer-default")
    steered = page.locator("#steer-steered")
    expect(default).not_to_have_text("", timeout=SLOW_MS)
    before = default.inner_text()
    assert steered.inner_text() == before  # nothing on: the same text

    box.click()
    expect(steered).to_have_class("mono steer-text staged", timeout=SLOW_MS)
    assert steered.inner_text() != before
    assert default.inner_text() == before  # the default side is the model without steering
    expect(page.locator("#steer-top")).to_contain_text("steering: happy_sad×4")

    box.click()  # off again: the lens shows the bare model
    expect(steered).to_have_class("mono steer-text", timeout=SLOW_MS)
    page.fill("#steer-prompt", "The capital of France is")
    page.click("#lens-show")
    rows = page.locator("#lens-table tr")
    expect(rows).to_have_count(31, timeout=SLOW_MS)  # header + 30 blocks
    last = page.locator("#lens-table tr:last-child td:last-child")
    expect(last).to_contain_text(json.dumps(" Paris"))
    z = page.evaluate("document.getElementById('lens-heatmap').data[0].z.length")
    assert z == 30
