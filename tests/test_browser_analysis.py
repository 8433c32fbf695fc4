"""The Analysis tab in real Chromium: run the table for the open model (a small Llama-named model
written here), check its values against numpy on the arrays the test wrote, sort and filter it,
and click a row and a plotted point through to the tensor on the canvas.

Run: pytest -m browser tests/test_browser_analysis.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import tiny_llama_tensors
from .test_browser import CHROMIUM, browser, guarded_page, server_env, serving  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

LOW = "model.layers.2.mlp.down_proj.weight"  # made rank 3 below


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from safetensors.numpy import save_file

    tmp = tmp_path_factory.mktemp("analysispage")
    t = tiny_llama_tensors(layers=4, hidden=32, inter=64)
    rng = np.random.default_rng(5)
    t[LOW] = (rng.standard_normal((32, 3)) @ rng.standard_normal((3, 64))).astype(np.float32)
    folder = tmp / "m"
    folder.mkdir()
    save_file(t, str(folder / "model.safetensors"))
    return tmp, t


@pytest.fixture(scope="module")
def analysis_server(model):
    tmp, _ = model
    with serving(server_env(tmp / "m" / "model.safetensors", tmp, ALLOWED_ROOTS=str(tmp)), tmp) as base:
        yield base


@pytest.fixture
def ui(browser, analysis_server, tmp_path):
    with guarded_page(browser, analysis_server, tmp_path) as u:
        u.open()
        yield u


def test_analysis_tab_table_plots_and_click_through(ui, model):
    _, tensors = model
    page = ui.page
    ui.tab("analysis")
    tab = page.locator('.tabs [data-tab="analysis"]').bounding_box()
    sidebar = page.locator("#sidebar").bounding_box()
    assert tab["x"] + tab["width"] <= sidebar["x"] + sidebar["width"] + 1  # the tab strip still fits
    page.select_option("#analysis-rank", "exact")
    page.click("#analysis-run")
    ui.wait_text("#analysis-status", f"{len(tensors)} parameters")
    rows = page.locator("#analysis-table tbody tr")
    expect(rows).to_have_count(len(tensors))
    # values in the table against numpy on the arrays written
    ranks = page.eval_on_selector_all(
        "#analysis-table tbody tr", "rs => rs.map((r) => [r.dataset.name, r.children[5].textContent])")
    for name, text in ranks:
        x = tensors[name].astype(np.float64)
        if x.ndim == 2:
            s = np.linalg.svd(x, compute_uv=False)
            assert int(text) == np.linalg.matrix_rank(x, tol=1e-6 * s[0]), name
        else:
            assert text == "", name
    assert dict(ranks)[LOW] == "3"
    # sort by rank: ascending puts the rank-3 matrix first (no value last)
    page.click('#analysis-table th[data-col="rank"]')
    expect(rows.first).to_have_attribute("data-name", LOW)
    # filter: a regex over names
    page.fill("#analysis-filter", r"/layers\.1\..*proj/")
    expect(rows).to_have_count(7)
    ui.wait_text("#analysis-count", "7 rows")
    page.fill("#analysis-filter", "")
    # the per-layer plot: one line per block type that has the plotted column (rank: the 7 matrices)
    page.select_option("#analysis-metric", "rank")
    page.wait_for_function("document.getElementById('analysis-lines').data && document.getElementById('analysis-lines').data.length === 7")
    down = page.evaluate("document.getElementById('analysis-lines').data.find((t) => t.name === 'down_proj').y")
    assert down == [32, 32, 3, 32]
    # the box plot also has the embedding (outside the layers): 8 block types
    assert page.evaluate("document.getElementById('analysis-box').data.length") == 8
    # a click on a row selects that tensor (Focus shows it)
    page.locator('#analysis-table tr[data-name="model.layers.3.self_attn.q_proj.weight"]').click()
    page.wait_for_function("window.__ts.state.selected === 'model.layers.3.self_attn.q_proj.weight'")
    # a click on a plotted point: the low-rank down_proj's marker at layer 2
    ui.tab("analysis")
    trace = page.evaluate("document.getElementById('analysis-lines').data.findIndex((t) => t.name === 'down_proj')")
    point = page.locator(f"#analysis-lines .scatterlayer .trace:nth-of-type({trace + 1}) .points path").nth(2)
    point.click(force=True)
    page.wait_for_function(f"window.__ts.state.selected === '{LOW}'")
