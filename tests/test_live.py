"""The live model on the real SmolLM2-135M demo model (BF16, tied embeddings): staged bytes reach the
running parameters bit for bit and leave them bit for bit; its logits equal those of the exported
model loaded fresh; LoRA edits round-trip through PEFT folders and merge into staged bytes; the
WebSocket pushes every change to every page, serializes toggles (the latest wins) and refuses
other origins.

The 135M model is loaded once for the module (one app, one client); each test leaves the app with
no staged edits, no adapters, every edit toggle on and the default prompt.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref

import anyio
import numpy as np
import pytest
from safetensors.numpy import load_file
from starlette.websockets import WebSocketDisconnect

from .conftest import BASE_URL, WS_BASE, assert_error, make_settings, write_tiny_llama

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

PROMPT = "The capital of France is"  # 5 tokens; " Paris" is the top token
EMB = "model.embed_tokens.weight"  # [49152, 576] BF16, tied to lm_head
DOWN = "model.layers.3.mlp.down_proj.weight"  # [576, 1536] BF16
HIDDEN = 576
MAX_PROMPT_TOKENS = 8  # small, so truncation is cheap to show; PROMPT fits


# -- the app ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc(tmp_path_factory, smol_dir):
    """A client on an app serving the demo model, with the live model loaded (once per module)."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    tmp = tmp_path_factory.mktemp("live")
    settings = make_settings(tmp, smol_dir, allowed_roots=[tmp, smol_dir], live_prompt=PROMPT,
                             live_max_prompt_tokens=MAX_PROMPT_TOKENS)
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        c.tmp = tmp
        c.load_messages = []
        unsubscribe = c.app.state.live.subscribe(c.load_messages.append)
        r = c.post("/api/live/load")
        assert r.status_code == 200, r.text
        wait_state(c, "ready", timeout=180)
        barrier(c.app.state.live)
        unsubscribe()
        yield c


@pytest.fixture(autouse=True)
def clean(request):
    """After each test that uses the loaded model: nothing staged, no adapters, all toggles on."""
    yield
    if "lc" not in request.fixturenames:
        return
    c = request.getfixturevalue("lc")
    live = c.app.state.live
    if live.state != "ready":
        return
    c.delete("/api/edits")
    for a in c.get("/api/live/adapters").json()["adapters"]:
        c.delete(f"/api/live/adapters/{a['name']}")
    live.wanted.disabled_edits.clear()
    live.set_prompt(PROMPT, 10)
    barrier(live)


def wait_state(c, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = c.get("/api/live/status").json()
        if s["state"] == state:
            return s
        assert s["state"] != "error", s
        assert time.monotonic() < deadline, f"live state still {s['state']!r}: {s}"
        time.sleep(0.1)


def barrier(live) -> None:
    """Return once every change asked for so far has been applied, computed and published.

    A job runs at the start of a worker pass, before that pass's forward: the second job runs only
    after the pass that the first one joined has finished."""
    live.call(lambda: None)
    live.call(lambda: None)


def edit(c, **body) -> int:
    r = c.post("/api/edit_tensor", json=body)
    assert r.status_code == 200, r.text
    return r.json()["edit"]["id"]


def zero_row(c, row: int, tensor: str = EMB) -> int:
    return edit(c, tensor_name=tensor, op="zero",
                slice={"dim0_start": row, "dim0_end": row + 1, "dim1_start": 0, "dim1_end": HIDDEN})


def scale_block(c) -> int:
    return edit(c, tensor_name=DOWN, op="scale", factor=-3.0,
                slice={"dim0_start": 100, "dim0_end": 164, "dim1_start": 200, "dim1_end": 520})


def token_id(c, text: str) -> int:
    ids = c.app.state.live.live.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, ids
    return ids[0]


def live_bytes(c, name: str) -> bytes:
    """The running parameter's bytes, read on the model's thread."""
    live = c.app.state.live

    def read():
        p = live.live.params[name]
        return p.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()

    return live.call(read)


def staged_bytes(c, name: str) -> bytes:
    staging, model = c.app.state.staging, c.app.state.workspace.model()
    return staging.reader(model, name).read_bytes(0, model.tensor(name).nbytes)


def file_bytes(c, name: str) -> bytes:
    return bytes(c.app.state.workspace.model().tensor(name).raw())


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def live_logits(c, prompt: str = PROMPT):
    """(full next-token logits, input ids) of the running model as the live view computes them."""
    live = c.app.state.live
    barrier(live)

    def run():
        ids, _ = live.live.encode(prompt, live.settings.live_max_prompt_tokens)
        model, ctx = live.adapters.forward_model()
        with ctx:
            logits, _ = live.live.logits(ids, model)
        return logits, ids.cpu()

    return live.call(run)


def fresh_logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1].float()


# -- WebSocket helpers ----------------------------------------------------------------------------------


def ws_connect(c, origin: str = BASE_URL):
    return c.websocket_connect(WS_BASE + "/ws/live", headers={"origin": origin})


def recv(ws, timeout: float = 60) -> dict:
    """Next message, or fail after `timeout` s (the TestClient's own receive waits forever)."""
    async def get():
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    message = ws.portal.call(get)
    ws._raise_on_close(message)
    return json.loads(message["text"])


def recv_until(ws, pred, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = recv(ws, max(0.1, deadline - time.monotonic()))
        if pred(m):
            return m


def drain_hello(ws) -> None:
    """The first messages of a connection: status, then the last logits."""
    assert recv(ws)["type"] == "status"
    assert recv(ws)["type"] == "logits"


def top1(m: dict) -> str:
    return max(m["top"], key=lambda t: t["logit"])["token"]


def edit_state(m: dict, edit_id: int) -> bool | None:
    return next((e["enabled"] for e in m["edits"] if e["id"] == edit_id), None)


# -- status ---------------------------------------------------------------------------------------------


def test_status_device_dtype_memory_progress(lc):
    from tensor_surgery.live.runtime import pick_device

    s = lc.get("/api/live/status").json()
    model = lc.app.state.workspace.model()
    assert s["state"] == "ready" and s["progress"] == 1.0 and s["message"].startswith("loaded in")
    assert s["device"] == str(pick_device("auto"))  # autodetected: CUDA, then MPS, then CPU
    assert s["dtype"] == "bfloat16"
    # every checkpoint byte is in memory once (lm_head shares the embedding), plus small buffers
    assert model.nbytes <= s["param_bytes"] < model.nbytes + (1 << 20)
    assert s["rss_bytes"] > model.nbytes
    assert s["unmapped"] == 0 and s["max_prompt_tokens"] == MAX_PROMPT_TOKENS
    # the load reported its progress as it went
    loads = [m for m in lc.load_messages if m["type"] == "status"]
    fractions = [m["progress"] for m in loads if m["state"] == "loading"]
    assert len(fractions) >= 3 and fractions == sorted(fractions), fractions
    assert loads[-1]["state"] == "ready"
    first = next(m for m in lc.load_messages if m["type"] == "logits")
    assert top1(first) == " Paris" and first["prompt_tokens"] == 5 and not first["truncated"]
    # a second Load (another page) is not a reload
    running = lc.app.state.live.live
    assert lc.post("/api/live/load").json()["state"] == "ready"
    barrier(lc.app.state.live)
    assert lc.app.state.live.live is running


def test_device_autodetect_and_unload_frees_the_gpu_cache(monkeypatch):
    from tensor_surgery.live.runtime import LiveModel, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append("cuda"))
    running = LiveModel(None, object(), None, torch.device("cuda"), torch.bfloat16, {"w": torch.zeros(1)})
    running.unload()
    assert freed == ["cuda"] and running.hf_model is None and not running.params


def test_top_k_rows_against_torch():
    from tensor_surgery.live.runtime import top_k

    g = torch.Generator().manual_seed(0)
    logits, base = torch.randn(5000, generator=g), torch.randn(5000, generator=g)
    logits[7] = logits[3] = logits.max() + 1  # a tie at the top: lower id first
    rows = top_k(logits, lambda i: f"<{i}>", 10, base)
    expected = torch.topk(logits, 10).indices.tolist()
    assert [r["id"] for r in rows[:10]][:2] == [3, 7] and {r["id"] for r in rows[:10]} == set(expected)
    assert [r["id"] for r in rows[10:]] == [i for i in torch.topk(base, 10).indices.tolist() if i not in expected]
    probs, bprobs = logits.double().softmax(-1), base.double().softmax(-1)
    for r in rows:
        i = r["id"]
        assert r["token"] == f"<{i}>" and r["logit"] == float(logits[i]) and r["base_logit"] == float(base[i])
        assert r["rank"] == int((logits > logits[i]).sum()) and r["base_rank"] == int((base > base[i]).sum())
        assert r["prob"] == pytest.approx(float(probs[i]), rel=1e-6)
        assert r["delta_prob"] == pytest.approx(float(probs[i] - bprobs[i]), rel=1e-5, abs=1e-12)
    assert [r["id"] for r in top_k(logits, str, 3)] == [3, 7, expected[2]]


# -- bit-exact application ----------------------------------------------------------------------------


def test_edits_reach_the_parameters_bit_exactly_and_revert_restores_them(lc):
    live = lc.app.state.live
    paris = token_id(lc, " Paris")
    original = {n: sha(file_bytes(lc, n)) for n in (EMB, DOWN)}
    e1, e2 = zero_row(lc, paris), scale_block(lc)
    barrier(live)
    for name in (EMB, DOWN):
        got = live_bytes(lc, name)
        assert got == staged_bytes(lc, name)
        assert sha(got) != original[name]
    # the API's staged hex view agrees, byte for byte: the zeroed row, and a row of the scaled block
    row = paris * HIDDEN * 2
    assert live_bytes(lc, EMB)[row:row + HIDDEN * 2] == bytes(HIDDEN * 2)
    off = (120 * 1536 + 200) * 2
    hx = lc.get(f"/api/tensor_hex/{DOWN}", params={"view": "staged", "offset": off, "length": 640}).json()
    assert bytes.fromhex(hx["hex"]) == live_bytes(lc, DOWN)[off:off + 640] != file_bytes(lc, DOWN)[off:off + 640]
    # lm_head is the embedding: same storage, so the edit reached the head too
    tied = live.call(lambda: (live.live.hf_model.get_output_embeddings().weight.data_ptr()
                              == live.live.params[EMB].data_ptr()))
    assert tied

    assert lc.post(f"/api/edits/{e2}/revert").status_code == 200
    barrier(live)
    assert sha(live_bytes(lc, DOWN)) == original[DOWN]
    assert live_bytes(lc, EMB) == staged_bytes(lc, EMB) and sha(live_bytes(lc, EMB)) != original[EMB]

    # undo takes back the revert (an undoable step): the scaled block is live again
    edited_down = staged_bytes(lc, DOWN)  # before the undo: the file's bytes
    assert lc.post("/api/edits/undo").json()["undone"]["id"] == e2
    barrier(live)
    assert live_bytes(lc, DOWN) == staged_bytes(lc, DOWN) != edited_down
    # undo again takes back the newest staged step (e2 itself), then e1
    assert lc.post("/api/edits/undo").json()["undone"]["id"] == e2
    assert lc.post("/api/edits/undo").json()["undone"]["id"] == e1
    barrier(live)
    assert sha(live_bytes(lc, EMB)) == original[EMB] and sha(live_bytes(lc, DOWN)) == original[DOWN]

    # redo puts it back; turning the edit off in the live view takes it out again
    assert lc.post("/api/edits/redo").status_code == 200
    barrier(live)
    assert live_bytes(lc, EMB) == staged_bytes(lc, EMB)
    assert lc.post(f"/api/live/edits/{e1}/toggle", json={"enabled": False}).status_code == 200
    barrier(live)
    assert sha(live_bytes(lc, EMB)) == original[EMB]
    lc.post(f"/api/live/edits/{e1}/toggle", json={"enabled": True})
    lc.delete("/api/edits")
    barrier(live)

    # every parameter of the model holds exactly the file's bytes again
    model = lc.app.state.workspace.model()
    assert set(live.live.params) == set(model.tensors)
    for name in model.tensors:
        assert live_bytes(lc, name) == file_bytes(lc, name), name


def test_loading_a_patch_is_applied(lc):
    live = lc.app.state.live
    zero_row(lc, token_id(lc, " Paris"))
    scale_block(lc)
    r = lc.post("/api/patches", json={"name": "live-test", "description": "two edits"})
    assert r.status_code == 200, r.text
    patched = {n: staged_bytes(lc, n) for n in (EMB, DOWN)}
    lc.delete("/api/edits")
    barrier(live)
    assert live_bytes(lc, DOWN) == file_bytes(lc, DOWN)

    r = lc.post("/api/patches/live-test/load")
    assert r.status_code == 200, r.text
    barrier(live)
    for name in (EMB, DOWN):
        assert live_bytes(lc, name) == patched[name]
    m = live.last
    assert top1(m) != " Paris" and [e["id"] for e in m["edits"]] == [r.json()["edit"]["id"]]


# -- live vs exported ------------------------------------------------------------------------------------


def test_live_logits_equal_the_exported_model(lc):
    from transformers import AutoModelForCausalLM

    zero_row(lc, token_id(lc, " Paris"))
    scale_block(lc)
    logits, ids = live_logits(lc)
    out = lc.tmp / "exported"
    r = lc.post("/api/export", json={"out": str(out)})
    assert r.status_code == 202, r.text
    job = r.json()["job"]["id"]
    deadline = time.monotonic() + 120
    while (snap := lc.get(f"/api/jobs/{job}").json())["state"] not in ("done", "error"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert snap["state"] == "done", snap

    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16).eval()
    expected = fresh_logits(exported, ids)
    assert torch.equal(logits, expected)
    assert int(expected.argmax()) != token_id(lc, " Paris")
    # and what was pushed to the pages is that model's top-k
    m = lc.app.state.live.last
    assert m["top"] and all(t["logit"] == float(expected[t["id"]]) for t in m["top"])


# -- LoRA ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_base(smol_dir):
    """The demo model loaded fresh with transformers (PEFT wrappers are unloaded after each use)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.bfloat16).eval()


ADAPTERS = {
    "neurons": {"kind": "neurons", "module": "model.layers.3.mlp.down_proj", "rank": 8,
                "neurons": [5, 77, 300, 1201], "factor": 0.0},
    # takes " Paris" out of the last MLP's output: " Paris" drops from 0.76 to about 0.01
    "direction": {"kind": "direction", "module": "model.layers.29.mlp.down_proj", "rank": 4,
                  "token": " Paris", "side": "output", "strength": 1.0},
}


@pytest.mark.parametrize("kind", ADAPTERS)
def test_lora_peft_round_trip_import_and_merge(lc, fresh_base, kind):
    from peft import PeftModel

    live = lc.app.state.live
    spec = ADAPTERS[kind]
    base, ids = live_logits(lc)
    r = lc.post("/api/live/adapters", json={"name": f"{kind}1", **spec})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["enabled"] and info["rank"] == spec["rank"] and info["modules"] == [spec["module"]]
    with_adapter, _ = live_logits(lc)
    assert not torch.equal(with_adapter, base)
    if kind == "direction":
        assert top1(live.last) != " Paris"
    assert top1(live.last) and live.last["adapters"][0]["name"] == f"{kind}1"

    # export: a PEFT folder that PEFT loads onto a fresh base and that gives the same logits
    folder = lc.tmp / f"adapter-{kind}"
    r = lc.post(f"/api/live/adapters/{kind}1/export", json={"out": str(folder)})
    assert r.status_code == 200, r.text
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(r.json()["files"])
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == spec["rank"]
    peft_model = PeftModel.from_pretrained(fresh_base, str(folder)).eval()
    try:
        reloaded = fresh_logits(peft_model, ids)
    finally:
        peft_model.unload()  # the base without LoRA layers, for the next test
    assert torch.equal(with_adapter, reloaded), float((with_adapter - reloaded).abs().max())

    # import it back under a new name: the same logits with only that one on
    r = lc.post("/api/live/adapters/import", json={"path": str(folder), "name": f"{kind}2"})
    assert r.status_code == 200, r.text
    assert r.json()["modules"] == [spec["module"]]
    assert lc.post(f"/api/live/adapters/{kind}1/toggle", json={"enabled": False}).status_code == 200
    imported, _ = live_logits(lc)
    assert torch.equal(imported, with_adapter)
    assert lc.post(f"/api/live/adapters/{kind}2/toggle", json={"enabled": False}).json()["enabled"] is False
    off, _ = live_logits(lc)
    assert torch.equal(off, base)

    # merge: a staged edit whose bytes are W + B @ A * alpha / r cast back to BF16
    import ml_dtypes

    lc.post(f"/api/live/adapters/{kind}1/toggle", json={"enabled": True})
    r = lc.post(f"/api/live/adapters/{kind}1/merge")
    assert r.status_code == 200, r.text
    merged_edit = r.json()["edit"]
    weight = spec["module"] + ".weight"
    assert merged_edit["tensor_names"] == [weight]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = f"base_model.model.{spec['module']}"
    a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    assert a.dtype == np.float32 and a.shape == (spec["rank"], a.shape[1])
    delta = (b.astype(np.float64) @ a.astype(np.float64)) * (cfg["lora_alpha"] / cfg["r"])
    ref = lc.app.state.workspace.model().tensor(weight)
    w = np.frombuffer(file_bytes(lc, weight), ml_dtypes.bfloat16).reshape(ref.shape).astype(np.float64)
    expected = (w + delta).astype(ml_dtypes.bfloat16).tobytes()
    assert staged_bytes(lc, weight) == expected
    barrier(live)
    assert live_bytes(lc, weight) == expected
    assert [x["enabled"] for x in lc.get("/api/live/adapters").json()["adapters"]] == [False, False]
    merged, ids = live_logits(lc)
    # Oracle: transformers' own model with exactly those merged BF16 weights gives the same logits.
    # (Merged and adapter logits are not compared with a tolerance: the adapter adds its float32 output
    # to the BF16 layer's, merging rounds the sum into BF16 weights, and how far the logits then move
    # depends on the model and the library's kernels, not on our code.)
    param = fresh_base.get_submodule(spec["module"]).weight
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.copy_(torch.frombuffer(bytearray(expected), dtype=torch.bfloat16).view(param.shape))
        assert torch.equal(merged, fresh_logits(fresh_base, ids))
    finally:
        with torch.no_grad():
            param.copy_(saved)
    # and the merged edit saves as a .hexpatch
    r = lc.post("/api/patches", json={"name": f"merged-{kind}", "description": "a merged LoRA"})
    assert r.status_code == 200, r.text

    # deleting the last adapter takes PEFT off: the model runs bare, its parameters still the live ones
    for name in (f"{kind}1", f"{kind}2"):
        assert lc.delete(f"/api/live/adapters/{name}").status_code == 200
    lc.delete("/api/edits")
    barrier(live)
    assert live.adapters.peft is None
    assert torch.equal(live_logits(lc)[0], base)
    zero_row(lc, token_id(lc, " Paris"))
    barrier(live)
    assert live_bytes(lc, EMB) == staged_bytes(lc, EMB) and top1(live.last) != " Paris"


def test_two_adapters_on_at_once(lc):
    live = lc.app.state.live
    base, _ = live_logits(lc)
    r = lc.post("/api/live/adapters", json={"name": "ora", **ADAPTERS["neurons"]})
    assert_error(r, 400, "invalid_request", "prefix")
    for name, spec in (("first", ADAPTERS["neurons"]), ("second", ADAPTERS["direction"])):
        assert lc.post("/api/live/adapters", json={"name": name, **spec}).status_code == 200
    both, _ = live_logits(lc)
    assert live.adapters.active() == ["first", "second"]
    lc.post("/api/live/adapters/second/toggle", json={"enabled": False})
    only_a, _ = live_logits(lc)
    lc.post("/api/live/adapters/first/toggle", json={"enabled": False})
    lc.post("/api/live/adapters/second/toggle", json={"enabled": True})
    only_b, _ = live_logits(lc)
    lc.post("/api/live/adapters/second/toggle", json={"enabled": False})
    none, _ = live_logits(lc)
    assert torch.equal(none, base)
    assert not torch.equal(both, only_a) and not torch.equal(both, only_b) and not torch.equal(only_a, only_b)
    assert top1(live.last) == " Paris"


def test_lora_build_rejects_bad_input(lc):
    module = ADAPTERS["neurons"]["module"]
    r = lc.post("/api/live/adapters", json={"name": "x", "kind": "neurons", "module": module, "rank": 3,
                                            "neurons": [1], "factor": 0})
    assert r.status_code == 422
    assert_error(lc.post("/api/live/adapters", json={"name": "x", "kind": "neurons", "module": module, "rank": 4,
                                                     "neurons": [1, 2, 3, 4, 5], "factor": 0}), 400, "invalid_request")
    assert_error(lc.post("/api/live/adapters", json={"name": "x", "kind": "direction", "module": "model.norm",
                                                     "token": " Paris"}), 400, "invalid_request", "not a linear layer")
    assert_error(lc.post("/api/live/adapters/nope/toggle", json={"enabled": True}), 404, "adapter_not_found")
    assert_error(lc.post("/api/live/adapters/import", json={"path": str(lc.tmp), "name": "y"}),
                 400, "invalid_request", "not a PEFT adapter folder")


# -- WebSocket ----------------------------------------------------------------------------------------------


def test_one_edit_is_pushed_to_two_pages(lc):
    paris = token_id(lc, " Paris")
    with ws_connect(lc) as a, ws_connect(lc) as b:
        drain_hello(a)
        drain_hello(b)
        e = zero_row(lc, paris)
        got = [recv_until(ws, lambda m: m["type"] == "logits" and edit_state(m, e) is True) for ws in (a, b)]
    assert got[0] == got[1]
    m = got[0]
    assert top1(m) != " Paris"
    row = next(t for t in m["top"] if t["id"] == paris)  # base's top token stays in the table
    assert row["base_rank"] == 0 and row["rank"] > 0 and row["delta_logit"] < 0
    assert m["forward_ms"] > 0 and m["total_ms"] >= m["forward_ms"]


def test_toggle_edit_over_the_socket(lc):
    e = zero_row(lc, token_id(lc, " Paris"))
    with ws_connect(lc) as ws:
        drain_hello(ws)
        ws.send_json({"type": "toggle_edit", "id": e, "enabled": False, "seq": 1})
        m = recv_until(ws, lambda m: m["type"] == "logits" and m["seq"] >= 1)
        assert edit_state(m, e) is False and top1(m) == " Paris"
        assert all(t["delta_logit"] == 0 for t in m["top"])
        ws.send_json({"type": "toggle_edit", "id": e, "enabled": True, "seq": 2})
        m = recv_until(ws, lambda m: m["type"] == "logits" and m["seq"] >= 2)
        assert edit_state(m, e) is True and top1(m) != " Paris"
        ws.send_json({"type": "nonsense", "seq": 3})
        assert "unknown message type" in recv_until(ws, lambda m: m["type"] == "error")["message"]
        ws.send_bytes(b"\x00")
        assert "JSON text" in recv_until(ws, lambda m: m["type"] == "error")["message"]
        ws.send_text("{")
        assert "not JSON" in recv_until(ws, lambda m: m["type"] == "error")["message"]
        ws.send_json({"type": "toggle_edit", "id": e, "enabled": False, "seq": 4})  # still serving
        assert edit_state(recv_until(ws, lambda m: m["type"] == "logits" and m["seq"] >= 4), e) is False


def test_toggles_during_a_forward_pass_coalesce_and_the_latest_wins(lc):
    live = lc.app.state.live
    e = zero_row(lc, token_id(lc, " Paris"))
    barrier(live)
    with ws_connect(lc) as ws:
        drain_hello(ws)
        # hold the model's thread (as a long forward pass would) while 9 toggles arrive
        started, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=live.call, args=(lambda: (started.set(), release.wait(30)),))
        holder.start()
        assert started.wait(30)
        for i in range(1, 10):
            ws.send_json({"type": "toggle_edit", "id": e, "enabled": i % 2 == 0, "seq": i})  # the last: off
        deadline = time.monotonic() + 10
        while live.wanted.seq < 9:  # the socket handler folded all nine in
            assert time.monotonic() < deadline
            time.sleep(0.01)
        release.set()
        holder.join()
        m = recv_until(ws, lambda m: m["type"] == "logits")
        assert m["seq"] == 9 and edit_state(m, e) is False and top1(m) == " Paris"
        # a free-running burst (some arrive mid-pass): the last published state is the last toggle
        for i in range(10, 21):
            ws.send_json({"type": "toggle_edit", "id": e, "enabled": i % 2 == 0, "seq": i})  # the last: on
        seen = [recv_until(ws, lambda m: m["type"] == "logits")]
        while seen[-1]["seq"] < 20:
            seen.append(recv_until(ws, lambda m: m["type"] == "logits"))
        assert [m["seq"] for m in seen] == sorted(m["seq"] for m in seen)
        assert edit_state(seen[-1], e) is True and top1(seen[-1]) != " Paris"
    barrier(live)
    assert live.last["seq"] == 20 and edit_state(live.last, e) is True


def test_websocket_from_another_origin_is_refused(lc):
    with pytest.raises(WebSocketDisconnect) as err:
        with ws_connect(lc, origin="http://evil.example") as ws:
            recv(ws, 10)
    assert err.value.code == 4403
    with ws_connect(lc) as ws:  # our own origin is served
        assert recv(ws)["type"] == "status"


def test_long_prompt_is_truncated_with_a_notice(lc):
    live = lc.app.state.live
    long_prompt = "Once upon a time, in a land far away, there lived a"
    n = len(live.live.tokenizer(long_prompt)["input_ids"])
    assert n > MAX_PROMPT_TOKENS
    with ws_connect(lc) as ws:
        drain_hello(ws)
        ws.send_json({"type": "prompt", "text": long_prompt, "k": 5, "seq": 1})
        m = recv_until(ws, lambda m: m["type"] == "logits" and m["seq"] >= 1)
    assert m["truncated"] and m["prompt_tokens"] == MAX_PROMPT_TOKENS and m["k"] == 5
    assert "LIVE_MAX_PROMPT_TOKENS" in m["notice"] and f"last {MAX_PROMPT_TOKENS} tokens" in m["notice"]
    # the last tokens are the ones used
    logits, ids = live_logits(lc, long_prompt)
    full = live.live.tokenizer(long_prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, full[:, -MAX_PROMPT_TOKENS:])
    assert all(t["logit"] == float(logits[t["id"]]) for t in m["top"])
    assert_error(lc.post("/api/live/prompt", json={"prompt": "   "}), 400, "invalid_request", "empty")


# -- folders that cannot run, and unloading -----------------------------------------------------------------


def test_folder_without_config_is_refused_and_the_explorer_keeps_working(client, tmp_path):
    err = assert_error(client.post("/api/live/load"), 409, "live_unavailable", "Hugging Face model folder")
    assert "no config.json" in err["message"] and "explorer keeps working" in err["message"]
    assert client.get("/api/tensors").status_code == 200
    assert client.get("/api/tensor_slice/model.norm.weight").status_code == 200
    assert client.get("/api/live/status").json()["state"] == "unloaded"
    with ws_connect(client) as ws:
        assert recv(ws)["state"] == "unloaded"
        ws.send_json({"type": "load"})
        m = recv(ws)
        assert m["type"] == "error" and "Hugging Face model folder" in m["message"]
    # config.json but no tokenizer: the same refusal, saying what is missing
    other = write_tiny_llama(tmp_path / "notok" / "model.safetensors")
    (other.parent / "config.json").write_text("{}")
    assert client.post("/api/model", json={"path": str(other)}).status_code == 200
    assert_error(client.post("/api/live/load"), 409, "live_unavailable", "no tokenizer files")


def test_a_model_transformers_cannot_load_ends_in_an_error_state(tmp_path, smol_dir):
    """config.json and a tokenizer, but weights of other shapes: the load fails with a message
    (it does not stay "loading"), and the explorer keeps working."""
    import shutil

    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    path = write_tiny_llama(tmp_path / "m" / "model.safetensors", hidden=16)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smol_dir / f, path.parent / f)
    (path.parent / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
        "tie_word_embeddings": True}))
    with TestClient(create_app(make_settings(tmp_path, path.parent)), base_url=BASE_URL) as c:
        assert c.post("/api/live/load").json()["state"] == "loading"
        deadline = time.monotonic() + 60
        while (s := c.get("/api/live/status").json())["state"] == "loading":
            assert time.monotonic() < deadline, s
            time.sleep(0.1)
        assert s["state"] == "error" and "loading failed: RuntimeError" in s["message"], s
        assert c.get("/api/tensors").status_code == 200


def test_unload_frees_the_model_and_one_model_at_a_time(lc, tmp_path):
    live = lc.app.state.live
    lc.post("/api/live/adapters", json={"name": "kept", **ADAPTERS["neurons"]})  # PEFT holds the modules too
    barrier(live)
    ref = weakref.ref(live.live.hf_model)
    with ws_connect(lc) as ws:
        drain_hello(ws)
        assert lc.post("/api/live/unload").json() == {"unloading": True}
        s = recv_until(ws, lambda m: m["type"] == "status")
    assert s["state"] == "unloaded" and "device" not in s and "param_bytes" not in s
    barrier(live)
    import gc

    gc.collect()
    assert ref() is None, "the unloaded model is still referenced"
    assert live.live is None and live.adapters is None and live.last is None
    assert lc.get("/api/live/logits").json() == {"type": "logits", "top": [], "pending": "unloaded"}
    assert_error(lc.get("/api/live/adapters"), 400, "error", "load the live model first")

    # a prompt loads it again; opening another model frees it: one model in memory at a time
    lc.post("/api/live/prompt", json={"prompt": PROMPT})
    wait_state(lc, "ready", timeout=180)
    barrier(live)
    assert top1(live.last) == " Paris"
    tiny = write_tiny_llama(lc.tmp / "other" / "model.safetensors")
    assert lc.post("/api/model", json={"path": str(tiny)}).status_code == 200
    wait_state(lc, "unloaded")
    assert live.live is None
