"""The Diff tab in real Chromium: compare the open model with a base, see the canvas coloured by how
much each tensor moved (legend and marks), sort the table, and click through to a tensor's delta
heatmap, whose values are checked against numpy on the arrays the test wrote.

The helpers and the console/offline guard are test_browser.py's. The models are small Llama-named
ones written here with the safetensors library, so the server starts in a moment.

Run: pytest -m browser tests/test_browser_diff.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import tiny_llama_tensors
from .test_browser import CHROMIUM, TIMEOUT_MS, browser, guarded_page, server_env, serving  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

MOVED = "model.layers.1.mlp.up_proj.weight"  # x 2: the largest relative change (1.0)
NUDGED = "model.layers.0.self_attn.o_proj.weight"  # + 1e-2 relative: a smaller change
NEW = "model.layers.0.extra.weight"  # only in the open model
SAME = "model.layers.0.mlp.gate_proj.weight"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import ml_dtypes
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("diffpage")
    base = tiny_llama_tensors(layers=4, hidden=32, inter=64)
    ft = dict(base)
    ft[MOVED] = (base[MOVED].astype(np.float64) * 2).astype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(3)
    w = base[NUDGED].astype(np.float64)
    ft[NUDGED] = (w + 0.01 * np.linalg.norm(w) / np.sqrt(w.size) * rng.standard_normal(w.shape)).astype(ml_dtypes.bfloat16)
    ft[NEW] = np.ones((32, 32), np.float32)
    (tmp / "base").mkdir()
    (tmp / "ft").mkdir()
    save_file(base, str(tmp / "base" / "model.safetensors"))
    save_file(ft, str(tmp / "ft" / "model.safetensors"))
    return tmp, base, ft


@pytest.fixture(scope="module")
def diff_server(models):
    tmp, *_ = models
    with serving(server_env(tmp / "ft" / "model.safetensors", tmp, ALLOWED_ROOTS=str(tmp)), tmp) as base:
        yield base


@pytest.fixture
def ui(browser, diff_server, tmp_path):
    with guarded_page(browser, diff_server, tmp_path) as u:
        # no heatmap thumbnails in the tiles: a tile's pixels are then its fill colour alone, with
        # the override as without it (thumbnails arrive asynchronously and would make them vary)
        u.page.add_init_script("localStorage.setItem('ts-prefs', JSON.stringify({thumbs: false}))")
        u.open()
        yield u


def tile_centre(ui, name: str) -> tuple[float, float]:
    """Canvas-relative CSS px of a tile's centre."""
    return ui.page.evaluate(
        """(name) => {
            const v = window.__ts.canvas;
            const it = v.items.find((i) => i.t.name === name);
            return [v.tx + (it.x + it.w / 2) * v.scale, v.ty + (it.y + it.h / 2) * v.scale];
        }""",
        name,
    )


def css_rgb(ui, colour: str) -> list[int]:
    return ui.page.evaluate(
        """(c) => { const x = document.createElement('canvas').getContext('2d'); x.fillStyle = c;
                   const n = parseInt(x.fillStyle.slice(1), 16); return [(n >> 16) & 255, (n >> 8) & 255, n & 255]; }""",
        colour,
    )


def test_diff_colours_the_canvas_and_opens_deltas(ui, models):
    tmp, base, ft = models
    page = ui.page
    ui.tab("diff")
    tab = page.locator('.tabs [data-tab="diff"]').bounding_box()
    sidebar = page.locator("#sidebar").bounding_box()
    assert tab["x"] + tab["width"] <= sidebar["x"] + sidebar["width"] + 1  # the tab strip still fits
    before = ui.canvas_pixel(*tile_centre(ui, MOVED))
    page.fill("#diff-base", str(tmp / "base"))
    page.click("#diff-run")
    ui.wait_text("#diff-status", "2 of 39 tensors changed")
    # the canvas state: the changed tensors on the ramp (the most moved at its top), marks for the rest
    colours = page.evaluate(
        """() => { const c = window.__ts.canvas.colours; return c && Object.fromEntries(c.byName); }""")
    assert colours[MOVED] == 1 and 0 <= colours[NUDGED] < 1
    assert colours[NEW] == "#e5484d" and isinstance(colours[SAME], str)
    # ... and the pixels: each tile is filled with its colour, no longer its type group's
    moved_px = ui.canvas_pixel(*tile_centre(ui, MOVED))
    want = page.evaluate("(n) => { const v = window.__ts.canvas; return v.tileColour(v.items.find((i) => i.t.name === n)); }", MOVED)
    assert moved_px == css_rgb(ui, want) != before
    assert ui.canvas_pixel(*tile_centre(ui, NEW)) == css_rgb(ui, "#e5484d")
    expect(page.locator("#canvas-legend .legend-ramp")).to_be_visible(timeout=TIMEOUT_MS)
    ui.wait_text("#canvas-legend", "relative change")
    ui.wait_text("#canvas-legend", "not in the base")
    # the table: most moved first; sorting by name reorders it
    first = page.locator("#diff-table tbody tr").first
    expect(first).to_have_attribute("data-name", MOVED, timeout=TIMEOUT_MS)
    page.click('#diff-table th[data-key="name"]')
    names = page.eval_on_selector_all("#diff-table tbody tr", "rows => rows.map((r) => r.dataset.name)")
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "model.norm.weight"  # by name, ascending
    # a click on a tile opens its delta in the Diff tab
    x, y = ui.canvas_point(MOVED)
    page.mouse.click(x, y)
    expect(page.locator('.tabs [data-tab="diff"]')).to_have_attribute("aria-selected", "true", timeout=TIMEOUT_MS)
    expect(page.locator("#diff-delta")).to_have_attribute("data-drawn", MOVED, timeout=TIMEOUT_MS)
    z = np.array(page.evaluate("document.getElementById('diff-heatmap').data[0].z"), dtype=np.float64)
    d = ft[MOVED].astype(np.float64) - base[MOVED].astype(np.float64)
    assert z.shape == (64, 32) and np.array_equal(z, d[:64, :32])
    # a row of the table opens another's, and the slice controls move the window
    page.locator(f'#diff-table tr[data-name="{NUDGED}"]').click()
    expect(page.locator("#diff-delta")).to_have_attribute("data-drawn", NUDGED, timeout=TIMEOUT_MS)
    page.fill('#diff-delta input[aria-label^="row from"]', "8")
    page.press('#diff-delta input[aria-label^="row from"]', "Tab")  # commits the value: one change event
    page.wait_for_function("document.getElementById('diff-heatmap').data[0].y[0] === 8")
    z = np.array(page.evaluate("document.getElementById('diff-heatmap').data[0].z"), dtype=np.float64)
    d = ft[NUDGED].astype(np.float64) - base[NUDGED].astype(np.float64)
    assert np.array_equal(z, d[8:32, :32])
    # a tile picked from another tab is Focus's, as always
    ui.tab("patches")
    page.mouse.click(*ui.canvas_point(SAME))
    expect(page.locator('.tabs [data-tab="focus"]')).to_have_attribute("aria-selected", "true", timeout=TIMEOUT_MS)
    expect(page.locator("#diff-delta")).to_have_attribute("data-drawn", NUDGED)  # the Diff tab kept its delta
    ui.tab("diff")
    # clearing gives the type colours back
    page.click("#diff-clear")
    page.wait_for_function("window.__ts.canvas.colours === null")
    assert ui.canvas_pixel(*tile_centre(ui, MOVED)) == before
    expect(page.locator("#canvas-legend .legend-ramp")).to_have_count(0)


def test_diff_bad_base_is_reported(ui, models):
    ui.tab("diff")
    ui.guard.allow_status(403)
    ui.page.fill("#diff-base", "/etc")
    ui.page.click("#diff-run")
    ui.wait_text("#diff-error", "outside the allowed folders")
    assert ui.page.evaluate("window.__ts.canvas.colours") is None
