"""Signed patches in the Patches tab, in real Chromium against the real server on a small model: each
patch's signature status is shown, trusted / unknown key / INVALID / unsigned distinctly (INVALID in
the error colour); loading the INVALID one is refused unless the user confirms the override, and
nothing is staged while it is refused. Any console error fails the test (PageGuard of test_browser.py).

Run: pytest -m browser tests/test_browser_signing.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tensor_surgery.surgery import signing as sg

from .conftest import write_tiny_llama
from .test_browser import CHROMIUM, api_get, browser, guarded_page, server_env, serving  # noqa: F401
from .test_signing import real_patch

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]


@pytest.fixture
def signed_ui(browser, tmp_path):  # noqa: F811 (the fixture imported above)
    model = write_tiny_llama(tmp_path / "m" / "model.safetensors")
    mine = sg.KeyStore(tmp_path / "data")  # the server's DATA_DIR: alice is trusted there
    mine.new("alice")
    theirs = sg.KeyStore(tmp_path / "elsewhere")
    theirs.new("bob")
    plain = real_patch(model)
    docs = {
        "unsigned": plain.to_json(),
        "trusted": json.loads(sg.sign(plain, mine.private_key("alice"), "alice").dumps()),
        "unknown": json.loads(sg.sign(plain, theirs.private_key("bob"), "bob").dumps()),
    }
    docs["invalid"] = {**docs["trusted"], "description": docs["trusted"]["description"] + " (edited)"}
    (tmp_path / "patches").mkdir()
    for kind, doc in docs.items():
        (tmp_path / "patches" / f"{kind}.hexpatch").write_text(json.dumps(doc))
    with serving(server_env(model, tmp_path, ALLOWED_ROOTS=str(tmp_path)), tmp_path) as base:
        with guarded_page(browser, base, tmp_path) as u:
            yield u


def test_patches_tab_shows_signatures_and_asks_before_loading_an_invalid_one(signed_ui):
    ui = signed_ui
    page, expect = ui.page, playwright_api.expect
    ui.open()
    ui.tab("patches")

    def item(kind):
        return page.locator(f'#patch-list li[data-patch="{kind}.hexpatch"]')

    def badge(kind):
        return item(kind).locator(".signature")

    shown = {"trusted": ("trusted", "signed by alice (trusted)"),
             "unknown": ("unknown_key", "signed by bob (unknown key "),
             "invalid": ("invalid", "INVALID signature (claims alice): the signature does not match"),
             "unsigned": ("unsigned", "unsigned")}
    for kind, (status, text) in shown.items():
        expect(badge(kind)).to_have_attribute("data-signature", status)
        expect(badge(kind)).to_contain_text(text)
    colours = {kind: badge(kind).evaluate("(e) => getComputedStyle(e).color") for kind in shown}
    danger = page.evaluate("""() => {
        const d = document.createElement('div'); d.className = 'error-msg'; d.textContent = 'x';
        document.body.append(d); const c = getComputedStyle(d).color; d.remove(); return c; }""")
    assert colours["invalid"] == danger and len(set(colours.values())) == 4, colours
    assert badge("invalid").evaluate("(e) => getComputedStyle(e).fontWeight") == "600"

    # Verify says the load would be refused, and why
    item("invalid").get_by_role("button", name="Verify").click()
    ui.wait_text("#verify-report", "invalid.hexpatch would be refused")
    ui.wait_text("#verify-report", "INVALID")

    # Load: refused (422), and the page asks; declining stages nothing
    ui.guard.allow_status(422, 2)
    with page.expect_event("dialog") as asked:
        item("invalid").get_by_role("button", name="Load").click()
    assert asked.value.type == "confirm" and "INVALID" in asked.value.message
    asked.value.dismiss()
    ui.wait_text("#verify-report", "invalid.hexpatch was not loaded: its signature is INVALID")
    assert api_get(ui.base, "/api/edits")["edits"] == []

    # confirming is the explicit override: it loads
    with page.expect_event("dialog") as asked:
        item("invalid").get_by_role("button", name="Load").click()
    asked.value.accept()
    ui.wait_text("#verify-report", "loaded into staging")
    ui.wait_text("#verify-report", "applied anyway, as asked")
    ui.wait_staged(1)
    assert [e["description"].startswith("patch invalid.hexpatch") for e in api_get(ui.base, "/api/edits")["edits"]] == [True]
