"""The user journey on the real SmolLM2-135M demo model: zero the embedding row of " Paris" in the
web app, save it as a .hexpatch, export with `tensor-surgery patch apply`, load the export with
transformers: "The capital of France is" no longer continues with " Paris" (the head is tied to the
embedding, so its logit collapses too). The inverse patch gives back every file bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tensor_surgery.cli import main
from tensor_surgery.surgery import hexpatch as hp

from .conftest import BASE_URL, make_settings
from .surgery_helpers import header_of, sha256, tree_digest

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
EMB = "model.embed_tokens.weight"
HIDDEN = 576


def next_token_logits(folder: Path, prompt_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0, -1].float()
    row_is_tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return logits, model.get_input_embeddings().weight, row_is_tied


def test_zeroing_paris_row_and_inverse(smol_dir, tmp_path):
    import torch
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer

    from tensor_surgery.web.app import create_app

    tok = AutoTokenizer.from_pretrained(str(smol_dir))
    paris = tok.encode(" Paris", add_special_tokens=False)
    assert len(paris) == 1, paris
    paris = paris[0]
    prompt = tok.encode(PROMPT, add_special_tokens=False)

    base_logits, _, tied = next_token_logits(smol_dir, prompt)
    assert tied
    assert int(base_logits.argmax()) == paris, tok.decode([int(base_logits.argmax())])

    # 1. in the app: zero row `paris` of the embedding, save the staged edit as a patch
    settings = make_settings(tmp_path, smol_dir, allowed_roots=[tmp_path, smol_dir])
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        r = client.post("/api/edit_tensor", json={
            "tensor_name": EMB, "op": "zero",
            "slice": {"dim0_start": paris, "dim0_end": paris + 1, "dim1_start": 0, "dim1_end": HIDDEN},
        })
        assert r.status_code == 200, r.text
        preview = r.json()["preview"]
        assert preview["targeted_values"] == HIDDEN and preview["values_changed"] > HIDDEN // 2
        view = client.get(f"/api/tensor_slice/{EMB}", params={
            "view": "staged", "dim0_start": paris, "dim0_end": paris + 1, "dim1_start": 0, "dim1_end": HIDDEN}).json()
        assert view["min_value_in_slice"] == 0 and view["max_value_in_slice"] == 0
        r = client.post("/api/patches", json={"name": "no-paris", "description": 'zero the " Paris" embedding row'})
        assert r.status_code == 200, r.text
        assert r.json()["tensors"] == [EMB]
    patch_path = settings.patch_dir / "no-paris.hexpatch"
    patch = hp.loads(patch_path.read_bytes(), str(patch_path))
    row = (paris * HIDDEN * 2, (paris + 1) * HIDDEN * 2)  # BF16: 1152 bytes
    assert patch.base_model_checksum and patch.tensor_checksums.keys() == {EMB}
    for e in patch.entries:
        assert e.tensor_name == EMB and e.dtype == "BF16" and e.shape_at_edit_time == (49152, HIDDEN)
        assert row[0] <= e.offset_bytes and e.end <= row[1]
        assert e.new == bytes(len(e.new))

    # 2. export with the CLI
    runner = CliRunner()
    out = tmp_path / "exports" / "no-paris"
    r = runner.invoke(main, ["patch", "apply", str(smol_dir), str(patch_path), "--out", str(out), "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["patched_tensors"] == 1
    src_file, out_file = smol_dir / "model.safetensors", out / "model.safetensors"
    assert header_of(out_file)[0] == header_of(src_file)[0]
    a, b = src_file.read_bytes(), out_file.read_bytes()
    start = len(header_of(src_file)[0]) + header_of(src_file)[1][EMB]["data_offsets"][0]
    assert a[: start + row[0]] == b[: start + row[0]] and a[start + row[1]:] == b[start + row[1]:]
    assert b[start + row[0] : start + row[1]] == bytes(HIDDEN * 2)

    # 3. transformers loads it; " Paris" is no longer the next token
    logits, emb, tied = next_token_logits(out, prompt)
    assert tied and torch.count_nonzero(emb[paris]) == 0
    assert float(logits[paris]) == 0.0  # the tied head's row is zero too
    top = int(logits.argmax())
    assert top != paris, tok.decode([top])

    # 4. the inverse patch brings back every file bit for bit, and " Paris" with it
    inv = tmp_path / "restore-paris.hexpatch"
    assert runner.invoke(main, ["patch", "invert", str(patch_path), "--out", str(inv)]).exit_code == 0
    back = tmp_path / "exports" / "back"
    r = runner.invoke(main, ["patch", "apply", str(out), str(inv), "--out", str(back)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sha256(back / "model.safetensors") == sha256(src_file)
    assert tree_digest(back) == tree_digest(smol_dir)
    logits, _, _ = next_token_logits(back, prompt)
    assert int(logits.argmax()) == paris
    assert torch.equal(logits, base_logits)
