"""Steering vectors on the real SmolLM2-135M demo model (BF16, 30 blocks, width 576).

Oracles: numpy float64 over transformers' own `output_hidden_states` (extraction), sklearn's PCA
(repeng's pca_diff), a hand-written transformers forward hook (applying), `gguf.GGUFReader` and
`gguf.GGUFWriter` (control vectors), the safetensors library (exports). The model is loaded once
for the module; pair sets are cut short to keep the forward passes few.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import BASE_URL, make_settings

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from tensor_surgery.errors import InvalidRequest  # noqa: E402
from tensor_surgery.interp import steering as st  # noqa: E402
from tensor_surgery.interp.gguf_control import (  # noqa: E402
    InvalidControlVector, check_for_model, read_control_vector, write_control_vector)
from tensor_surgery.live.hooks import attach  # noqa: E402

HIDDEN, N_LAYERS = 576, 30
PROMPT = "Today I went to the park and"


@pytest.fixture(scope="module")
def smol(smol_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir)
    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.bfloat16).eval()
    return model, tok


@pytest.fixture(scope="module")
def pairs():
    return st.read_pairs(st.example_sets()["happy_sad"])[:4]


def oracle_acts(model, tok, texts, layers, read):
    """{L: [texts, width] float64} from transformers' output_hidden_states[L + 1]."""
    out = {L: [] for L in layers}
    with torch.inference_mode():
        for t in texts:
            hs = model(**tok(t, return_tensors="pt"), output_hidden_states=True).hidden_states
            for L in layers:
                h = hs[L + 1][0].double().numpy()
                out[L].append(h[-1] if read == "last" else h.mean(axis=0))
    return {L: np.stack(v) for L, v in out.items()}


def f32_tol(ref: np.ndarray) -> float:
    """Float32 storage of a float64 result: half an ulp at the largest magnitude, twice over for
    summation order."""
    return float(np.abs(ref).max()) * np.finfo(np.float32).eps * 2


# -- extraction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("read", ["last", "mean"])
def test_mean_difference_equals_numpy_over_hidden_states(smol, pairs, read):
    model, tok = smol
    layers = [3, 17]
    vec = st.extract(model, tok, pairs, layers, "mean", read)
    texts = [t for p in pairs for t in (p.positive, p.negative)]
    acts = oracle_acts(model, tok, texts, layers, read)
    assert vec.layers == layers
    for L in layers:
        ref = (acts[L][0::2] - acts[L][1::2]).mean(axis=0)
        assert vec.vectors[L].dtype == np.float32 and vec.vectors[L].shape == (HIDDEN,)
        np.testing.assert_allclose(vec.vectors[L], ref, rtol=0, atol=f32_tol(ref))
        assert vec.metrics["per_layer"][str(L)]["norm"] == pytest.approx(np.linalg.norm(ref), rel=1e-9)


def test_pca_diff_equals_sklearn_with_repeng_sign(smol, pairs):
    from sklearn.decomposition import PCA

    model, tok = smol
    vec = st.extract(model, tok, pairs, [10], "pca", "last")
    texts = [t for p in pairs for t in (p.positive, p.negative)]
    h = oracle_acts(model, tok, texts, [10], "last")[10]
    diffs = h[0::2] - h[1::2]
    ref = PCA(n_components=1, whiten=False).fit(diffs).components_[0]
    # repeng: positives should project above their negatives for most pairs
    if np.mean((h[0::2] @ ref) > (h[1::2] @ ref)) < 0.5:
        ref = -ref
    np.testing.assert_allclose(vec.vectors[10], ref, rtol=0, atol=1e-6)
    assert np.linalg.norm(vec.vectors[10]) == pytest.approx(1.0, abs=1e-6)


# -- applying -----------------------------------------------------------------------------------------


def test_applied_vector_equals_a_hand_written_forward_hook(smol, pairs):
    model, tok = smol
    vec = st.extract(model, tok, pairs[:2], [6, 9], "mean", "last")
    coeff = -2.5
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        iv = st.intervention(vec, coeff, device="cpu", dtype=torch.bfloat16)
        with attach(model, [iv]):
            ours = model(input_ids=ids).logits
        handles = []
        for L in (6, 9):
            add = (coeff * torch.tensor(vec.vectors[L], dtype=torch.float32)).to(torch.bfloat16)
            handles.append(model.model.layers[L].register_forward_hook(
                lambda mod, args, out, add=add: out + add))
        try:
            oracle = model(input_ids=ids).logits
        finally:
            for hnd in handles:
                hnd.remove()
        after = model(input_ids=ids).logits
    # the same bf16 additions in the same order: the logits are the same bits
    assert torch.equal(ours, oracle)
    assert not torch.equal(ours, plain)  # the vector does something
    assert torch.equal(after, plain)  # and the hooks are gone after the pass


def test_intervention_refuses_layers_the_vector_lacks_and_bad_coefficients(smol, pairs):
    vec = st.SteeringVector("v", {4: np.ones(HIDDEN, np.float32)})
    with pytest.raises(InvalidRequest, match="no direction for block 5"):
        st.intervention(vec, 1.0, [5], device="cpu", dtype=torch.bfloat16)
    with pytest.raises(InvalidRequest, match="coefficient"):
        st.intervention(vec, float("nan"), device="cpu", dtype=torch.bfloat16)


# -- bad input ----------------------------------------------------------------------------------------


def test_pairs_with_an_empty_side_or_too_few_are_refused_naming_file_and_field(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"positive": "happy", "negative": "sad"}) + "\n"
                 + json.dumps({"positive": "glad", "negative": "  "}) + "\n")
    with pytest.raises(st.InvalidPairs) as e:
        st.read_pairs(f)
    assert e.value.context["field"] == "pairs[1].negative" and e.value.context["file"] == str(f)
    f.write_text(json.dumps({"positive": "happy", "negative": "sad"}) + "\n")
    with pytest.raises(st.InvalidPairs, match="at least 2"):
        st.read_pairs(f)
    f.write_text('{"positive": "a", "negative": "b"}\nnot json\n')
    with pytest.raises(st.InvalidPairs, match="line 2") as e:
        st.read_pairs(f)
    assert e.value.context["line"] == 2
    with pytest.raises(st.InvalidPairs, match="3 positive texts but 2 negative"):
        st.pairs_from_obj({"positive": ["a", "b", "c"], "negative": ["x", "y"]})
    # two lists pair up one to one
    two = st.pairs_from_obj({"positive": ["a", "b"], "negative": ["x", "y"]})
    assert [(p.positive, p.negative) for p in two] == [("a", "x"), ("b", "y")]


def test_layer_ranges_are_parsed_and_checked_against_the_model():
    assert st.parse_layers("10-12", 30) == [10, 11, 12]
    assert st.parse_layers("3,5, 7", 30) == [3, 5, 7]
    assert st.parse_layers("all", 4) == [0, 1, 2, 3]
    with pytest.raises(InvalidRequest, match="block 30 is outside the model, which has blocks 0-29"):
        st.parse_layers("25-30", 30)
    with pytest.raises(InvalidRequest, match="runs backwards"):
        st.parse_layers("9-3", 30)
    with pytest.raises(InvalidRequest, match="range A-B"):
        st.parse_layers("ten", 30)


def test_vector_width_mismatch_is_refused():
    vec = st.SteeringVector("narrow", {3: np.ones(64, np.float32)})
    with pytest.raises(st.InvalidVector, match="576 wide") as e:
        st.check_vector(vec, HIDDEN, N_LAYERS, "narrow.safetensors")
    assert e.value.context["field"] == "direction.3" and e.value.context["file"] == "narrow.safetensors"
    with pytest.raises(st.InvalidVector, match="blocks 0-29"):
        st.check_vector(st.SteeringVector("far", {31: np.ones(HIDDEN, np.float32)}), HIDDEN, N_LAYERS, "far")


# -- GGUF control vectors -----------------------------------------------------------------------------


def test_gguf_export_reads_back_with_gguf_as_repeng_writes_it(tmp_path):
    rng = np.random.default_rng(0)
    vec = st.SteeringVector("mood", {L: rng.standard_normal(HIDDEN).astype(np.float32) for L in (0, 5, 6, 29)})
    out = tmp_path / "mood.gguf"
    info = write_control_vector(out, vec, "llama")
    assert info["layers"] == [5, 6, 29] and info["skipped"]["layers"] == [0]
    r = gguf.GGUFReader(out)
    f = r.fields["general.architecture"]
    assert bytes(f.parts[f.data[0]]).decode() == "controlvector"
    f = r.fields["controlvector.model_hint"]
    assert bytes(f.parts[f.data[0]]).decode() == "llama"
    f = r.fields["controlvector.layer_count"]
    assert int(f.parts[f.data[0]][0]) == 3
    assert sorted(t.name for t in r.tensors) == ["direction.29", "direction.5", "direction.6"]
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), vec.vectors[int(t.name.split(".")[1])])
    back, hint = read_control_vector(out)
    assert hint == "llama" and back.layers == [5, 6, 29]
    for L in back.layers:
        np.testing.assert_array_equal(back.vectors[L], vec.vectors[L])
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, renamed into place


def _gguf(path, arch, tensors, hint=None):
    w = gguf.GGUFWriter(str(path), arch)
    if hint:
        w.add_string(f"{arch}.model_hint", hint)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_control_vectors_for_another_architecture_or_width_are_refused(tmp_path):
    weights = _gguf(tmp_path / "weights.gguf", "llama", {"token_embd.weight": np.ones((4, 8), np.float32)})
    with pytest.raises(InvalidControlVector, match="architecture 'llama', not a control vector") as e:
        read_control_vector(weights)
    assert e.value.context == {"file": str(weights), "field": "general.architecture", "found": "llama"}
    qwen = _gguf(tmp_path / "qwen.gguf", "controlvector", {"direction.3": np.ones(HIDDEN, np.float32)}, "qwen2")
    vec, hint = read_control_vector(qwen)
    with pytest.raises(InvalidControlVector, match="made for a 'qwen2' model") as e:
        check_for_model(vec, hint, "llama", HIDDEN, N_LAYERS, str(qwen))
    assert e.value.context["field"] == "controlvector.model_hint"
    wide = _gguf(tmp_path / "wide.gguf", "controlvector", {"direction.3": np.ones(2048, np.float32)}, "llama")
    vec, hint = read_control_vector(wide)
    with pytest.raises(InvalidControlVector, match="576 wide") as e:
        check_for_model(vec, hint, "llama", HIDDEN, N_LAYERS, str(wide))
    assert e.value.context["field"] == "direction.3"
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(InvalidControlVector, match="not a readable GGUF"):
        read_control_vector(junk)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_extract_export_import_round_trip(tmp_path, smol, smol_dir, run):
    from safetensors.numpy import load_file

    from tensor_surgery.interp.packs import load_pack

    model, tok = smol
    pairs_file = tmp_path / "pairs.jsonl"
    two = st.read_pairs(st.example_sets()["formal_casual"])[:2]
    pairs_file.write_text("".join(json.dumps({"positive": p.positive, "negative": p.negative}) + "\n" for p in two))
    pack = tmp_path / "formal"
    r = run("steer", "extract", smol_dir, pairs_file, "--layers", "4-5", "--method", "mean", "--read", "last",
            "--out", pack, "--json")
    assert r.exit_code == 0, r.stdout
    out = json.loads(r.stdout)
    assert out["layers"] == [4, 5] and out["width"] == HIDDEN
    p = load_pack(pack)
    assert p.kind == "steering" and p.layers == [4, 5] and p.model_checksum == out["model_checksum"]
    acts = oracle_acts(model, tok, [t for q in two for t in (q.positive, q.negative)], [4, 5], "last")
    for L in (4, 5):
        ref = (acts[L][0::2] - acts[L][1::2]).mean(axis=0)
        np.testing.assert_allclose(p.tensors[f"direction.{L}"], ref, rtol=0, atol=f32_tol(ref))

    r = run("steer", "export", pack, "--format", "gguf", "--out", tmp_path / "formal.gguf", "--json")
    assert r.exit_code == 0, r.stdout
    r = run("steer", "export", pack, "--format", "safetensors", "--out", tmp_path / "formal.safetensors", "--json")
    assert r.exit_code == 0, r.stdout
    flat = load_file(tmp_path / "formal.safetensors")
    assert sorted(flat) == ["direction.4", "direction.5"]
    r = run("steer", "import", tmp_path / "formal.gguf", "--model", smol_dir, "--out", tmp_path / "back", "--json")
    assert r.exit_code == 0, r.stdout
    back = load_pack(tmp_path / "back")
    for L in (4, 5):
        np.testing.assert_array_equal(back.tensors[f"direction.{L}"], p.tensors[f"direction.{L}"])
        np.testing.assert_array_equal(flat[f"direction.{L}"], p.tensors[f"direction.{L}"])

    # bad input: exit 2 with the field named, nothing written
    r = run("steer", "extract", smol_dir, pairs_file, "--layers", "28-31", "--out", tmp_path / "x", "--json")
    assert r.exit_code == 2 and "blocks 0-29" in json.loads(r.stdout)["error"]["message"]
    assert not (tmp_path / "x").exists()
    r = run("steer", "export", pack, "--format", "gguf", "--out", tmp_path / "formal.gguf", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]["field"] == "out"
    other = _gguf(tmp_path / "m.gguf", "llama", {"token_embd.weight": np.ones((4, 8), np.float32)})
    r = run("steer", "import", other, "--model", smol_dir, "--out", tmp_path / "y", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"]["field"] == "general.architecture"
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"positive": "a", "negative": "b"}) + "\n")
    r = run("steer", "extract", smol_dir, one, "--out", tmp_path / "z", "--json")
    assert r.exit_code == 2 and "at least 2" in json.loads(r.stdout)["error"]["message"]


# -- the live model over HTTP and the WebSocket -------------------------------------------------------

TWO_PAIRS = [{"positive": "I am so happy today, everything feels wonderful.",
              "negative": "I am so sad today, everything feels hopeless."},
             {"positive": "What a delightful surprise, I love it!",
              "negative": "What a painful disappointment, I hate it."}]


@pytest.fixture(scope="module")
def lc(tmp_path_factory, smol_dir):
    """A client on an app serving the demo model with the live model loaded (once per module)."""
    from fastapi.testclient import TestClient

    from tensor_surgery.web.app import create_app

    from .test_live import barrier, wait_state

    tmp = tmp_path_factory.mktemp("steer")
    corpus = tmp / "corpus"  # TEXT_CORPUS: the tests never depend on ../shared beside the checkout
    corpus.mkdir()
    text = ("The European lobster is a species of clawed lobster from the eastern Atlantic Ocean, "
            "the Mediterranean Sea and parts of the Black Sea. It is closely related to the American "
            "lobster, and it may grow to a length of sixty centimetres and a mass of six kilograms.\n")
    for split in ("valid", "test"):
        (corpus / f"{split}.txt").write_text(text)
    settings = make_settings(tmp, smol_dir, allowed_roots=[tmp, smol_dir], live_prompt=PROMPT, text_corpus=corpus)
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        c.tmp = tmp
        assert c.post("/api/live/load").status_code == 200
        wait_state(c, "ready", timeout=300)
        barrier(c.app.state.live)
        yield c


def _published(live, pred, action, timeout=120):
    """Run `action` and return the first message published after it that satisfies `pred`."""
    import queue

    from .test_live import barrier

    q: queue.Queue = queue.Queue()
    unsubscribe = live.subscribe(q.put)
    try:
        action()
        barrier(live)
        import time

        deadline = time.monotonic() + timeout
        while True:
            msg = q.get(timeout=max(0.1, deadline - time.monotonic()))
            if pred(msg):
                return msg
    finally:
        unsubscribe()


def test_live_steering_toggle_equals_the_hand_hooked_model(lc, smol):
    model, tok = smol
    live = lc.app.state.live
    r = lc.post("/api/steering/extract", json={"name": "joy", "pairs": TWO_PAIRS, "layers": "5-6",
                                                "coefficient": 6.0})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["name"] == "joy" and v["layers"] == [5, 6] and v["enabled"] is False and v["width"] == HIDDEN
    vec = live.hooks.get("joy").payload
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        plain = model(input_ids=ids).logits[0, -1].float()
        handles = [model.model.layers[L].register_forward_hook(
            lambda mod, a, out, add=(6.0 * torch.tensor(vec.vectors[L])).to(torch.bfloat16): out + add) for L in (5, 6)]
        try:
            steered = model(input_ids=ids).logits[0, -1].float()
        finally:
            for hnd in handles:
                hnd.remove()
    assert not torch.equal(plain, steered)

    msg = _published(live, lambda m: m.get("type") == "logits" and any(i["enabled"] for i in m["interventions"]),
                     lambda: lc.post("/api/steering/vectors/joy/toggle", json={"enabled": True}))
    for row in msg["top"]:
        assert row["logit"] == float(steered[row["id"]])  # the same bits as the hand-hooked model
        assert row["base_logit"] == float(plain[row["id"]])
    msg = _published(live, lambda m: m.get("type") == "logits" and not any(i["enabled"] for i in m["interventions"]),
                     lambda: lc.post("/api/steering/vectors/joy/toggle", json={"enabled": False}))
    for row in msg["top"]:
        assert row["logit"] == float(plain[row["id"]])

    # a negative coefficient inverts: the addend flips sign
    r = lc.patch("/api/steering/vectors/joy", json={"coefficient": -6.0, "enabled": True})
    assert r.status_code == 200 and r.json()["coefficient"] == -6.0 and r.json()["enabled"] is True
    msg = _published(live, lambda m: m.get("type") == "continuation" and m["steered_by"] == ["joy"],
                     lambda: lc.post("/api/steering/continuation", json={"tokens": 6}))
    with torch.inference_mode():
        default = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert msg["default"] == tok.decode(default)
    lc.post("/api/steering/continuation", json={"tokens": 0})
    assert lc.delete("/api/steering/vectors/joy").status_code == 200
    assert lc.get("/api/steering/vectors").json()["vectors"] == []


def test_live_steering_bad_input_is_a_clear_4xx(lc, tmp_path):
    from .conftest import assert_error

    bad = [{"positive": "happy", "negative": ""}, TWO_PAIRS[1]]
    err = assert_error(lc.post("/api/steering/extract", json={"name": "x", "pairs": bad}), 400, "invalid_pairs")
    assert err["field"] == "pairs[0].negative"
    assert_error(lc.post("/api/steering/extract", json={"name": "x", "pairs": TWO_PAIRS[:1]}), 400, "invalid_pairs",
                 "at least 2")
    err = assert_error(lc.post("/api/steering/extract", json={"name": "x", "pairs": TWO_PAIRS, "layers": "29-40"}),
                       400, "invalid_request", "blocks 0-29")
    assert err["field"] == "layers"
    assert_error(lc.post("/api/steering/vectors/nope/toggle", json={"enabled": True}), 404, "intervention_not_found")
    other = _gguf(lc.tmp / "weights.gguf", "llama", {"token_embd.weight": np.ones((4, 8), np.float32)})
    err = assert_error(lc.post("/api/steering/load", json={"path": str(other)}), 422, "invalid_control_vector")
    assert err["field"] == "general.architecture" and err["file"] == str(other)
    narrow = _gguf(lc.tmp / "narrow.gguf", "controlvector", {"direction.3": np.ones(64, np.float32)}, "llama")
    err = assert_error(lc.post("/api/steering/load", json={"path": str(narrow)}), 422, "invalid_control_vector",
                       "576 wide")
    assert err["field"] == "direction.3"
    assert_error(lc.post("/api/steering/load", json={"path": str(tmp_path / "x.gguf")}), 403, "path_not_allowed")


def test_live_gguf_load_and_pack_save_round_trip(lc):
    rng = np.random.default_rng(1)
    vec = st.SteeringVector("cv", {L: rng.standard_normal(HIDDEN).astype(np.float32) for L in (7, 8)})
    path = lc.tmp / "cv.gguf"
    write_control_vector(path, vec, "llama")
    r = lc.post("/api/steering/load", json={"path": str(path), "coefficient": 1.5})
    assert r.status_code == 200, r.text
    assert r.json()["layers"] == [7, 8] and r.json()["coefficient"] == 1.5
    r = lc.post("/api/steering/vectors/cv/save", json={})
    assert r.status_code == 200, r.text
    from tensor_surgery.interp.packs import load_pack

    pack = load_pack(r.json()["pack"])
    assert pack.kind == "steering"
    for L in (7, 8):
        np.testing.assert_array_equal(pack.tensors[f"direction.{L}"], vec.vectors[L])
    r = lc.post("/api/steering/vectors/cv/export", json={"format": "gguf"})
    assert r.status_code == 200, r.text
    back, hint = read_control_vector(r.json()["path"])
    assert hint == "llama" and back.layers == [7, 8]
    assert lc.delete("/api/steering/vectors/cv").status_code == 200


def test_live_lens_table_and_a_tuned_lens_job(lc, smol):
    """The lens routes on the live model: the logit lens's last block is the live top token; a
    tuned lens trained as a (one-step) job becomes available to the table and its pack reloads."""
    import time

    from .conftest import assert_error

    model, tok = smol
    assert_error(lc.get("/api/lens", params={"kind": "tuned"}), 400, "invalid_request", "no tuned lens")
    r = lc.get("/api/lens", params={"prompt": "The capital of France is"})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["kind"] == "logit" and len(t["layers"]) == N_LAYERS and t["tokens"][-1] == " is"
    with torch.inference_mode():
        final = model(**tok("The capital of France is", return_tensors="pt")).logits[0, -1].float()
    assert t["layers"][-1]["token_id"][-1] == int(final.argmax())

    r = lc.post("/api/lens/tuned/train", json={"name": "one-step", "steps": 1, "seq_len": 8, "eval_sequences": 1})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    deadline = time.monotonic() + 600
    while (s := lc.get(f"/api/jobs/{job}").json())["state"] == "running":
        assert time.monotonic() < deadline, s
        time.sleep(0.5)
    assert s["state"] == "done", s
    metrics = s["result"]["metrics"]
    assert len(metrics["tuned_kl"]) == len(metrics["logit_kl"]) == N_LAYERS
    tuned = lc.get("/api/lens", params={"kind": "tuned", "prompt": "The capital of France is"}).json()
    assert tuned["kind"] == "tuned" and tuned["tuned"]["pack"] == s["result"]["pack"]
    assert tuned["layers"] != t["layers"]  # one Adam step moves every translator off the identity
    r = lc.post("/api/lens/tuned/load", json={"path": s["result"]["pack"]})
    assert r.status_code == 200 and r.json()["layers"] == list(range(N_LAYERS))
    assert_error(lc.post("/api/lens/tuned/train", json={"name": "one-step", "steps": 1}), 400, "invalid_request",
                 "already exists")


def test_live_observers_read_block_outputs_into_the_logits_message(lc, smol):
    """The hooks seam's other half: an observer sees each chosen block's output during the live
    pass (after interventions) and its small result rides in the logits message."""
    from tensor_surgery.live.hooks import Observer

    model, tok = smol
    live = lc.app.state.live
    ob = Observer("norms", (0, 10), lambda hidden, ids: {str(L): float(h[0, -1].double().norm()) for L, h in hidden.items()})
    live.hooks.put_observer(ob)
    try:
        msg = _published(live, lambda m: m.get("type") == "logits" and "norms" in m["observers"],
                         lambda: live.set_prompt(PROMPT))
    finally:
        live.hooks.remove_observer("norms")
    with torch.inference_mode():
        hs = model(**tok(PROMPT, return_tensors="pt"), output_hidden_states=True).hidden_states
    for L in (0, 10):
        assert msg["observers"]["norms"][str(L)] == float(hs[L + 1][0, -1].double().norm())
