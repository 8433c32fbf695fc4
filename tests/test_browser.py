"""The whole page in real Chromium against the real server (a subprocess on the SmolLM2 demo model).

Every test fails on any JS console error or uncaught exception, and on any request to a URL that
is not this server (the page must work offline: Plotly is served locally). A 4xx answer the test
provokes on purpose (a slice past the end, a patch that conflicts) makes Chromium log "Failed to
load resource"; tests allow exactly those with `ui.guard.allow_status(...)`.

Run: pytest -m browser tests/test_browser.py   (Debian chromium at /usr/bin/chromium, or CHROMIUM)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 20_000

TENSOR = "model.layers.4.self_attn.q_proj.weight"  # BF16 [576, 576]
CELL = (10, 20)  # set to 0.75
RECT = ((12, 24), (15, 28))  # scaled x0.5: rows 12..15, cols 24..28
NEIGHBOUR = "model.layers.4.self_attn.k_proj.weight"  # never edited
HEX_AT = (30, 40)  # its low byte is rewritten in the hex view
NEW_VALUE = 0.75  # exact in BF16

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")


# -- the real server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command() -> list[str]:
    script = Path(sys.executable).with_name("tensor-surgery")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from tensor_surgery.cli import main; main()", "serve"]


SERVER_START_S = 120  # opening the model on a busy 2-core machine


def start_server(env: dict, cwd: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `tensor-surgery serve` and wait until it answers; a lost race for the port is retried."""
    for _attempt in range(3):
        port = free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*server_command(), "--port", str(port)], env=env, cwd=cwd,
                                    stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_S
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(base + "/api/model", timeout=5) as r:
                    if r.status == 200:
                        return proc, base
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                stop_server(proc)
                raise RuntimeError(f"server did not answer in {SERVER_START_S} s:\n{log_path.read_text()}")
            time.sleep(0.1)
        if "address already in use" not in log_path.read_text().lower():
            break
    raise RuntimeError(f"server exited ({proc.returncode}):\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SERVER_SETTINGS = {"LLM_MODEL", "DATABASE_URL", "AUTH_TOKEN", "HOST"}  # never inherited by a test server


def server_env(model: Path, tmp: Path, drop: set[str] = frozenset(), **settings: str) -> dict:
    """The environment of a test server on `model`: ours without the settings a developer may have
    exported (and `drop`), DATA_DIR and PATCH_DIR in `tmp`, then `settings` (e.g. ALLOWED_ROOTS)."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_SETTINGS | set(drop)}
    return env | {"MODEL_PATH": str(model), "DATA_DIR": str(tmp / "data"), "PATCH_DIR": str(tmp / "patches"),
                  "HF_HUB_OFFLINE": "1", **settings}


@contextmanager
def serving(env: dict, tmp: Path) -> Iterator[str]:
    """`tensor-surgery serve` with `env` in `tmp` (cwd: so no developer .env is read); yields its URL."""
    proc, base = start_server(env, tmp, tmp / "server.log")
    try:
        yield base
    finally:
        stop_server(proc)


@contextmanager
def guarded_page(browser, base: str, tmp_path: Path, viewport: dict | None = None) -> Iterator[UI]:
    """A fresh browser context and page on `base`, watched by a PageGuard that fails the test on any
    console error, page error or request to another address; the page is not opened yet."""
    context = browser.new_context(viewport=viewport or {"width": 1440, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    guard = PageGuard(base)
    page.on("console", guard.on_console)
    page.on("pageerror", guard.on_pageerror)
    page.on("request", guard.on_request)
    try:
        yield UI(page, base, guard, tmp_path)
    finally:
        context.close()
    guard.assert_clean()


@pytest.fixture
def server(tmp_path, smol_dir):
    """`tensor-surgery serve` on a free port; DATA_DIR and PATCH_DIR in tmp_path. Yields the base URL."""
    with serving(server_env(smol_dir, tmp_path, ALLOWED_ROOTS=f"{smol_dir},{tmp_path}"), tmp_path) as base:
        yield base


def api_get(base: str, path: str, **params) -> dict:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def tensor_path(name: str) -> str:
    return urllib.parse.quote(name, safe="/")


# -- the browser -----------------------------------------------------------------------------------


_shared: dict = {}  # the one Playwright and Chromium of the session


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the session. Shared by reference count: a module that imports this fixture
    gets a fixture of its own from pytest, and Playwright's sync API runs once per thread."""
    if not _shared:
        pw = playwright_api.sync_playwright().start()
        try:
            _shared.update(pw=pw, browser=pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS), users=0)
        except BaseException:
            pw.stop()
            raise
    _shared["users"] += 1
    try:
        yield _shared["browser"]
    finally:
        _shared["users"] -= 1
        if not _shared["users"]:
            _shared.pop("browser").close()
            _shared.pop("pw").stop()
            _shared.clear()


_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


class PageGuard:
    """Collects console errors, uncaught exceptions and requests to other origins."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.problems: list[str] = []
        self.allowed: dict[int, int] = {}  # HTTP status -> how many "Failed to load resource" are expected

    def allow_status(self, status: int, count: int = 1) -> None:
        self.allowed[status] = self.allowed.get(status, 0) + count

    def on_console(self, msg) -> None:
        if msg.type != "error":
            return
        m = _FAILED_LOAD.search(msg.text)
        if m and self.allowed.get(int(m[1]), 0) > 0:
            self.allowed[int(m[1])] -= 1
            return
        self.problems.append(f"console error: {msg.text} ({msg.location})")

    def on_pageerror(self, err) -> None:
        self.problems.append(f"uncaught exception: {err}")

    def on_request(self, req) -> None:
        url = req.url
        if url.startswith("data:") or url == self.base or url.startswith(self.base + "/"):
            return
        self.problems.append(f"request to another origin: {url}")

    def assert_clean(self) -> None:
        problems, self.problems = self.problems, []  # reported once: by the test, or else at teardown
        assert not problems, "\n".join(problems)


class UI:
    """The page plus helpers that act the way a user does (clicks at screen coordinates)."""

    def __init__(self, page, base: str, guard: PageGuard, tmp_path: Path) -> None:
        self.page = page
        self.base = base
        self.guard = guard
        self.tmp_path = tmp_path

    def api(self, path: str, **params) -> dict:
        return api_get(self.base, path, **params)

    def open(self) -> None:
        self.page.goto(self.base + "/")
        self.wait_rendered()

    def wait_rendered(self) -> None:
        self.page.wait_for_function(
            "window.__tsMetrics && window.__tsMetrics.firstRenderMs !== null && window.__ts && window.__ts.canvas.items.length > 0"
        )

    def wait_text(self, selector: str, text: str) -> None:
        playwright_api.expect(self.page.locator(selector)).to_contain_text(text, timeout=TIMEOUT_MS)

    def wait_staged(self, n: int) -> None:
        playwright_api.expect(self.page.locator("#staged-badge")).to_have_text(f"{n} staged", timeout=TIMEOUT_MS)

    def tab(self, name: str) -> None:
        self.page.click(f'.tabs [data-tab="{name}"]')

    # canvas

    def canvas_point(self, name: str) -> tuple[float, float]:
        """Page coordinates of the centre of a tensor's cell on the canvas."""
        x, y = self.page.evaluate(
            """(name) => {
                const v = window.__ts.canvas;
                const it = v.items.find((i) => i.t.name === name);
                const r = v.canvas.getBoundingClientRect();
                return [r.left + v.tx + (it.x + 0.5) * v.scale, r.top + v.ty + (it.y + 0.5) * v.scale];
            }""",
            name,
        )
        hit = self.page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.id", [x, y])
        assert hit == "tensor-canvas", f"{name}'s cell at ({x:.0f}, {y:.0f}) is covered by #{hit}"
        return x, y

    def staged_corner(self, name: str) -> list[int]:
        """Zoom to a tensor's cell and read the pixel where the staged mark (top-right corner) goes."""
        x, y = self.page.evaluate(
            """(name) => {
                const v = window.__ts.canvas;
                v.centerOn(name, 48);
                const it = v.items.find((i) => i.t.name === name);
                const pad = Math.max(1, v.scale * 0.1), w = v.scale - pad;
                return [v.tx + it.x * v.scale + pad / 2 + w - 2, v.ty + it.y * v.scale + pad / 2 + 1.5];
            }""",
            name,
        )
        return self.canvas_pixel(x, y)

    def canvas_pixel(self, sx: float, sy: float) -> list[int]:
        """RGB of the canvas at canvas-relative CSS pixels, after the next frame is drawn."""
        return self.page.evaluate(
            """([sx, sy]) => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => {
                const v = window.__ts.canvas;
                const d = v.ctx.getImageData(Math.round(sx * v.dpr), Math.round(sy * v.dpr), 1, 1).data;
                ok([d[0], d[1], d[2]]);
            })))""",
            [sx, sy],
        )

    # heatmap

    def heatmap_click(self, row: int, col: int, shift: bool = False) -> None:
        """Hover, then click the heatmap cell at tensor indices (row, col) of the viewed dims."""
        self.page.locator("#heatmap").scroll_into_view_if_needed()
        x, y = self.page.evaluate(
            """([row, col]) => {
                const gd = document.getElementById('heatmap');
                const L = gd._fullLayout, r = gd.getBoundingClientRect();
                return [r.left + L._size.l + L.xaxis.d2p(col), r.top + L._size.t + L.yaxis.d2p(row)];
            }""",
            [row, col],
        )
        self.page.mouse.move(x, y)
        # Plotly clicks the point it hovers last; wait until that is our cell
        self.page.wait_for_function(
            """([row, col]) => {
                const h = document.getElementById('heatmap')._hoverdata;
                return h && h.length && h[0].x === col && h[0].y === row;
            }""",
            arg=[row, col],
        )
        if shift:
            self.page.keyboard.down("Shift")
        self.page.mouse.click(x, y)
        if shift:
            self.page.keyboard.up("Shift")

    def heatmap_z(self) -> list:
        return self.page.evaluate("document.getElementById('heatmap').data[0].z")


@pytest.fixture
def ui(browser, server, tmp_path):
    with guarded_page(browser, server, tmp_path) as u:
        yield u


def css_rgb(page, var: str) -> list[int]:
    color = page.evaluate("(v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim()", var)
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", color), color
    return [int(color[i:i + 2], 16) for i in (1, 3, 5)]


def color_near(a: list[int], b: list[int], tol: int = 40) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) < tol


def read_export(folder: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no .safetensors in {folder}: {list(folder.iterdir())}"
    for f in files:
        with safe_open(str(f), "pt") as st:
            if name in st.keys():
                return st.get_tensor(name).float().numpy()
    raise AssertionError(f"{name} not in the export {folder}")


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.browser
def test_filter_finds_tensors_and_reports_bad_regex(ui):
    page = ui.page
    ui.open()
    page.fill("#filter-text", "layers.4.self_attn.q_proj")
    playwright_api.expect(page.locator("#filter-matches li")).to_have_text([TENSOR])
    page.fill("#filter-text", r"/layers\.(3|4)\.mlp\.down/")
    playwright_api.expect(page.locator("#filter-matches li")).to_have_text(
        ["model.layers.3.mlp.down_proj.weight", "model.layers.4.mlp.down_proj.weight"]
    )
    ui.wait_text("#filter-count", "2 of 272 match")
    page.fill("#filter-text", r"/layers\.(/")
    ui.wait_text("#filter-error", "not a valid regular expression")
    assert page.locator("#filter-error").is_visible()
    page.fill("#filter-text", "")
    playwright_api.expect(page.locator("#filter-error")).to_have_text("")
    ui.wait_text("#filter-count", "272 tensors")

    # at the fitted view every tensor's cell can be clicked: none is under the legend or the buttons
    covered = page.evaluate(
        """() => {
            const v = window.__ts.canvas, r = v.canvas.getBoundingClientRect();
            return v.items.filter((it) => {
                const e = document.elementFromPoint(r.left + v.tx + (it.x + 0.5) * v.scale, r.top + v.ty + (it.y + 0.5) * v.scale);
                return !e || e.id !== "tensor-canvas";
            }).map((it) => it.t.name);
        }"""
    )
    assert covered == []
    ui.guard.assert_clean()


@pytest.mark.browser
def test_journey_edit_save_reload_load_export(ui):
    page, tmp = ui.page, ui.tmp_path
    ui.open()

    # find the tensor with the footer filter, then select it by clicking its cell on the canvas
    page.fill("#filter-text", "layers.4.self_attn.q_proj")
    playwright_api.expect(page.locator("#filter-matches li")).to_have_text([TENSOR])
    page.mouse.click(*ui.canvas_point(TENSOR))
    playwright_api.expect(page.locator("#focus-name")).to_have_text(TENSOR)
    ui.wait_text("#focus-facts", "BF16")
    ui.wait_text("#focus-facts", "[576, 576]")
    assert page.evaluate("window.__ts.state.selected") == TENSOR

    # a slice: rows 8..40, cols 16..48; the heatmap holds exactly what the API answers
    for sel, v in {"#dim0-start": 8, "#dim0-end": 40, "#dim1-start": 16, "#dim1-end": 48}.items():
        page.fill(sel, str(v))
    page.click("#slice-apply")
    params = {"dim0_start": 8, "dim0_end": 40, "dim1_start": 16, "dim1_end": 48}
    want = ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", **params)
    ui.wait_text("#slice-info", want["slice_definition"])
    assert want["slice_shape"] == [32, 32]
    assert ui.heatmap_z() == want["data"]
    base_values = np.array(want["data"], dtype=np.float64)  # rows 8.., cols 16..

    # edit one cell: click it, type, preview, stage
    ui.heatmap_click(*CELL)
    ui.wait_text("#cell-label", f"[{CELL[0]}, {CELL[1]}]")
    page.fill("#cell-value", str(NEW_VALUE))
    page.click("#cell-preview")
    ui.wait_text("#preview-box", "1 targeted")
    ui.wait_text("#preview-box", "1 values changed")
    ui.wait_staged(0)  # a preview stages nothing
    page.click("#stage-btn")
    ui.wait_staged(1)
    ui.wait_text("#staged-msg", "staged:")
    staged = ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)
    assert staged["data"][CELL[0] - 8][CELL[1] - 16] == NEW_VALUE
    assert ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", **params)["data"] == want["data"]  # base untouched
    ui.wait_text("#slice-info", "staged")  # the heatmap switched to the staged view
    page.wait_for_function(
        "([r, c, v]) => document.getElementById('heatmap').data[0].z[r][c] === v",
        arg=[CELL[0] - 8, CELL[1] - 16, NEW_VALUE],
    )
    ui.tab("edits")
    playwright_api.expect(page.locator("#edits-list li[data-edit-id]")).to_have_count(1)
    ui.wait_text("#edits-list", TENSOR)

    # the canvas marks the tensor: the staged corner of its cell is drawn in --warn
    assert page.evaluate("(name) => window.__ts.state.staged.get(name)", TENSOR) == 1
    warn = css_rgb(page, "--warn")
    assert color_near(ui.staged_corner(TENSOR), warn)
    assert not color_near(ui.staged_corner(NEIGHBOUR), warn)  # the check can tell them apart

    # an operation on a shift+click rectangle: scale x0.5, preview, stage
    ui.tab("focus")
    ui.heatmap_click(*RECT[0])
    ui.heatmap_click(*RECT[1], shift=True)
    ui.wait_text("#cell-label", "selection rows 12..15, cols 24..28 (4×5 = 20 values)")
    page.select_option("#op-select", "scale")
    page.fill("#op-params input[data-key=factor]", "0.5")
    assert page.input_value("#op-target") == "selection"
    page.click("#op-preview")
    ui.wait_text("#preview-box", "20 targeted")
    ui.wait_text("#preview-box", "scale")
    page.click("#stage-btn")
    ui.wait_staged(2)
    staged = np.array(ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"])
    (r0, c0), (r1, c1) = RECT
    rect = np.s_[r0 - 8:r1 - 8 + 1, c0 - 16:c1 - 16 + 1]
    assert np.array_equal(staged[rect], base_values[rect] * 0.5)

    # a byte in the hex view: the low byte of element HEX_AT, staged as a write_hex edit
    flat = HEX_AT[0] * 576 + HEX_AT[1]
    page.locator("#hex-section").scroll_into_view_if_needed()
    page.fill("#hex-element", str(flat))
    page.click("#hex-section button:text-is('Show')")
    ui.wait_text("#hex-table", f"[{HEX_AT[0]},{HEX_AT[1]}]")
    byte = page.locator(f'#hex-table input[data-offset="{2 * flat}"]')
    orig_byte = byte.get_attribute("data-orig")
    new_byte = f"{int(orig_byte, 16) ^ 0x5A:02X}"
    byte.fill(new_byte)
    playwright_api.expect(byte).to_have_class(re.compile(r"\bchanged\b"))
    page.click("#hex-preview")
    ui.wait_text("#preview-box", "1 bytes")
    page.click("#stage-btn")
    ui.wait_staged(3)
    hex_staged = ui.api(f"/api/tensor_hex/{tensor_path(TENSOR)}", element=flat, count=1, view="staged")
    assert hex_staged["hex"][:2].upper() == new_byte
    hex_base = ui.api(f"/api/tensor_hex/{tensor_path(TENSOR)}", element=flat, count=1)
    assert hex_base["hex"][:2].upper() == orig_byte.upper()

    # undo and redo from the Staged edits tab
    ui.tab("edits")
    playwright_api.expect(page.locator("#edits-list li[data-edit-id]")).to_have_count(3)
    page.click("#undo-btn")
    ui.wait_staged(2)
    playwright_api.expect(page.locator("#edits-list li[data-edit-id]")).to_have_count(2)
    assert ui.api(f"/api/tensor_hex/{tensor_path(TENSOR)}", element=flat, count=1, view="staged")["hex"][:2].upper() == orig_byte.upper()
    page.click("#redo-btn")
    ui.wait_staged(3)
    playwright_api.expect(page.locator("#redo-btn")).to_be_disabled()
    assert ui.api(f"/api/tensor_hex/{tensor_path(TENSOR)}", element=flat, count=1, view="staged")["hex"][:2].upper() == new_byte
    final_staged = ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"]

    # save a patch from the header dialog
    page.click("#save-patch-btn")
    playwright_api.expect(page.locator("#save-dialog")).to_be_visible()
    playwright_api.expect(page.locator("#save-edit-choice input[name=edit]")).to_have_count(3)
    page.fill("#save-form input[name=name]", "journey")
    page.fill("#save-form textarea[name=description]", "browser journey: one cell, a scaled block, one byte")
    page.click("#save-confirm")
    playwright_api.expect(page.locator("#save-dialog")).to_be_hidden()
    patch_item = page.locator('#patch-list li[data-patch="journey.hexpatch"]')
    playwright_api.expect(patch_item).to_be_visible()  # the Patches tab opened on it
    ui.wait_text('#patch-list li[data-patch="journey.hexpatch"]', "browser journey")
    patch = json.loads((tmp / "patches" / "journey.hexpatch").read_text())
    assert {e["tensor_name"] for e in patch["patches"]} == {TENSOR}

    # reload: the staged edits (journal) and the patch (library) are still there
    page.reload()
    ui.wait_rendered()
    ui.wait_staged(3)
    playwright_api.expect(page.locator("#focus-name")).to_have_text(TENSOR)  # #tensor= in the URL
    ui.tab("edits")
    playwright_api.expect(page.locator("#edits-list li[data-edit-id]")).to_have_count(3)
    ui.tab("patches")
    playwright_api.expect(patch_item).to_be_visible()

    # "elsewhere": discard everything, then load the patch
    ui.tab("edits")
    page.once("dialog", lambda d: d.accept())
    page.click("#clear-btn")
    ui.wait_staged(0)
    ui.wait_text("#edits-list", "No staged edits")
    assert ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"] == want["data"]

    ui.tab("patches")
    patch_item.get_by_role("button", name="Verify").click()
    ui.wait_text("#verify-report .ok-msg", "applies cleanly")
    patch_item.get_by_role("button", name="Load").click()
    ui.wait_text("#verify-report .ok-msg", "loaded into staging")
    ui.wait_staged(1)
    assert ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", view="staged", **params)["data"] == final_staged

    # loading it again conflicts: every conflict listed, nothing staged
    ui.guard.allow_status(409)
    patch_item.get_by_role("button", name="Load").click()
    ui.wait_text("#verify-report .error-msg", "was not loaded")
    ui.wait_text("#verify-report .error-msg", "nothing staged")
    conflicts = page.locator("#verify-report .conflicts > div")
    assert conflicts.count() == len(patch["patches"]) >= 1
    ui.wait_staged(1)
    assert len(ui.api("/api/edits")["edits"]) == 1

    # export with the staged edits: progress to done, then the files hold the edited values
    out = tmp / "exported"
    page.click("#export-btn")
    playwright_api.expect(page.locator("#export-dialog")).to_be_visible()
    page.fill("#export-form input[name=out]", str(out))
    page.click("#export-confirm")
    playwright_api.expect(page.locator("#export-status")).to_contain_text("done", timeout=180_000)
    page.click("#export-close")
    playwright_api.expect(page.locator("#export-dialog")).to_be_hidden()
    exported = read_export(out, TENSOR)
    assert exported[CELL] == NEW_VALUE
    assert np.array_equal(exported[8:40, 16:48], np.array(final_staged))
    raw = exported.astype(np.float32)[HEX_AT].tobytes()  # BF16 widened to F32: the BF16 bytes are the top two
    assert f"{raw[2]:02X}" == new_byte
    ui.guard.assert_clean()


@pytest.mark.browser
def test_light_theme_errors_next_to_the_action(ui):
    page = ui.page
    ui.open()
    # select from the filter's match list, in the dark theme
    page.fill("#filter-text", "layers.4.self_attn.q_proj")
    page.click(f"#filter-matches li:text-is('{TENSOR}')")
    playwright_api.expect(page.locator("#focus-name")).to_have_text(TENSOR)
    page.wait_for_function("document.getElementById('heatmap').data && document.getElementById('heatmap').data[0].z.length === 64")
    page.wait_for_function("document.getElementById('hist-plot').data")

    page.click("#theme-btn")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    corner = ui.canvas_pixel(2, 2)
    assert corner == css_rgb(page, "--canvas-bg") == [0xFB, 0xFC, 0xFD], corner  # the canvas redrew in light
    # the plots follow the theme too (Plotly keeps the colours it was drawn with)
    text = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--text').trim()")
    for plot in ("heatmap", "hist-plot"):
        page.wait_for_function("([id, c]) => document.getElementById(id).layout.font.color === c", arg=[plot, text])
    # a slice past the end: the message is under the slice controls, the rest of the page stays
    ui.guard.allow_status(400)
    page.fill("#dim0-end", "100000")
    page.click("#slice-apply")
    err = page.locator("#slice-error")
    playwright_api.expect(err).to_contain_text("outside 0..576")
    assert err.is_visible()
    playwright_api.expect(page.locator("#focus-name")).to_be_visible()
    playwright_api.expect(page.locator("#tensor-canvas")).to_be_visible()
    assert page.evaluate("document.getElementById('heatmap').data[0].z.length") == 64  # the last good slice stays
    page.fill("#dim0-end", "64")
    page.click("#slice-apply")
    playwright_api.expect(err).to_have_text("")

    # an operation on "selection" with nothing selected: told so in the edit section
    page.select_option("#op-target", "selection")
    page.click("#op-preview")
    playwright_api.expect(page.locator("#edit-error")).to_contain_text("select a cell or a rectangle")

    # a byte that is not hex: told so in the hex section
    first_byte = page.locator("#hex-table input[data-offset]").first
    first_byte.fill("ZZ")
    page.click("#hex-preview")
    playwright_api.expect(page.locator("#hex-error")).to_contain_text("two hex digits")
    assert not page.locator("#header-error").is_visible()

    # the theme is kept across a reload
    page.reload()
    ui.wait_rendered()
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    ui.guard.assert_clean()


@pytest.mark.browser
def test_settings_dialog_shows_server_settings_and_applies_prefs(ui):
    page = ui.page
    ui.open()
    page.click("#settings-btn")
    page.wait_for_selector("#server-settings tr >> nth=3")
    rows = page.inner_text("#server-settings")
    assert "MODEL_PATH" in rows and "ALLOWED_ROOTS" in rows and "LIVE_DEVICE" in rows
    page.select_option("#settings-form select[name=window]", "32")
    page.select_option("#settings-form select[name=theme]", "light")
    page.click("#settings-form button[value=save]")
    assert page.evaluate("document.documentElement.dataset.theme") == "light"
    assert page.evaluate("window.__ts.state.prefs.window") == 32
    page.evaluate("window.__ts.select('model.layers.0.mlp.down_proj.weight')")
    page.wait_for_function("document.getElementById('heatmap') && document.getElementById('heatmap').data")
    assert page.evaluate("document.getElementById('heatmap').data[0].z.length") == 32
