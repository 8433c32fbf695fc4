"""The banner for an interrupted in-place apply, in real Chromium against the real server on a small
model: loading the page writes nothing, the banner offers both ways out, and the one clicked leaves
exactly the old bytes or exactly the patched ones (checked byte for byte), after which the banner
is gone. Any console error fails the test (PageGuard of test_browser.py).

Run: pytest -m browser tests/test_browser_recovery.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_browser import CHROMIUM, browser, guarded_page, server_env, serving  # noqa: F401
from .test_recovery import _expected, _interrupted

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]


@pytest.fixture
def torn_ui(browser, tmp_path, monkeypatch):  # noqa: F811 (the fixture imported above)
    model, original, patch = _interrupted(tmp_path, monkeypatch)
    with serving(server_env(model, tmp_path, ALLOWED_ROOTS=str(tmp_path)), tmp_path) as base:
        with guarded_page(browser, base, tmp_path) as u:
            yield u, model, original, patch


@pytest.mark.parametrize("choice", ["finish", "rollback"])
def test_banner_offers_both_choices_and_recovers_the_chosen_way(torn_ui, choice):
    ui, model, original, patch = torn_ui
    expect = playwright_api.expect
    torn = model.read_bytes()
    ui.open()
    banner = ui.page.locator("#recovery-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("interrupted")
    expect(banner).to_contain_text("p.hexpatch")
    expect(ui.page.locator("#recovery-finish")).to_be_enabled()
    expect(ui.page.locator("#recovery-rollback")).to_be_enabled()
    assert model.read_bytes() == torn  # the server opened it and the page read it: nothing written

    ui.page.click(f"#recovery-{choice}")
    expect(banner).to_be_hidden()
    assert model.read_bytes() == (original if choice == "rollback" else _expected(original, model, patch))
    assert ui.api("/api/model")["interrupted_apply"] is None
    ui.open()  # a fresh load: nothing pending, no banner
    expect(banner).to_be_hidden()
