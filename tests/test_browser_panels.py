"""The page's panels in real Chromium (issue: switching models, editing while watching, keyboard):
a model switch resets every panel and fires no 404; revert is undoable from the Staged edits tab;
an already-applied patch says so; the edit controls come from the server's schema; numbers and
token texts in Investigate read as they should; the tabs follow the WAI-ARIA tabs pattern.

The server runs with default ALLOWED_ROOTS (no ALLOWED_ROOTS variable): opening the second demo
model from the header must work as it does for a user who just ran `make run`. Any console error
(a 404 included) fails a test, as in test_browser.py.

Run: pytest -m browser tests/test_browser_panels.py
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .test_browser import (  # noqa: F401 (fixtures)
    CHROMIUM, api_get, browser, guarded_page, server_env, serving, tensor_path,
)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

TENSOR = "model.layers.4.self_attn.q_proj.weight"  # BF16 [576, 576]
MINILM = "all-MiniLM-L6-v2"


def api_post(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body or {}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


@pytest.fixture
def default_server(tmp_path, smol_dir):
    """`tensor-surgery serve` on the SmolLM2 demo model with default ALLOWED_ROOTS."""
    with serving(server_env(smol_dir, tmp_path, drop={"ALLOWED_ROOTS"}), tmp_path) as base:
        yield base


@pytest.fixture
def ui(browser, default_server, tmp_path):
    with guarded_page(browser, default_server, tmp_path) as u:
        u.failed = []  # every 4xx/5xx answer the page got, whether or not it logs one
        u.page.on("response", lambda r: u.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        yield u


def select_tensor(ui, name: str) -> None:
    ui.page.evaluate("(n) => window.__ts.select(n)", name)
    expect(ui.page.locator("#focus-name")).to_have_text(name)
    ui.page.wait_for_function("document.getElementById('heatmap') && document.getElementById('heatmap').data")


def stage(base: str, body: dict) -> dict:
    return api_post(base, "/api/edit_tensor", body)["edit"]


def corner(r0, r1, c0, c1) -> dict:
    return {"dim0_start": r0, "dim0_end": r1, "dim1_start": c0, "dim1_end": c1}


# -- switching models ------------------------------------------------------------------------------


def test_model_switch_resets_every_panel_and_fires_no_404(ui):
    page, base = ui.page, ui.base
    stage(base, {"tensor_name": TENSOR, "op": "zero", "slice": corner(0, 2, 0, 2)})
    api_post(base, "/api/patches", {"name": "corner", "description": "two zeroed rows"})
    ui.open()
    ui.wait_staged(1)
    select_tensor(ui, TENSOR)
    page.wait_for_selector("#hex-table")
    # a verify report in Patches, a tool result in Investigate: both about SmolLM2
    ui.tab("patches")
    page.locator('#patch-list li[data-patch="corner.hexpatch"]').get_by_role("button", name="Verify").click()
    ui.wait_text("#verify-report", "already applied")
    ui.tab("investigate")
    page.select_option("#tool-picker", "list_tensors")
    page.fill('#tool-form input[name="name_contains"]', "layers.3.mlp.up")
    page.click("#tool-run")
    ui.wait_text("#tool-result", "model.layers.3.mlp.up_proj.weight")

    # the Open box offers the other demo model; opening it works with the default settings
    options = page.eval_on_selector_all("#model-choices option", "os => os.map(o => [o.value, o.label])")
    minilm = [v for v, label in options if MINILM in v]
    assert minilm and any("demo model" in label for _, label in options), options
    page.fill("#open-model-path", minilm[0])
    page.click("#open-model-form button[type=submit]")
    expect(page.locator("#model-name")).to_have_text(MINILM)
    ui.wait_rendered()
    # said: the model left has staged edits, kept for it
    ui.wait_text("#header-notice", "SmolLM2-135M-Instruct has 1 staged edit")
    expect(page.locator("#header-error")).to_be_hidden()
    # every panel reset
    ui.wait_staged(0)
    assert page.evaluate("window.__ts.state.selected") is None
    ui.tab("focus")
    expect(page.locator("#focus-empty")).to_contain_text(MINILM)
    expect(page.locator("#focus-name")).to_have_count(0)
    expect(page.locator("#edit-section")).to_be_hidden()
    expect(page.locator("#hex-section")).to_be_hidden()
    assert "tensor=" not in page.url
    ui.tab("edits")
    ui.wait_text("#edits-list", "No staged edits")
    ui.tab("patches")
    expect(page.locator("#verify-report")).to_have_count(0)
    ui.tab("investigate")
    expect(page.locator("#tool-result")).to_have_text("")
    # Live: plainly not a causal LM, and not loaded behind the user's back
    ui.tab("live")
    ui.wait_text("#live-kind", "need a causal language model")
    ui.wait_text("#live-kind", "BertModel")
    page.wait_for_timeout(1500)  # time for an (unwanted) automatic load to start
    assert api_get(base, "/api/live/status")["state"] == "unloaded"

    # back to SmolLM2 (offered as a recent model): its staged edit is there again, Focus is empty
    page.fill("#open-model-path", "")
    options = page.eval_on_selector_all("#model-choices option", "os => os.map(o => [o.value, o.label])")
    smol = [v for v, label in options if "SmolLM2" in v and "opened before" in label]
    assert smol, options
    page.fill("#open-model-path", smol[0])
    page.click("#open-model-form button[type=submit]")
    expect(page.locator("#model-name")).to_have_text("SmolLM2-135M-Instruct")
    ui.wait_staged(1)
    expect(page.locator("#live-kind")).to_be_hidden()
    ui.tab("focus")
    expect(page.locator("#focus-empty")).to_be_visible()
    assert ui.failed == [], ui.failed  # no 404 for a tensor the new model lacks, nor anything else
    ui.guard.assert_clean()


def test_switch_with_the_tensor_selected_drops_late_answers(ui):
    """Select a tensor and switch at once: the answers for it arrive after the switch and are dropped;
    a tensor the new model lacks is never asked for (no 404)."""
    page = ui.page
    ui.open()
    page.evaluate("(n) => window.__ts.select(n)", TENSOR)
    path = api_get(ui.base, "/api/models")["models"]
    minilm = next(m["path"] for m in path if MINILM in m["path"])
    page.fill("#open-model-path", minilm)
    page.click("#open-model-form button[type=submit]")
    expect(page.locator("#model-name")).to_have_text(MINILM)
    expect(page.locator("#focus-empty")).to_be_visible()
    page.wait_for_timeout(1000)
    expect(page.locator("#focus-name")).to_have_count(0)
    assert ui.failed == [], ui.failed


# -- editing ---------------------------------------------------------------------------------------


def test_revert_is_undoable(ui):
    page, base = ui.page, ui.base
    e1 = stage(base, {"tensor_name": TENSOR, "op": "fill", "value": 0.5, "slice": corner(0, 2, 0, 2)})
    e2 = stage(base, {"tensor_name": TENSOR, "op": "fill", "value": -0.25, "slice": corner(4, 6, 4, 6)})
    params = corner(0, 8, 0, 8)
    both = api_get(base, f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"]
    ui.open()
    ui.wait_staged(2)
    ui.tab("edits")
    page.locator(f'#edits-list li[data-edit-id="{e1["id"]}"]').get_by_role("button", name="Revert").click()
    ui.wait_staged(1)
    expect(page.locator("#edits-list li[data-edit-id]")).to_have_count(1)
    expect(page.locator(f'#edits-list li[data-edit-id="{e2["id"]}"]')).to_be_visible()
    undo = page.locator("#undo-btn")
    expect(undo).to_have_text(f"↶ Undo revert #{e1['id']}")
    undo.click()
    # #1 is back, #2 is still there: the revert was undone, not the newest edit
    ui.wait_staged(2)
    expect(page.locator(f'#edits-list li[data-edit-id="{e1["id"]}"]')).to_be_visible()
    expect(page.locator(f'#edits-list li[data-edit-id="{e2["id"]}"]')).to_be_visible()
    assert api_get(base, f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"] == both
    expect(page.locator("#redo-btn")).to_have_text(f"↷ Redo revert #{e1['id']}")
    page.click("#redo-btn")
    ui.wait_staged(1)
    expect(page.locator(f'#edits-list li[data-edit-id="{e1["id"]}"]')).to_have_count(0)
    ui.guard.assert_clean()


def test_verify_recognises_an_already_applied_patch(ui):
    page, base = ui.page, ui.base
    stage(base, {"tensor_name": TENSOR, "op": "fill", "value": 0.5, "slice": corner(0, 2, 0, 2)})
    api_post(base, "/api/patches", {"name": "half", "description": "0.5 in a corner"})
    ui.open()
    ui.tab("patches")
    item = page.locator('#patch-list li[data-patch="half.hexpatch"]')
    item.get_by_role("button", name="Verify").click()
    ui.wait_text("#verify-report", "half.hexpatch is already applied")
    expect(page.locator("#verify-report .conflicts")).to_have_count(0)  # no hex dumps of "conflicts"
    assert "conflict" not in page.inner_text("#verify-report")
    # loading it: refused, and the reason is given first
    ui.guard.allow_status(409)
    item.get_by_role("button", name="Load").click()
    ui.wait_text("#verify-report .error-msg", "was not loaded: it is already applied")
    ui.wait_staged(1)
    ui.guard.assert_clean()


def test_edit_controls_follow_the_schema_and_report_near_the_button(ui):
    page, base = ui.page, ui.base
    schema = api_get(base, "/openapi.json")
    ref = schema["paths"]["/api/edit_tensor"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    per_op = body["properties"]["op"]["x-op-parameters"]
    ui.open()
    select_tensor(ui, TENSOR)
    page.wait_for_selector("#op-select option", state="attached")
    shown = page.eval_on_selector_all("#op-select option", "os => os.map(o => o.value)")
    assert shown == [op for op in body["properties"]["op"]["enum"] if "slice" in per_op[op]["targets"]]
    modes = page.eval_on_selector_all("#op-select-mode option", "os => os.map(o => o.value)")
    select_ref = body["properties"]["select"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
    assert modes[1:] == schema["components"]["schemas"][select_ref]["properties"]["mode"]["enum"]
    for op in shown:  # each op's fields are the parameters the server lists for it
        page.select_option("#op-select", op)
        keys = page.eval_on_selector_all("#op-params .op-param", "es => es.map(e => e.dataset.key)")
        assert keys == per_op[op]["required"] + per_op[op]["optional"], op

    # x0 on a rectangle holding negative values: the preview reads 0, never "-0"
    data = api_get(base, f"/api/tensor_slice/{tensor_path(TENSOR)}", **corner(0, 4, 0, 4))["data"]
    assert any(v < 0 for row in data for v in row)
    ui.heatmap_click(0, 0)
    ui.heatmap_click(3, 3, shift=True)
    page.select_option("#op-select", "scale")
    page.fill("#op-params input[data-key=factor]", "0")
    page.click("#op-preview")
    ui.wait_text("#preview-box", "16 targeted")
    after = page.inner_text("#preview-box table tr:nth-child(3)").split()
    assert after == ["after", "0", "0", "0", "0", "0"], after  # min, max, mean, std, L2 of zeros

    # a cell: the Stage result shows next to the button, in view, and the label then shows the new value
    ui.heatmap_click(10, 20)
    page.fill("#cell-value", "0.75")
    page.click("#cell-preview")
    ui.wait_text("#preview-box", "1 targeted")
    page.click("#stage-btn")
    ui.wait_staged(1)
    msg = page.locator("#staged-msg")
    expect(msg).to_be_in_viewport()
    expect(page.locator("#cell-label")).to_have_text("[10, 20] = 0.75")
    ui.guard.assert_clean()


# -- Investigate and keyboard ---------------------------------------------------------------------


def test_investigate_shows_ids_shapes_and_token_texts_as_they_are(ui):
    page = ui.page
    ui.open()
    ui.tab("investigate")
    page.select_option("#tool-picker", "search_vocab")
    page.fill('#tool-form input[name="query"]', "France")
    page.click("#tool-run")
    ui.wait_text("#tool-result", "ĠFrance")
    text = page.inner_text("#tool-result")
    assert '" France"' in text and '"France"' in text  # two tokens, told apart by the leading space
    assert "33488" in text and "33,488" not in text  # token ids without thousands separators
    page.select_option("#tool-picker", "list_tensors")
    page.fill('#tool-form input[name="name_contains"]', "layers.3.mlp.up")
    page.click("#tool-run")
    ui.wait_text("#tool-result", "[1536, 576]")
    assert "884,736" in page.inner_text("#tool-result")  # a count keeps its separators
    ui.guard.assert_clean()


def test_tabs_follow_the_wai_aria_tabs_pattern(ui):
    page = ui.page
    ui.open()
    names = page.eval_on_selector_all('.tabs [role="tab"]', "ts => ts.map(t => t.dataset.tab)")

    def state():
        return page.evaluate("""() => ({
            selected: [...document.querySelectorAll('.tabs [role="tab"]')].filter(t => t.getAttribute('aria-selected') === 'true').map(t => t.dataset.tab),
            focused: document.activeElement && document.activeElement.dataset.tab,
            tabbable: [...document.querySelectorAll('.tabs [role="tab"]')].filter(t => t.tabIndex === 0).map(t => t.dataset.tab),
            visible: [...document.querySelectorAll('.tab-panel')].filter(p => !p.hidden).map(p => p.id),
        })""")

    page.focus('.tabs [data-tab="focus"]')
    for key, want in [("ArrowRight", names[1]), ("ArrowRight", names[2]), ("End", names[-1]),
                      ("ArrowRight", names[0]), ("ArrowLeft", names[-1]), ("Home", names[0])]:
        page.keyboard.press(key)
        s = state()
        assert s == {"selected": [want], "focused": want, "tabbable": [want], "visible": [f"tab-{want}"]}, (key, s)
    tab = page.locator('.tabs [data-tab="edits"]')
    assert tab.get_attribute("aria-controls") == "tab-edits"
    assert page.get_attribute("#tab-edits", "aria-labelledby") == tab.get_attribute("id")
    ui.guard.assert_clean()
