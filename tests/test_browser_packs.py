"""Packs tab in real Chromium: install a probe pack from a folder remote, monitor it on the live
model, and see the tokens x probes heat strip follow the prompt.

The server runs a 3-block Llama (random weights, SmolLM2's tokenizer) so that the live model loads
in seconds; the scores are checked against numpy on the pack's own weights in test_probes.py, and
here against the pack's shape and the prompt's tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from tensor_surgery.interp.packs import load_pack, write_pack

from .test_browser import browser, guarded_page, server_env, serving  # noqa: F401 (browser is a fixture)
from .test_probes import tiny_llama  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser


def test_install_a_probe_pack_and_see_the_monitor_strip(browser, tmp_path, tiny_llama):  # noqa: F811
    rng = np.random.default_rng(0)
    remote = tmp_path / "remote"
    layers = [0, 2]
    write_pack(remote / "1.0.0", name="mood", kind="probe", version="1.0.0", model_checksum=None, layers=layers,
               tensors={**{f"probe.weight.{L}": rng.standard_normal((2, 64)).astype(np.float32) for L in layers},
                        **{f"probe.bias.{L}": np.zeros(2, np.float32) for L in layers}},
               made_with={"probe_names": ["happy", "sad"]}, metrics={})
    env = server_env(tiny_llama, tmp_path, ALLOWED_ROOTS=f"{tmp_path},{tiny_llama.parent}", LIVE_DEVICE="cpu")
    with serving(env, tmp_path) as base, guarded_page(browser, base, tmp_path) as ui:
        ui.open()
        ui.tab("packs")
        page = ui.page
        page.fill("#packs-source", str(remote))
        page.click("#packs-install")
        page.wait_for_selector("#packs-list li[data-pack='mood']")
        installed = load_pack(tmp_path / "data" / "packs" / "mood")
        assert installed.version == "1.0.0"
        page.check(".pack-monitor[data-pack='mood']")
        page.click("#monitor-start")
        page.wait_for_function("window.__tsPacks.monitored().includes('mood')", timeout=120_000)
        ui.wait_text("#monitor-state", "monitoring 4 probe(s) from mood")
        page.fill("#monitor-prompt", "The food was delicious")
        page.press("#monitor-prompt", "Enter")
        page.wait_for_function(
            "(() => { const s = window.__tsPacks.strip(); return s && s.tokens.join('').includes('delicious'); })()",
            timeout=60_000)
        strip = page.evaluate("window.__tsPacks.strip()")
        assert [(c["layer"], c["name"]) for c in strip["columns"]] == [(0, "happy"), (0, "sad"), (2, "happy"), (2, "sad")]
        scores = np.array(strip["scores"])
        assert scores.shape == (4, len(strip["tokens"])) and np.all((scores >= 0) & (scores <= 1))
        page.wait_for_selector("#monitor-strip .heatmaplayer, #monitor-strip .hm")
        # a new prompt updates the strip with the logits
        page.fill("#monitor-prompt", "Rain again")
        page.press("#monitor-prompt", "Enter")
        page.wait_for_function("window.__tsPacks.strip().tokens.join('').includes('Rain')", timeout=60_000)
        # stopping removes the observer: the next message carries no strip
        page.click("#monitor-stop")
        ui.wait_text("#monitor-state", "monitor off")
