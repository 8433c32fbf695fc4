"""The canvas and the filter in real Chromium on the SmolLM2 demo model (272 tensors, 30 layers):
fit uses the viewport, zoom keeps the selection, labels stay, matches are framed, tiles can be sized
by parameter count, and a keyboard alone can pick a tensor.

The helpers and the console/offline guard are test_browser.py's; the server is shared by the tests of
this module (none of them stages anything: page preferences live in each test's own browser context).

Run: pytest -m browser tests/test_browser_canvas.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .test_browser import CHROMIUM, api_get, browser, guarded_page, server_env, serving  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

VIEWPORT = {"width": 1600, "height": 900}  # the canvas is 1120 px wide, as in the issue


@pytest.fixture(scope="module")
def canvas_server(tmp_path_factory, smol_dir):
    tmp = tmp_path_factory.mktemp("canvas")
    with serving(server_env(smol_dir, tmp, ALLOWED_ROOTS=f"{smol_dir},{tmp}"), tmp) as base:
        yield base


@pytest.fixture
def ui(browser, canvas_server, tmp_path):
    with guarded_page(browser, canvas_server, tmp_path, VIEWPORT) as u:
        u.open()
        yield u


@pytest.fixture(scope="module")
def listing(canvas_server) -> list[dict]:
    return api_get(canvas_server, "/api/tensors")


def grid_neighbour(listing: list[dict], layer: int, column: int) -> str:
    """The tensor of `layer` in the server's grid column `column` (the server's layout, not the canvas's)."""
    row = sorted((t for t in listing if t["metadata_for_canvas"]["layer_index"] == layer),
                 key=lambda t: t["metadata_for_canvas"]["canvas_x"])
    return row[column]["name"]


# tile rectangles on screen (canvas-relative CSS px), as the canvas draws them
RECTS = """(names) => {
    const v = window.__ts.canvas;
    const pick = names ? v.items.filter((it) => names.includes(it.t.name)) : v.items.filter((it) => v.visible(it));
    return pick.map((it) => ({name: it.t.name, x: v.tx + it.x * v.scale, y: v.ty + it.y * v.scale,
                              w: it.w * v.scale, h: it.h * v.scale}));
}"""

VIEW = "() => { const v = window.__ts.canvas; return {scale: v.scale, fit: v.fitScale, w: v.width, h: v.height, tx: v.tx, ty: v.ty}; }"

NEXT_FRAME = "() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => ok())))"

# every "select" on the page's event bus, in order
RECORD_SELECTS = """async () => {
    const { on } = await import('/static/js/state.js');
    window.__selects = [];
    on('select', (name) => window.__selects.push(name));
}"""


def inside(r: dict, view: dict, margin: float = 0) -> bool:
    return (r["x"] >= -margin and r["y"] >= -margin and r["x"] + r["w"] <= view["w"] + margin
            and r["y"] + r["h"] <= view["h"] + margin)


def uncovered(page, rects: list[dict]) -> list[str]:
    """Names of tiles whose centre is covered by something other than the canvas (legend, buttons)."""
    return page.evaluate(
        """(rects) => { const r = document.getElementById('tensor-canvas').getBoundingClientRect();
            return rects.filter((t) => document.elementFromPoint(r.left + t.x + t.w / 2, r.top + t.y + t.h / 2)?.id !== 'tensor-canvas')
                        .map((t) => t.name); }""",
        rects,
    )


def test_fit_spreads_the_model_over_the_canvas_with_heatmaps(ui):
    page = ui.page
    def check_fit(along: str):
        view = page.evaluate(VIEW)
        rects = page.evaluate(RECTS, None)
        assert len(rects) == 272
        span = {"w": max(r["x"] + r["w"] for r in rects) - min(r["x"] for r in rects),
                "h": max(r["y"] + r["h"] for r in rects) - min(r["y"] for r in rects)}
        # the model spans most of the width (it used to be packed into the left ~170 px), or of the
        # height when that is what limits the tiles
        assert span[along] > 0.75 * view[along], (span, view)
        assert all(inside(r, view) for r in rects)
        assert uncovered(page, rects) == []
        # tiles are big enough to show the tensor's own heatmap at fit (were ~10 px flat squares)
        assert min(r["w"] for r in rects) >= 16

    check_fit("w")
    # a smaller, squarer canvas: laid out again for it
    page.set_viewport_size({"width": 1280, "height": 760})
    page.wait_for_function("(w) => Math.abs(window.__ts.canvas.width - w) < 2 && window.__ts.canvas.atFit", arg=1280 - 480)
    page.wait_for_timeout(300)  # the refit waits for the resizing to settle
    check_fit("h")
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(300)

    # ... and they do: once the thumbnails arrived, a q_proj tile holds many colours, not one
    name = "model.layers.12.self_attn.q_proj.weight"
    page.wait_for_function("(n) => window.__ts.canvas.thumbs.get(n)?.img", arg=name, timeout=60_000)
    (r,) = page.evaluate(RECTS, [name])
    colours = page.evaluate(
        """([x, y, w, h]) => new Promise((ok) => requestAnimationFrame(() => {
            const v = window.__ts.canvas, d = v.dpr;
            const px = v.ctx.getImageData(Math.round((x + 3) * d), Math.round((y + 3) * d),
                                          Math.round((w - 6) * d), Math.round((h - 6) * d)).data;
            const seen = new Set();
            for (let i = 0; i < px.length; i += 4) seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
            ok(seen.size);
        }))""",
        [r["x"], r["y"], r["w"], r["h"]],
    )
    assert colours >= 20, colours


def test_zoom_buttons_and_keys_keep_the_selection_in_view(ui):
    page = ui.page
    fit = page.evaluate(VIEW)
    # with nothing selected, keyboard zoom goes around the pointer: the tile under it stays under it
    other = "model.layers.3.mlp.gate_proj.weight"
    x, y = ui.canvas_point(other)
    page.mouse.move(x, y)
    page.focus("#tensor-canvas")
    for _ in range(4):
        page.keyboard.press("+")
    assert page.evaluate(VIEW)["scale"] == pytest.approx(fit["scale"] * 1.25 ** 4, rel=1e-6)
    hit = page.evaluate(
        """([x, y]) => { const v = window.__ts.canvas, r = v.canvas.getBoundingClientRect();
            const i = v.hit(x - r.left, y - r.top); return i >= 0 ? v.items[i].t.name : null; }""", [x, y])
    assert hit == other

    # a selected tile far from the centre (the last layer's down_proj) stays in view under + and -
    page.click("#zoom-fit")
    name = "model.layers.29.mlp.down_proj.weight"
    page.mouse.click(*ui.canvas_point(name))
    expect(page.locator("#focus-name")).to_have_text(name)
    for _ in range(3):
        page.click("#zoom-in")
    view = page.evaluate(VIEW)
    assert view["scale"] == pytest.approx(fit["scale"] * 1.4 ** 3, rel=1e-6)
    (r,) = page.evaluate(RECTS, [name])
    assert inside(r, view), (r, view)
    page.focus("#tensor-canvas")
    for key in "++++-":
        page.keyboard.press(key)
    view = page.evaluate(VIEW)
    assert view["scale"] == pytest.approx(fit["scale"] * 1.4 ** 3 * 1.25 ** 3, rel=1e-6)
    (r,) = page.evaluate(RECTS, [name])
    assert inside(r, view), (r, view)


def test_layer_labels_stay_pinned_and_say_what_the_band_is(ui):
    page = ui.page
    page.evaluate(NEXT_FRAME)
    labels = [d["label"] for d in page.evaluate("() => window.__ts.canvas.labelsDrawn")]
    assert labels[:2] == ["embed", "L0"] and "L29" in labels
    assert labels[-1] == "norm"  # model.norm: SmolLM2 ties its head to the embedding; no "head" row
    assert "head" not in labels

    # zoomed in on the middle of layer 10: the band's left edge is far off screen, its label is not
    page.evaluate("() => window.__ts.canvas.centerOn('model.layers.10.mlp.up_proj.weight', 240)")
    page.evaluate(NEXT_FRAME)
    (r,) = page.evaluate(RECTS, ["model.layers.10.self_attn.q_proj.weight"])
    assert r["x"] + r["w"] < 0  # the first tile of the band is off screen to the left
    drawn = page.evaluate("() => window.__ts.canvas.labelsDrawn")
    l10 = [d for d in drawn if d["label"] == "L10"]
    assert l10 and l10[0]["pinned"] and 0 <= l10[0]["x"] < 40, drawn

    # hover names the band, not "layer -1"
    page.click("#zoom-fit")
    page.mouse.move(*ui.canvas_point("model.embed_tokens.weight"))
    expect(page.locator("#canvas-tooltip")).to_contain_text("before the layers")
    expect(page.locator("#canvas-tooltip")).not_to_contain_text("layer -1")
    # the two layernorms keep what tells them apart
    shorts = page.evaluate(
        """() => ['input_layernorm', 'post_attention_layernorm'].map((r) =>
            window.__ts.canvas.items.find((it) => it.t.name === `model.layers.0.${r}.weight`).short)""")
    assert shorts == ["input_ln", "post_attn_ln"]


def test_filter_frames_its_matches_even_with_others_hidden(ui):
    page = ui.page
    fit = page.evaluate(VIEW)
    page.check("#filter-hide")
    page.fill("#filter-text", "layers.25.mlp")
    ui.wait_text("#filter-count", "3 of 272 match")
    page.evaluate(NEXT_FRAME)
    names = [f"model.layers.25.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    rects = page.evaluate(RECTS, None)  # what is still shown
    assert sorted(r["name"] for r in rects) == sorted(names)
    view = page.evaluate(VIEW)
    assert view["scale"] > 1.5 * fit["scale"]  # framed: zoomed in on them, not left where they were
    assert all(inside(r, view) for r in rects)
    assert uncovered(page, rects) == []
    # ... in the middle of the view (with "hide others" the view stayed empty until "fit" was pressed)
    cx = (min(r["x"] for r in rects) + max(r["x"] + r["w"] for r in rects)) / 2
    cy = (min(r["y"] for r in rects) + max(r["y"] + r["h"] for r in rects)) / 2
    assert abs(cx - view["w"] / 2) < 0.1 * view["w"] and abs(cy - view["h"] / 2) < 0.1 * view["h"], (cx, cy, view)

    page.fill("#filter-text", "")
    page.uncheck("#filter-hide")
    ui.wait_text("#filter-count", "272 tensors")
    page.evaluate(NEXT_FRAME)
    back = page.evaluate(VIEW)
    assert back["scale"] == pytest.approx(fit["scale"])


def test_size_mode_gives_each_tile_an_area_proportional_to_its_values(ui, smol_dir):
    from safetensors import safe_open

    page = ui.page
    page.click("#zoom-size")
    expect(page.locator("#zoom-size")).to_have_attribute("aria-pressed", "true")
    page.evaluate(NEXT_FRAME)
    rects = {r["name"]: r for r in page.evaluate(RECTS, None)}
    with safe_open(str(smol_dir / "model.safetensors"), "np") as f:  # the oracle: the file's own shapes
        numel = {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}
    assert set(rects) == set(numel)
    ref = "model.layers.0.self_attn.q_proj.weight"  # 576 x 576
    per_value = rects[ref]["w"] * rects[ref]["h"] / numel[ref]
    big = [n for n in numel if numel[n] >= 576 * 64]  # norms get a minimum width to stay pickable
    for n in big:
        assert rects[n]["w"] * rects[n]["h"] / numel[n] == pytest.approx(per_value, rel=1e-9), n
    emb = "model.embed_tokens.weight"  # 28M values: 85 times a q_proj tile
    assert rects[emb]["w"] * rects[emb]["h"] == pytest.approx(85.33 * rects[ref]["w"] * rects[ref]["h"], rel=1e-3)
    # no two tiles overlap, and the model still fills the width
    rs = sorted(rects.values(), key=lambda r: (r["y"], r["x"]))
    for a in rs:
        for b in rs:
            if a is not b and a["x"] < b["x"] + b["w"] - 1e-6 and b["x"] < a["x"] + a["w"] - 1e-6:
                assert not (a["y"] < b["y"] + b["h"] - 1e-6 and b["y"] < a["y"] + a["h"] - 1e-6), (a, b)
    view = page.evaluate(VIEW)
    assert max(r["x"] + r["w"] for r in rs) - min(r["x"] for r in rs) > 0.75 * view["w"]
    assert all(inside(r, view) for r in rs)
    # a preference of the page: kept across a reload
    page.reload()
    ui.wait_rendered()
    expect(page.locator("#zoom-size")).to_have_attribute("aria-pressed", "true")
    page.focus("#tensor-canvas")
    page.keyboard.press("s")  # the key toggles it back
    expect(page.locator("#zoom-size")).to_have_attribute("aria-pressed", "false")
    (r,) = page.evaluate(RECTS, [ref])
    assert r["w"] == pytest.approx(r["h"])


def test_keyboard_alone_selects_a_tensor_from_the_canvas(ui, listing):
    page = ui.page
    page.evaluate(RECORD_SELECTS)
    # reach the canvas with Tab, as a keyboard user does
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement?.id") == "tensor-canvas":
            break
    assert page.evaluate("document.activeElement?.id") == "tensor-canvas"
    # the cursor starts on the first tile (the embedding), Down goes to layer 0, Right one role on
    page.keyboard.press("ArrowDown")
    assert page.evaluate("() => window.__ts.canvas.items[window.__ts.canvas.cursor].t.name") == "model.embed_tokens.weight"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    want = grid_neighbour(listing, 0, 1)
    expect(page.locator("#canvas-tooltip")).to_contain_text(want)
    expect(page.locator("#canvas-status")).to_contain_text(want)
    assert page.evaluate("window.__selects") == []  # moving does not select
    page.keyboard.press("Enter")
    expect(page.locator("#focus-name")).to_have_text(want)
    assert page.evaluate("window.__selects") == [want]

    # PageDown: the same role five layers on; shift+arrows pan without moving the cursor
    for _ in range(25):
        page.keyboard.press("PageDown")
    want = grid_neighbour(listing, 25, 1)
    page.keyboard.press(" ")
    expect(page.locator("#focus-name")).to_have_text(want)
    (r,) = page.evaluate(RECTS, [want])
    assert inside(r, page.evaluate(VIEW))  # the cursor was kept on screen
    tx = page.evaluate(VIEW)["tx"]
    page.keyboard.press("Shift+ArrowRight")
    assert page.evaluate(VIEW)["tx"] != tx
    assert page.evaluate("() => window.__ts.canvas.items[window.__ts.canvas.cursor].t.name") == want

    # a click fires the very same event
    other = grid_neighbour(listing, 3, 4)
    page.click("#zoom-fit")
    page.mouse.click(*ui.canvas_point(other))
    expect(page.locator("#focus-name")).to_have_text(other)
    assert page.evaluate("window.__selects") == [grid_neighbour(listing, 0, 1), want, other]


def test_filter_enter_opens_what_was_just_typed_and_matches_take_focus(ui):
    page = ui.page
    page.evaluate(RECORD_SELECTS)
    box = page.locator("#filter-text")
    box.click()
    page.keyboard.type("layers.3.mlp.up_proj")
    expect(page.locator("#filter-matches li.match")).to_have_text(["model.layers.3.mlp.up_proj.weight"])
    # new text and Enter at once, well inside the filter's 120 ms debounce
    page.keyboard.press("Control+a")
    page.keyboard.type("layers.7.mlp.up_proj")
    page.keyboard.press("Enter")
    expect(page.locator("#focus-name")).to_have_text("model.layers.7.mlp.up_proj.weight")
    assert page.evaluate("window.__selects") == ["model.layers.7.mlp.up_proj.weight"]

    # the matches are a listbox: ArrowDown from the box, arrows between them, Enter or Space opens
    box.fill("layers.9.self_attn")
    expect(page.locator("#filter-matches li.match")).to_have_count(4)
    box.focus()
    page.keyboard.press("ArrowDown")
    first = page.locator("#filter-matches li.match").first
    expect(first).to_be_focused()
    page.keyboard.press("ArrowDown")
    second = page.locator("#filter-matches li.match").nth(1)
    expect(second).to_be_focused()
    name = second.inner_text()
    page.keyboard.press("Enter")
    expect(page.locator("#focus-name")).to_have_text(name)
    page.keyboard.press("ArrowUp")
    expect(first).to_be_focused()
    page.keyboard.press(" ")
    expect(page.locator("#focus-name")).to_have_text(first.inner_text())
    # one tab stop for the list: Tab from the box lands on the match last moved to
    box.focus()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement?.classList.contains('match')"):
            break
    expect(first).to_be_focused()
    assert page.evaluate("window.__selects")[-2:] == [name, first.inner_text()]
