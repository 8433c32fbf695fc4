"""A GGUF model in real Chromium: opened from the header's Open box (the demo GGUF that
`tensor-surgery demo-models` places beside the safetensors demo), the canvas's layer-major grid,
the file's key-values in Focus, a quantized tensor's heatmap (what the API dequantizes) and its
hex view block by block (scales, codes, values). Any console error fails the test.
Run: pytest -m browser tests/test_browser_gguf.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tensor_surgery.live import demo_models as dm

from .test_browser import (  # noqa: F401 (fixtures)
    CHROMIUM, browser, guarded_page, server_env, serving, tensor_path,
)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM}")]

TENSOR = "blk.3.ffn_up.weight"  # Q4_1, (1536, 576)


@pytest.fixture
def ui(browser, tmp_path, smol_dir):
    gguf_folder = smol_dir.parent / dm.SMOLLM2_GGUF_MODEL
    if not (gguf_folder / dm.SMOLLM2_GGUF).is_file():
        pytest.skip(f"the GGUF demo model is not built in {smol_dir.parent} (run `tensor-surgery demo-models`)")
    with serving(server_env(smol_dir, tmp_path, drop={"ALLOWED_ROOTS"}), tmp_path) as base:
        with guarded_page(browser, base, tmp_path) as u:
            yield u


def test_open_the_gguf_demo_see_grid_heatmap_and_blocks(ui):
    page = ui.page
    ui.open()
    page.wait_for_function("(n) => [...document.querySelectorAll('#model-choices option')].some((o) => o.value.includes(n))",
                           arg=dm.SMOLLM2_GGUF_MODEL)
    options = page.eval_on_selector_all("#model-choices option", "os => os.map(o => [o.value, o.label])")
    gguf = [v for v, label in options if dm.SMOLLM2_GGUF_MODEL in v and "demo model" in label]
    assert gguf, options
    page.fill("#open-model-path", gguf[0])
    page.click("#open-model-form button[type=submit]")
    expect(page.locator("#model-name")).to_have_text("SmolLM2-135M-Instruct.Q4_1", timeout=60_000)
    page.wait_for_function("window.__ts && window.__ts.canvas.items.length === 272")

    # the canvas: one band per layer, each role in the same column in every layer
    cells = page.evaluate("""() => Object.fromEntries(window.__ts.canvas.items
        .filter((i) => /^blk\\.(0|1|29)\\.(attn_q|ffn_down)\\.weight$/.test(i.t.name) || i.t.name === 'token_embd.weight')
        .map((i) => [i.t.name, [i.x, i.y, i.t.metadata_for_canvas.type_group]]))""")
    assert cells["blk.0.attn_q.weight"][2] == "attention_qkv" and cells["blk.0.ffn_down.weight"][2] == "mlp_down"
    assert cells["token_embd.weight"][2] == "embedding"
    for role in ("attn_q", "ffn_down"):  # same column, later layers lower or further right
        a, b = cells[f"blk.0.{role}.weight"], cells[f"blk.1.{role}.weight"]
        assert (a[0], a[1]) != (b[0], b[1])
    assert cells["blk.0.attn_q.weight"][0] != cells["blk.0.ffn_down.weight"][0] or \
        cells["blk.0.attn_q.weight"][1] == cells["blk.0.ffn_down.weight"][1]

    # Focus, nothing selected: the file's key-values, the token list summarized
    ui.tab("focus")
    ui.wait_text("#gguf-meta", "llama")
    ui.wait_text("#gguf-meta", "8,192")
    ui.wait_text("#gguf-meta", "49,152 tokens")
    page.click("#gguf-meta summary")
    ui.wait_text("#gguf-meta table", "tokenizer.ggml.tokens")
    ui.wait_text("#gguf-meta table", '"<|im_start|>"')

    # a quantized tensor: its facts, and a heatmap holding exactly the API's dequantized slice
    page.evaluate("(n) => window.__ts.select(n)", TENSOR)
    expect(page.locator("#focus-name")).to_have_text(TENSOR)
    ui.wait_text("#focus-facts", "Q4_1")
    ui.wait_text("#focus-facts", "re-quantizes its blocks")
    page.wait_for_function("document.getElementById('heatmap') && document.getElementById('heatmap').data")
    ui.wait_text("#slice-info", "base")
    r0, r1, c0, c1 = map(int, re.search(r"\[(\d+):(\d+), (\d+):(\d+)\]", page.locator("#slice-info").inner_text()).groups())
    want = ui.api(f"/api/tensor_slice/{tensor_path(TENSOR)}", dim0_start=r0, dim0_end=r1, dim1_start=c0, dim1_end=c1)
    assert want["dtype"] == "Q4_1" and r1 - r0 >= 16 and c1 - c0 >= 16
    assert ui.heatmap_z() == want["data"]

    # the hex view: the first block with its scale d, its minimum m and 32 codes, then its values
    page.locator("#hex-section").scroll_into_view_if_needed()
    page.fill("#hex-element", "40")
    page.click("#hex-section button:text-is('Show')")
    ui.wait_text("#hex-table", "block 1")
    blk = ui.api(f"/api/tensor_hex/{tensor_path(TENSOR)}", element=40, count=16)["blocks"][0]
    fields = {f["name"]: f for f in blk["fields"]}
    d_row = page.locator('#hex-table tr[data-field="d"]')
    expect(d_row).to_have_count(1)
    expect(d_row.locator("td.field-value")).not_to_be_empty()
    assert float(d_row.locator("td.field-value").inner_text().replace(",", "")) == pytest.approx(fields["d"]["value"], rel=1e-3)
    expect(page.locator('#hex-table tr[data-field="m"]')).to_have_count(1)
    qs = page.locator('#hex-table tr[data-field="qs"] td.field-value').inner_text().split()
    assert [int(q) for q in qs] == fields["qs"]["value"]
    # the block's bytes are editable inputs at their tensor offsets (20-byte Q4_1 blocks)
    expect(page.locator('#hex-table input[data-offset="20"]')).to_have_count(1)
    ui.wait_text("#hex-body", "blocks of 32 values in 20 bytes")

    # an edit of one value: previewed as re-quantized blocks, 'after' being what they will hold
    ui.heatmap_click(r0 + 2, c0 + 3)
    ui.wait_text("#cell-label", f"[{r0 + 2}, {c0 + 3}]")
    page.fill("#cell-value", "0.75")
    page.click("#cell-preview")
    ui.wait_text("#preview-box", "1 Q4_1 block(s) re-quantized")
    ui.wait_text("#preview-box", "'after' is what the blocks will hold")
    ui.guard.assert_clean()
