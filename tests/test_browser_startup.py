"""Page start-up in real Chromium on the SmolLM2 demo model: nothing runs between GET /api/model and
the canvas's GET /api/tensors (Plotly, 3.6 MB of script that takes the main thread for 0.5-2 s on a
first visit, is loaded only when a plot is needed or once the canvas has drawn), plots still come up
on their own and on a reload that names a tensor, and Focus names a tensor's layer as the canvas does.

The guard (console errors, uncaught exceptions, other origins) is test_browser.py's.

Run: pytest -m browser tests/test_browser_startup.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_browser import CHROMIUM, browser, guarded_page, server_env, serving  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

PLOTS_DRAWN = "['heatmap', 'hist-plot'].every((id) => document.getElementById(id)?.data)"

# the page's own resource timings (one clock with window.__tsMetrics.firstRenderMs)
TIMINGS = """() => {
    const res = performance.getEntriesByType('resource');
    const at = (pred) => { const e = res.find((e) => pred(new URL(e.name).pathname)); return e ? {start: e.startTime, end: e.responseEnd} : null; };
    return {first: window.__tsMetrics.firstRenderMs, model: at((p) => p === '/api/model'),
            tensors: at((p) => p === '/api/tensors'), plotly: at((p) => p.endsWith('plotly.min.js')),
            plotlyRan: typeof window.Plotly === 'object'};
}"""


@pytest.fixture(scope="module")
def startup_server(tmp_path_factory, smol_dir):
    tmp = tmp_path_factory.mktemp("startup")
    with serving(server_env(smol_dir, tmp, ALLOWED_ROOTS=f"{smol_dir},{tmp}"), tmp) as base:
        yield base


@pytest.fixture
def ui(browser, startup_server, tmp_path):
    """A fresh context (no cache, no code cache) whose page is not opened yet."""
    with guarded_page(browser, startup_server, tmp_path, {"width": 1600, "height": 900}) as u:
        yield u


def test_listing_is_asked_for_before_plotly_and_plotly_comes_after_the_first_frame(ui):
    page = ui.page
    ui.open()
    t = page.evaluate(TIMINGS)
    assert t["model"] and t["tensors"], t
    assert t["tensors"]["start"] >= t["model"]["end"], t  # the listing after the model's facts, as before
    # nothing asked for Plotly before the canvas was up (it used to load with the document and run
    # between the two answers)
    assert t["plotly"] is None or t["plotly"]["start"] >= t["first"], t

    # with nothing to plot, it is loaded anyway once the page is idle: the first plot does not wait
    page.wait_for_function("typeof window.Plotly === 'object'")
    t = page.evaluate(TIMINGS)
    assert t["plotly"]["start"] >= t["first"], t
    assert page.locator("script#plotly-js").count() == 1

    page.evaluate("(name) => window.__ts.select(name)", "model.layers.3.mlp.down_proj.weight")
    page.wait_for_function(PLOTS_DRAWN)
    assert page.locator("script#plotly-js").count() == 1  # loaded once


def test_reload_naming_a_tensor_draws_its_plots(ui):
    page = ui.page
    page.goto(ui.base + "/#tensor=" + "model.embed_tokens.weight")
    ui.wait_rendered()
    page.wait_for_function(PLOTS_DRAWN)
    ui.wait_text("#focus-name", "model.embed_tokens.weight")
    assert page.locator("script#plotly-js").count() == 1


@pytest.mark.parametrize(("name", "label"), [
    ("model.embed_tokens.weight", "embed (before the layers)"),
    ("model.layers.0.self_attn.q_proj.weight", "L0"),
    ("model.layers.29.post_attention_layernorm.weight", "L29"),
    ("model.norm.weight", "norm (after the layers)"),  # SmolLM2 ties its head to the embedding
])
def test_focus_names_the_layer_band_as_the_canvas_does(ui, name, label):
    page = ui.page
    ui.open()
    page.evaluate("(name) => window.__ts.select(name)", name)
    ui.wait_text("#focus-name", name)
    facts = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#focus-facts dt')].map(
        (dt) => [dt.textContent, dt.nextElementSibling.textContent]))""")
    assert facts["layer"] == label, facts
    # the canvas's own label of the band it draws the tensor in
    band = page.evaluate("""(name) => { const v = window.__ts.canvas;
        const it = v.items.find((i) => i.t.name === name); return v.bands[it.band].label; }""", name)
    assert facts["layer"].split(" (")[0] == band
    assert "-1" not in facts["layer"] and "30" not in facts["layer"]
