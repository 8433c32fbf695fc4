"""The Transplant view in a real browser: a module transplant from one model into another, the plan
with its verdicts, the prominent warning, and the finished output (checked with safetensors)."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from .test_browser import CHROMIUM, browser, guarded_page, server_env, serving  # noqa: F401 (fixtures)
from .test_transplant import tiny_folder

pytestmark = pytest.mark.browser


def test_module_transplant_from_the_view_shows_plan_warning_and_output(browser, tmp_path):  # noqa: F811
    models = tmp_path / "models"
    target = tiny_folder(models / "target", hidden=16)
    source = tiny_folder(models / "wide", hidden=24, seed=4)
    env = server_env(target, tmp_path, ALLOWED_ROOTS=f"{models},{tmp_path / 'data'}")
    out = tmp_path / "data" / "exports" / "from-the-view"
    with serving(env, tmp_path) as base, guarded_page(browser, base, tmp_path) as ui:
        page = ui.page
        ui.open()
        # the tab strip still fits the sidebar's default width with the Transplant tab in it
        assert page.eval_on_selector(".tabs", "t => t.scrollWidth <= t.clientWidth + 1"), "the tabs overflow"
        ui.tab("transplant")
        page.wait_for_selector('#tp-target-list li[data-name="model.layers.1.self_attn.q_proj.weight"]')
        # the sidebar widens for two lists side by side
        assert page.eval_on_selector("#sidebar", "s => s.getBoundingClientRect().width") > 700
        page.fill("#tp-source-path", str(source))
        page.click("#tp-source-path ~ button")
        page.wait_for_function("document.getElementById('tp-source-facts').textContent.startsWith('wide')")
        page.fill("#tp-filter", "self_attn.q_proj")  # one filter narrows both lists
        assert page.locator("#tp-source-list li[data-name]").count() == 2
        # a module: click a tensor of it, then climb to its module on each side
        page.click('#tp-source-list li[data-name="model.layers.0.self_attn.q_proj.weight"]')
        page.click('#tp-target-list li[data-name="model.layers.1.self_attn.q_proj.weight"]')
        for side in ("source", "target"):
            page.locator(f"#tp-{side}-pick ~ button").click()
            page.locator(f"#tp-{side}-pick ~ button").click()
        assert page.input_value("#tp-source-pick") == "model.layers.0.self_attn"
        assert page.input_value("#tp-target-pick") == "model.layers.1.self_attn"
        page.click("#tp-add")
        page.click("#tp-plan-btn")
        page.wait_for_selector("#tp-plan-table tbody tr")
        rows = page.eval_on_selector_all("#tp-plan-table tbody tr", "rs => rs.map(r => [r.dataset.target, "
                                         "r.querySelector('.tp-verdict').textContent])")
        assert sorted(t for t, _ in rows) == sorted(f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkvo")
        assert all(v == "will fail" for _, v in rows), rows
        warning = page.locator("#tp-warning")
        assert warning.is_visible() and "fail during inference" in warning.text_content()
        assert page.is_disabled("#tp-stage")  # other shapes: never staged as byte edits
        page.fill("#tp-out", str(out))
        page.click("#tp-write")
        ui.wait_text("#tp-output", f"wrote {out}")
        assert "transplant-recipe.json" in page.text_content("#tp-output")
        # open the output: the page switches to it, and the view resets (nothing shown was about it)
        page.click("#tp-open-output")
        page.wait_for_function("document.getElementById('model-name').textContent === 'from-the-view'")
        page.wait_for_function("document.getElementById('tp-target-facts').textContent.startsWith('from-the-view')")
        assert page.locator("#tp-plan *").count() == 0 and page.locator("#tp-pairs li").count() == 0
        assert page.input_value("#tp-source-path") == "" and page.locator("#tp-output").count() == 0
    with safe_open(str(out / "model.safetensors"), "numpy") as f, \
            safe_open(str(source / "model.safetensors"), "numpy") as s:
        for p in "qkvo":
            name = f"model.layers.1.self_attn.{p}_proj.weight"
            assert f.get_tensor(name).tobytes() == s.get_tensor(name.replace(".1.", ".0.")).tobytes()
    recipe = json.loads((out / "transplant-recipe.json").read_text())
    assert recipe["map"] == [["model.layers.0.self_attn", "model.layers.1.self_attn"]]
