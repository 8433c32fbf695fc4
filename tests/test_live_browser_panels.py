"""The Live panel while a researcher edits (real Chromium, real server, the SmolLM2 demo model loaded
live): the chart fits its pane after a reload (hidden tab or dock), stays in view while editing in
Focus, reruns as the prompt is typed, explains its amber rows, and resets on a model switch.

Run: pytest -m browser tests/test_live_browser_panels.py
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .test_browser import CHROMIUM, api_get, browser  # noqa: F401 (fixtures)
from .test_browser_panels import api_post, corner, default_server, ui  # noqa: F401 (fixtures: default ALLOWED_ROOTS)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

LOAD_S = 180  # the first load of the model on a busy 2-core machine
EMB = "model.embed_tokens.weight"


def load_live(base: str) -> None:
    api_post(base, "/api/live/load")
    deadline = time.monotonic() + LOAD_S
    while api_get(base, "/api/live/status")["state"] != "ready":
        assert time.monotonic() < deadline, api_get(base, "/api/live/status")
        time.sleep(0.5)


def chart_fit(page) -> dict:
    """The live chart's drawn width against its box's width (Plotly draws an <svg class=main-svg>)."""
    return page.evaluate("""() => {
        const gd = document.getElementById('live-chart');
        const svg = gd.querySelector('svg.main-svg');
        return {box: Math.round(gd.getBoundingClientRect().width), svg: svg ? Math.round(svg.getBoundingClientRect().width) : null,
                layout: gd._fullLayout ? Math.round(gd._fullLayout.width) : null};
    }""")


def wait_chart(page) -> None:
    page.wait_for_function("document.getElementById('live-chart').data?.length === 2", timeout=LOAD_S * 1000)


def test_chart_fits_its_pane_after_a_reload_docked_or_in_its_tab(ui):
    page, base = ui.page, ui.base
    load_live(base)
    # in the Live tab (not docked): after a reload the tab is hidden while the first logits arrive
    ui.open()
    page.evaluate("localStorage.setItem('ts-prefs', JSON.stringify({liveDock: false}))")
    page.reload()
    ui.wait_rendered()
    wait_chart(page)
    assert page.locator("#tab-live").is_hidden()
    ui.tab("live")
    page.wait_for_function("""() => {
        const gd = document.getElementById('live-chart');
        return gd._fullLayout && Math.abs(gd._fullLayout.width - gd.getBoundingClientRect().width) <= 1;
    }""")
    fit = chart_fit(page)
    assert fit["box"] < 700 and abs(fit["svg"] - fit["box"]) <= 1, fit  # not Plotly's 700 px default

    # docked: the chart sits under the sidebar from every tab, and fits there too
    page.check("#live-dock-toggle")
    expect(page.locator("#live-dock")).to_be_visible()
    expect(page.locator("#live-dock #live-chart")).to_have_count(1)
    ui.tab("focus")
    expect(page.locator("#live-chart")).to_be_visible()
    page.wait_for_function("""() => {
        const gd = document.getElementById('live-chart');
        return gd._fullLayout && Math.abs(gd._fullLayout.width - gd.getBoundingClientRect().width) <= 1;
    }""")
    page.reload()
    ui.wait_rendered()
    wait_chart(page)
    expect(page.locator("#live-dock #live-chart")).to_be_visible()
    fit = chart_fit(page)
    assert abs(fit["svg"] - fit["box"]) <= 1, fit
    ui.guard.assert_clean()


def test_editing_while_watching_and_typing_reruns(ui, smol_dir):
    from transformers import AutoTokenizer

    page, base = ui.page, ui.base
    load_live(base)
    ui.open()
    wait_chart(page)
    expect(page.locator("#live-dock #live-chart")).to_be_visible()  # docked by default
    top = page.evaluate("window.__tsLive.last().top.map((t) => t.token)")
    assert " Paris" in top

    # edit in Focus (zero the " Paris" embedding row): the docked chart, in view, changes with it
    paris = AutoTokenizer.from_pretrained(str(smol_dir))(" Paris", add_special_tokens=False)["input_ids"][0]
    page.evaluate("(n) => window.__ts.select(n)", EMB)
    expect(page.locator("#focus-name")).to_have_text(EMB)
    page.wait_for_selector("#op-select option", state="attached")
    for sel, v in {"#dim0-start": paris, "#dim0-end": paris + 1, "#dim1-start": 0, "#dim1-end": 64}.items():
        page.fill(sel, str(v))
    page.click("#slice-apply")
    ui.wait_text("#slice-info", f"[{paris}:{paris + 1}")
    page.select_option("#op-select", "zero")
    page.select_option("#op-target", "slice")
    page.click("#op-preview")
    ui.wait_text("#preview-box", "64 targeted")
    page.click("#stage-btn")
    ui.wait_staged(1)
    page.wait_for_function("window.__tsLive.last().edits.length === 1")
    expect(page.locator("#live-chart")).to_be_in_viewport()  # still watching, from the Focus tab
    assert page.evaluate("document.querySelector('#tab-live').hidden")

    # typing reruns after a pause, once, without Enter or Run
    ui.tab("live")
    before = page.evaluate("window.__tsLive.metrics.latencies.length")
    box = page.locator("#live-prompt")
    box.fill("")
    box.press_sequentially("The capital of Italy is", delay=30)
    page.wait_for_function("window.__tsLive.last().prompt === 'The capital of Italy is'")
    page.wait_for_timeout(800)
    assert page.evaluate("window.__tsLive.metrics.latencies.length") == before + 1  # one run, not one per key

    # the amber rows say what they mean
    expect(page.locator("#live-legend")).to_contain_text("|Δ prob| > 0.0001")
    ui.guard.assert_clean()


def test_live_panel_resets_on_a_model_switch(ui):
    page, base = ui.page, ui.base
    load_live(base)
    ui.open()
    ui.tab("live")
    wait_chart(page)
    page.wait_for_function("document.querySelectorAll('#lora-module option').length > 10")
    assert page.evaluate("document.querySelector('#lora-module').value").startswith("model.layers.")
    api_post(base, "/api/edit_tensor", {"tensor_name": EMB, "op": "zero", "slice": corner(0, 1, 0, 4)})

    minilm = next(m["path"] for m in api_get(base, "/api/models")["models"] if "MiniLM" in m["path"])
    page.fill("#open-model-path", minilm)
    page.click("#open-model-form button[type=submit]")
    expect(page.locator("#model-name")).to_have_text("all-MiniLM-L6-v2")
    # nothing of SmolLM2 stays: chart, table, toggles, LoRA modules; the dock is gone
    page.wait_for_function("!document.getElementById('live-chart').data")
    expect(page.locator("#live-table tr")).to_have_count(0)
    expect(page.locator("#lora-module option")).to_have_text(["load the model first"])
    expect(page.locator("#live-dock")).to_be_hidden()
    ui.wait_text("#live-kind", "causal language model")
    page.wait_for_function("document.getElementById('live-state').textContent.startsWith('unloaded')")
    assert ui.failed == [], ui.failed
    ui.guard.assert_clean()
