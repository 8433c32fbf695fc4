"""The Clusters tab in real Chromium: the scatter appears with one point per tensor, a click on a
point selects that tensor (canvas and Focus follow), the head view of a matrix draws its heads, and
switching models clears the map. Served on all-MiniLM-L6-v2 (small: its features take seconds)."""

from __future__ import annotations

import pytest

from .test_browser import (  # noqa: F401 (fixtures)
    api_get,
    browser,
    guarded_page,
    server_env,
    serving,
)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = pytest.mark.browser

TARGET = "encoder.layer.3.attention.self.query.weight"


@pytest.fixture
def ui(browser, tmp_path, demo_models_dir):
    env = server_env(demo_models_dir / "all-MiniLM-L6-v2", tmp_path, ALLOWED_ROOTS=f"{demo_models_dir},{tmp_path}")
    with serving(env, tmp_path) as base, guarded_page(browser, base, tmp_path) as u:
        u.open()
        yield u


def isolated_point(page) -> tuple[str, float, float]:
    """The 2-D-matrix tensor whose scatter point lies farthest from every other point, with its page
    coordinates (Plotly's own axis mapping): a click there can only mean that point."""
    return page.evaluate(
        """() => {
            const gd = document.getElementById('clusters-plot');
            const fl = gd._fullLayout, r = gd.getBoundingClientRect();
            const pts = [];
            for (const tr of gd._fullData) {
                tr.customdata.forEach((name, i) => pts.push([name, r.left + fl._size.l + fl.xaxis.l2p(tr.x[i]),
                                                             r.top + fl._size.t + fl.yaxis.l2p(tr.y[i])]));
            }
            let best = null, bestGap = -1;
            for (const [name, x, y] of pts) {
                if (!/(query|key|value|dense)\\.weight$/.test(name)) continue;
                const gap = Math.min(...pts.filter((p) => p[0] !== name).map((p) => Math.hypot(p[1] - x, p[2] - y)));
                if (gap > bestGap) { bestGap = gap; best = [name, x, y]; }
            }
            return best;
        }"""
    )


def test_clusters_tab_draws_and_a_click_selects_the_tensor(ui, demo_models_dir):
    page = ui.page
    ui.tab("clusters")
    # the first visit draws the model's tensors, one SVG point each, coloured by type group
    expect(page.locator("#clusters-status")).to_contain_text(" points (tensors)", timeout=240_000)
    expected = api_get(ui.base, "/api/clusters")  # the features are cached now: a quick answer
    expect(page.locator("#clusters-status")).to_contain_text(f"{expected['count']} points")
    expect(page.locator("#clusters-plot .scatterlayer .point")).to_have_count(expected["count"])
    legend = page.evaluate("[...document.querySelectorAll('#clusters-plot .legendtext')].map((e) => e.textContent)")
    assert {"attention_qkv", "mlp_down", "norm"} <= set(legend)
    assert page.locator("#clusters-skipped summary").inner_text().startswith("2 tensor(s) not shown")

    target, x, y = isolated_point(page)
    page.mouse.move(x, y)
    expect(page.locator("#clusters-plot .hovertext")).to_contain_text(target)
    page.mouse.click(x, y)
    page.wait_for_function("(n) => window.__ts.state.selected === n", arg=target)
    expect(page.locator("#focus-name")).to_have_text(target)
    # the canvas outlines it: its cell was brought into view (reveal), inside the canvas
    assert page.evaluate("""(n) => {
        const v = window.__ts.canvas, it = v.items.find((i) => i.t.name === n);
        const x = v.tx + (it.x + 0.5) * v.scale, y = v.ty + (it.y + 0.5) * v.scale;
        return x > 0 && y > 0 && x < v.canvas.clientWidth && y < v.canvas.clientHeight;
    }""", target)

    # the heads of a matrix (the selected one fills the box): 12 points, and a 3-D map of them
    ui.tab("clusters")  # selecting a tensor showed it in Focus
    page.select_option("#clusters-mode", "heads")
    expect(page.locator("#clusters-tensor")).to_have_value(target)
    page.fill("#clusters-tensor", TARGET)
    page.select_option("#clusters-dims", "3")
    page.click("#clusters-run")
    expect(page.locator("#clusters-status")).to_contain_text(f"12 points (heads of {TARGET})", timeout=60_000)
    assert page.evaluate("document.getElementById('clusters-plot')._fullData[0].type") == "scatter3d"

    # a bad request shows its message beside the controls, not a broken page
    ui.guard.allow_status(400)
    page.fill("#clusters-tensor", "encoder.layer.0.output.LayerNorm.weight")
    page.click("#clusters-run")
    expect(page.locator("#clusters-error")).to_contain_text("2-D", timeout=60_000)
