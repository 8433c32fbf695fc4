"""Logit lens and tuned lens on the real SmolLM2-135M demo model.

Oracles: transformers' own `output_hidden_states` pushed through the model's final norm and
lm_head by hand; a tuned lens at its identity initialization must give the logit lens exactly;
a planted translator is checked against the affine map computed by hand; the saved pack is read
back with the safetensors library. Training in tests is a few steps on a few tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tensor_surgery.interp import lens as ln  # noqa: E402

PROMPT = "The capital of France is"
N_LAYERS, HIDDEN = 30, 576


@pytest.fixture(scope="module")
def smol(smol_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir)
    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.bfloat16).eval()
    return model, tok


@pytest.fixture(scope="module")
def ids(smol):
    return smol[1](PROMPT, return_tensors="pt")["input_ids"]


@pytest.fixture(scope="module")
def oracle(smol, ids):
    """Per layer: softmax(lm_head(norm(output_hidden_states[L + 1]))) in float32; the last block's
    entry is already normed by transformers, so it is the model's own output."""
    model, _ = smol
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True)
        hs = out.hidden_states
        probs = []
        for L in range(N_LAYERS):
            if L < N_LAYERS - 1:
                logits = model.lm_head(model.model.norm(hs[L + 1]))[0].float()
            else:
                logits = model.lm_head(hs[N_LAYERS])[0].float()
            probs.append(torch.softmax(logits, dim=-1))
        assert torch.equal(model.lm_head(hs[N_LAYERS]), out.logits)
    return probs


def test_logit_lens_equals_norm_and_unembedding_of_hidden_states(smol, ids, oracle):
    model, tok = smol
    table = ln.lens_table(model, tok, ids)
    assert table["kind"] == "logit" and len(table["layers"]) == N_LAYERS
    assert table["tokens"] == [tok.decode([i]) for i in ids[0].tolist()]
    for row, p in zip(table["layers"], oracle):
        top_p, top_i = p.max(dim=-1)
        assert row["token_id"] == top_i.tolist()
        np.testing.assert_allclose(row["prob"], top_p.numpy(), rtol=0, atol=1e-6)  # rounded to 6 places
        ent = -(p.double() * torch.log(p.double())).nan_to_num().sum(-1)
        np.testing.assert_allclose(row["entropy"], ent.numpy(), rtol=1e-4, atol=2e-6)
    last = table["layers"][-1]
    assert last["token"][-1] == " Paris" and last["kl_to_final"] == [0.0] * ids.shape[1]
    assert table["layers"][0]["kl_to_final"][-1] > 1.0  # the first block is far from the answer


def test_tuned_lens_at_identity_is_the_logit_lens(smol, ids):
    model, tok = smol
    logit = ln.lens_table(model, tok, ids)
    tuned = ln.lens_table(model, tok, ids, ln.TunedLens.identity(N_LAYERS, HIDDEN))
    assert tuned["kind"] == "tuned"
    assert tuned["layers"] == logit["layers"]


def test_a_planted_translator_is_applied_as_h_plus_hA_plus_b(smol, ids):
    model, tok = smol
    rng = np.random.default_rng(0)
    lens = ln.TunedLens.identity(N_LAYERS, HIDDEN)
    lens.weights[12] = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.02).astype(np.float32)
    lens.biases[12] = (rng.standard_normal(HIDDEN) * 0.5).astype(np.float32)
    table = ln.lens_table(model, tok, ids, lens)
    with torch.inference_mode():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[13][0].double().numpy()
        moved = h + h @ lens.weights[12].astype(np.float64).T + lens.biases[12]
        x = torch.from_numpy(moved).float().to(torch.bfloat16)
        p = torch.softmax(model.lm_head(model.model.norm(x)).float(), dim=-1)
    # float32 vs float64 before the cast to bf16: at most one bf16 rounding step apart, which the
    # norm and unembedding carry into a few 1e-3 of probability at worst
    np.testing.assert_allclose(table["layers"][12]["prob"], p.max(-1).values.numpy(), atol=5e-3)
    assert table["layers"][12]["token_id"] == p.argmax(-1).tolist()
    assert table["layers"][11] == ln.lens_table(model, tok, ids)["layers"][11]  # other blocks untouched


def test_tuned_lens_training_lowers_kl_and_saves_a_lens_pack(smol, tmp_path):
    from safetensors.numpy import load_file

    from tensor_surgery.interp.packs import load_pack

    model, tok = smol
    text = ("The European lobster is a species of clawed lobster from the eastern Atlantic Ocean, "
            "the Mediterranean Sea and parts of the Black Sea. It is closely related to the American "
            "lobster, and it may grow to a length of sixty centimetres and a mass of six kilograms.")
    for split in ("valid", "test"):
        (tmp_path / f"{split}.txt").write_text(text + "\n")
    lens, metrics = ln.train_tuned_lens(model, tok, steps=3, seq_len=16, lr=1e-3, eval_chunks=1,
                                        data_folder=tmp_path)
    assert len(metrics["logit_kl"]) == len(metrics["tuned_kl"]) == N_LAYERS
    assert len(metrics["logit_perplexity"]) == N_LAYERS
    # trained on this very sequence: the translators pull the early blocks towards the final distribution
    assert np.mean(metrics["tuned_kl"][:20]) < np.mean(metrics["logit_kl"][:20])
    out = ln.save_lens(lens, metrics, tmp_path / "lens", name="tiny-lens", model_checksum=None,
                       model_name="SmolLM2", model_type="llama")
    pack = load_pack(out)
    assert pack.kind == "lens" and pack.layers == list(range(N_LAYERS))
    assert json.loads((out / "config.json").read_text())["hidden_size"] == HIDDEN
    raw = load_file(out / "tensors.safetensors")
    np.testing.assert_array_equal(raw["translator.3.weight"], lens.weights[3])
    back = ln.TunedLens.from_pack(pack, HIDDEN, N_LAYERS)
    np.testing.assert_array_equal(back.biases[29], lens.biases[29])
    with pytest.raises(ln.InvalidLens, match="this model needs") as e:
        ln.TunedLens.from_pack(pack, 64, N_LAYERS)
    assert e.value.context["field"] == "translator.0.bias" or e.value.context["field"].startswith("translator.")


def test_cli_lens_train_then_show_logit_and_tuned(smol, ids, oracle, smol_dir, tmp_path, run):
    """`lens train` writes a lens pack from the given corpus; `lens show` prints the logit lens
    (the oracle's top tokens) and, with --pack, the tuned lens of that very pack."""
    from tensor_surgery.interp.packs import load_pack

    model, tok = smol
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = ("The European lobster is a species of clawed lobster from the eastern Atlantic Ocean, "
            "the Mediterranean Sea and parts of the Black Sea. It is closely related to the American "
            "lobster, and it may grow to a length of sixty centimetres and a mass of six kilograms.")
    for split in ("valid", "test"):
        (corpus / f"{split}.txt").write_text(text + "\n")
    pack = tmp_path / "lens"
    r = run("lens", "train", smol_dir, "--out", pack, "--steps", "1", "--seq-len", "8", "--eval-sequences", "1",
            "--corpus", corpus, "--json")
    assert r.exit_code == 0, r.stdout
    trained = json.loads(r.stdout)
    p = load_pack(pack)
    assert p.kind == "lens" and p.model_checksum == trained["model_checksum"]
    assert len(trained["metrics"]["tuned_kl"]) == N_LAYERS

    r = run("lens", "show", smol_dir, PROMPT, "--json")
    assert r.exit_code == 0, r.stdout
    logit = json.loads(r.stdout)
    assert logit["kind"] == "logit"
    assert [row["token_id"] for row in logit["layers"]] == [pr.argmax(-1).tolist() for pr in oracle]
    r = run("lens", "show", smol_dir, PROMPT, "--pack", pack, "--json")
    assert r.exit_code == 0, r.stdout
    tuned = json.loads(r.stdout)
    expected = ln.lens_table(model, tok, ids, ln.TunedLens.from_pack(p, HIDDEN, N_LAYERS))
    assert tuned["kind"] == "tuned" and tuned["layers"] == expected["layers"]
    assert tuned["layers"] != logit["layers"]

    r = run("lens", "train", smol_dir, "--out", pack, "--steps", "1", "--corpus", corpus, "--json")
    assert r.exit_code == 2 and "already exists" in r.stdout
    r = run("lens", "show", smol_dir, "   ", "--json")
    assert r.exit_code == 2 and "prompt" in r.stdout


# -- the lens bank: every lens together, one batched translator matmul per block -----------------------


def _random_lens(rng, layers, scale=0.02):
    lens = ln.TunedLens.identity(N_LAYERS, HIDDEN)
    lens.weights = {L: (rng.standard_normal((HIDDEN, HIDDEN)) * scale).astype(np.float32) for L in layers}
    lens.biases = {L: (rng.standard_normal(HIDDEN) * 0.5).astype(np.float32) for L in layers}
    return lens


def _gamma(n: int) -> float:
    """Higham's gamma_n for float32: the relative bound of an n-term float32 sum in any order."""
    u = 2.0 ** -24
    return n * u / (1 - n * u)


def test_lens_bank_translates_every_lens_in_one_matmul_as_float64_does(smol, ids):
    from tensor_surgery.interp.bank import LensBank

    rng = np.random.default_rng(3)
    lenses = [_random_lens(rng, range(N_LAYERS)), None, _random_lens(rng, [4, 9]), ln.TunedLens.identity(N_LAYERS, HIDDEN)]
    bank = LensBank(lenses)
    hidden, _ = ln.block_outputs(smol[0], ids)
    for L in (4, 5):
        h = hidden[L].float()
        got = bank.translate(L, h).numpy()
        assert got.shape == (4, ids.shape[1], HIDDEN)
        h64 = h.double().numpy()
        np.testing.assert_array_equal(got[1], h.numpy())  # the logit lens passes the block output through
        np.testing.assert_array_equal(got[3], h.numpy())  # an identity translator adds exact zeros
        for k in (0, 2):
            lens = lenses[k]
            if L not in lens.weights:
                np.testing.assert_array_equal(got[k], h.numpy())
                continue
            A, b = lens.weights[L].astype(np.float64), lens.biases[L].astype(np.float64)
            want = h64 + h64 @ A.T + b
            # W products summed in float32 plus two additions: gamma_{W+2} times the sum of magnitudes
            bound = _gamma(HIDDEN + 2) * (np.abs(h64) + np.abs(h64) @ np.abs(A).T + np.abs(b))
            assert np.all(np.abs(got[k] - want) <= bound)


def test_batched_lens_tables_equal_the_sequential_per_lens_loop(smol, ids, oracle, monkeypatch):
    """Two tuned lenses, the logit lens and an identity tuned lens in one bank. The sequential
    reference (one lens, one block at a time) rounds the same float32 products in another order:
    the logits differ by at most delta = 2 gamma_W max_t sum_i |x_ti w_vi| (x the normed input of
    the unembedding W), so log-probabilities by 2 delta, probabilities by e^{2 delta} - 1, the
    entropy by that times (H + 1) and the KL to the final distribution by 2 delta."""
    from tensor_surgery.interp import bank as bk

    model, tok = smol
    rng = np.random.default_rng(4)
    lenses = [_random_lens(rng, range(N_LAYERS)), _random_lens(rng, range(0, N_LAYERS, 3)), None,
              ln.TunedLens.identity(N_LAYERS, HIDDEN)]
    monkeypatch.setattr(bk, "LENS_CHUNK_ELEMENTS", 3 * model.config.vocab_size)  # 3 rows a chunk, across lenses
    batched = ln.lens_tables(model, tok, ids, lenses)
    sequential = ln.lens_tables(model, tok, ids, lenses, sequential=True)
    assert [t["kind"] for t in batched] == ["tuned", "tuned", "logit", "tuned"]
    hidden, _ = ln.block_outputs(model, ids)
    W = ln.unembedding(model).weight.float().abs()
    with torch.inference_mode():
        worst = 0.0
        for L, h in hidden.items():
            for x in bk.LensBank(lenses).translate(L, h.float()).to(h.dtype):
                worst = max(worst, float((ln.final_norm(model)(x).float().abs() @ W.T).max()))
    delta = 2 * _gamma(HIDDEN) * worst
    dp = np.expm1(2 * delta)
    for got, want in zip(batched, sequential):
        assert got["tokens"] == want["tokens"]
        for a, b in zip(got["layers"], want["layers"]):
            assert a["layer"] == b["layer"] and a["token_id"] == b["token_id"]
            np.testing.assert_allclose(a["prob"], b["prob"], rtol=0, atol=dp + 1e-6)  # + the 6-place rounding
            np.testing.assert_allclose(a["entropy"], b["entropy"], rtol=0,
                                       atol=dp * (max(b["entropy"]) + 1) + 2 * delta + 1e-6)
            np.testing.assert_allclose(a["kl_to_final"], b["kl_to_final"], rtol=0, atol=2 * delta + 1e-6)
    # the logit lens and the identity tuned lens are the logit lens, exactly: the oracle's top tokens
    assert batched[3]["layers"] == batched[2]["layers"] == ln.lens_table(model, tok, ids)["layers"]
    assert [r["token_id"] for r in batched[2]["layers"]] == [p.argmax(-1).tolist() for p in oracle]
    # the translators do move the tuned tables away from the logit lens
    assert batched[0]["layers"][5]["prob"] != batched[2]["layers"][5]["prob"]
    assert batched[1]["layers"][3] != batched[2]["layers"][3] and batched[1]["layers"][4] == batched[2]["layers"][4]
