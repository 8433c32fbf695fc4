"""Probes, the batched probe bank and the live monitor.

Oracles: planted directions in synthetic activations (the probe must find them), numpy float64
for every score, transformers' own `output_hidden_states` for what the probes read, and
scikit-learn's split/metrics recomputed from the saved weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tensor_surgery.interp import probes as pr
from tensor_surgery.interp.bank import ProbeBank

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "probes" / "sentiment.jsonl"
F32_EPS = 2.0 ** -24  # unit roundoff of float32


# -- training on planted concepts ------------------------------------------------------------------


def test_probe_finds_a_planted_linear_concept_and_the_layer_that_carries_it():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n, d = 800, 48
    y = np.repeat([0, 1], n // 2)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    scale = rng.uniform(0.5, 2.0, d)  # anisotropic noise with a large offset, as residual streams have
    acts = {}
    for L, strength in {0: 0.0, 1: 0.6, 2: 4.0}.items():
        acts[L] = rng.standard_normal((n, d)) * scale + rng.standard_normal(d) * 5 + np.outer(y * strength, direction)
    fits, split = pr.fit_probes(acts, y, seed=0)
    assert split == {"train": 600, "test": 200, "seed": 0, "test_fraction": 0.25}
    assert pr.best_layer(fits) == 2
    # the Bayes-optimal rule for two Gaussians with covariance S = diag(scale^2): direction S^-1 d,
    # accuracy Phi(Mahalanobis distance / 2); the probe must get close to both
    bayes_w = direction / scale ** 2
    for L, strength in {1: 0.6, 2: 4.0}.items():
        bayes_acc = norm.cdf(strength * np.sqrt(direction @ bayes_w) / 2)
        sampling = 3 * np.sqrt(bayes_acc * (1 - bayes_acc) / 200) + 0.02  # 3 sigma of a 200-text estimate
        assert fits[L].accuracy >= bayes_acc - sampling, (L, fits[L].accuracy, bayes_acc)
    assert fits[0].accuracy <= 0.5 + 3 * np.sqrt(0.25 / 200)  # no concept there: chance
    w = fits[2].weight
    assert w @ bayes_w / np.linalg.norm(w) / np.linalg.norm(bayes_w) > 0.9
    # the saved weights act on raw residuals: recompute the held-out accuracy from them
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(n), test_size=200, random_state=0, stratify=y)
    pred = (acts[2][test] @ w + fits[2].bias > 0).astype(int)
    assert fits[2].accuracy == pytest.approx(float((pred == y[test]).mean()))


def test_planted_direction_in_isotropic_noise_is_recovered_closely():
    rng = np.random.default_rng(1)
    n, d = 2000, 32  # enough texts that the estimate converges: cos -> 1 as n grows
    y = np.repeat([0, 1], n // 2)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    acts = {5: rng.standard_normal((n, d)) + np.outer(y * 2.0, direction)}
    fits, _ = pr.fit_probes(acts, y, seed=3)
    w = fits[5].weight
    assert w @ direction / np.linalg.norm(w) > 0.95


@pytest.mark.parametrize("rows,match", [
    ([{"text": f"t{i}", "label": "yes"} for i in range(6)], "every label is 'yes'"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 0}], "label 1 has 1 text"),
    ([{"text": "a", "label": i} for i in range(3)], "probes are binary"),
    ([{"text": "", "label": 1}], "'text' must be a non-empty string"),
    ([{"text": "a", "label": 0.5}], "'label' must be"),
])
def test_bad_labels_are_refused_naming_the_field(rows, match):
    with pytest.raises(pr.InvalidLabels, match=match) as e:
        pr.labelled_from_rows(rows, "data.jsonl")
    assert "data.jsonl" in e.value.message


def test_labels_pick_the_positive_class():
    data = pr.read_labelled(EXAMPLE)
    assert (data.positive, data.negative) == ("positive", "negative")
    assert data.y.sum() == 24 and len(data.y) == 48
    rows = [{"text": f"t{i}", "label": i % 2 == 0} for i in range(4)]
    assert pr.labelled_from_rows(rows).positive is True


# -- the bank: batched equals sequential, and numpy float64 -----------------------------------------


def _random_bank(rng, widths=64, layers=(0, 3, 7), per_pack=(5, 1, 17)):
    per_layer = {}
    for L in layers:
        per_layer[L] = [(f"pack{j}", [f"p{j}.{i}" for i in range(k)], rng.standard_normal((k, widths)).astype(np.float32),
                         rng.standard_normal(k).astype(np.float32)) for j, k in enumerate(per_pack)]
    return per_layer


def test_batched_scores_equal_sequential_and_float64():
    import torch

    rng = np.random.default_rng(0)
    per_layer = _random_bank(rng)
    bank = ProbeBank(per_layer)
    assert len(bank) == 3 * 23 and bank.width == 64
    hidden = {L: torch.from_numpy(rng.standard_normal((1, 40, 64)).astype(np.float32) * 3) for L in (0, 3, 7)}
    batched = bank.scores(hidden).numpy()
    sequential = bank.scores_sequential(hidden).numpy()
    assert batched.shape == (40, 69)
    np.testing.assert_allclose(batched, sequential, rtol=0, atol=1e-5)
    # float64 oracle, column by column in the bank's order (layer, then pack, then row)
    col = 0
    for L in (0, 3, 7):
        h = hidden[L][0].double().numpy()
        for _, names, w, b in per_layer[L]:
            logit = h @ w.astype(np.float64).T + b.astype(np.float64)
            oracle = 1 / (1 + np.exp(-logit))
            # float32 dot products: error <= width * eps * sum|h_i w_i| (+ the bias), and sigmoid' <= 1/4
            bound = 0.25 * (64 + 2) * F32_EPS * (np.abs(h) @ np.abs(w.astype(np.float64)).T + np.abs(b))
            got = batched[:, col:col + len(names)]
            assert np.all(np.abs(got - oracle) <= bound + 1e-7), np.max(np.abs(got - oracle) - bound)
            assert [c.name for c in bank.columns[col:col + len(names)]] == names
            assert all(c.layer == L for c in bank.columns[col:col + len(names)])
            col += len(names)


def test_bank_refuses_probes_for_another_model(tmp_path):
    from tensor_surgery.interp.packs import InvalidPack, load_pack

    folder = pr.write_probe_pack(tmp_path / "p", {2: pr.ProbeFit(2, np.ones(16), 0.5, 1, 1, 1)}, {"best_layer": 2},
                                 pr.labelled_from_rows([{"text": "a", "label": 1}, {"text": "b", "label": 1},
                                                        {"text": "c", "label": 0}, {"text": "d", "label": 0}]),
                                 name="p", model_checksum=None, model_name=None, read="last", seed=0)
    pack = load_pack(folder)
    with pytest.raises(InvalidPack, match="16 wide; this model's residual stream is 64 wide"):
        ProbeBank.from_packs([pack], width=64, n_layers=4)
    with pytest.raises(InvalidPack, match="block 2; this model has blocks 0-1"):
        ProbeBank.from_packs([pack], width=16, n_layers=2)
    bank = ProbeBank.from_packs([pack], width=16, n_layers=4)
    assert [c.to_json() for c in bank.columns] == [{"pack": "p", "name": "p", "layer": 2}]


# -- end to end on a small real-architecture model -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, smol_dir):
    """A 3-block Llama (width 64, random weights, float32) with SmolLM2's tokenizer: the real code
    paths of the live model at a fraction of the cost."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(smol_dir) / f, folder / f)
    return folder


@pytest.fixture(scope="module")
def oracle_hidden(tiny_llama):
    """text -> ({L: decoder block L's output as float64 [tokens, width]}, input ids), read by plain
    torch forward hooks on a separately loaded transformers model. (For blocks before the last this
    equals output_hidden_states[L + 1]; transformers applies the final norm to the last entry, the
    block's own output is what probes read.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    seen = {}
    for L, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda mod, args, out, L=L: seen.__setitem__(
            L, (out[0] if isinstance(out, tuple) else out)[0].double().numpy()))

    def run(text: str):
        with torch.no_grad():
            out = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
        for L in range(len(model.model.layers) - 1):
            np.testing.assert_array_equal(seen[L], out.hidden_states[L + 1][0].double().numpy())
        return dict(seen), tok(text)["input_ids"]

    return run


def test_probe_train_cli_writes_a_pack_whose_probes_score_like_the_oracle(tmp_path, tiny_llama, oracle_hidden):
    from click.testing import CliRunner

    from tensor_surgery.cli import main
    from tensor_surgery.interp.bank import MONITOR
    from tensor_surgery.interp.packs import load_pack
    from tensor_surgery.live.hooks import attach, observe
    from tensor_surgery.live.runtime import LiveModel
    from tensor_surgery.store import open_model
    from tensor_surgery.surgery.hexpatch import model_checksum

    out = tmp_path / "sentiment"
    subset = tmp_path / "subset.jsonl"  # 20 of the 48 example texts (10 pairs): the test's cost is one pass per text
    subset.write_text("".join(EXAMPLE.read_text().splitlines(keepends=True)[:20]))
    r = CliRunner().invoke(main, ["probe", "train", str(tiny_llama), str(subset), "--layers", "0-2", "--out", str(out),
                                  "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    pack = load_pack(out, model_checksum=model_checksum(open_model(tiny_llama)))
    assert pack.warnings == [] and pack.kind == "probe" and pack.layers == [0, 1, 2]
    assert pack.meta["made_with"]["labels"] == {"positive": "positive", "negative": "negative"}
    assert set(pack.meta["metrics"]["per_layer"]) == {"0", "1", "2"}
    assert report["best_layer"] == pack.meta["metrics"]["best_layer"]

    # held-out accuracy recomputed from the saved probes on transformers' own hidden states
    data = pr.read_labelled(subset)
    feats = {L: [] for L in range(3)}
    for text in data.texts:
        hs, _ = oracle_hidden(text)
        for L in range(3):
            feats[L].append(hs[L][-1])
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(20), test_size=5, random_state=0, stratify=data.y)
    for L in range(3):
        w = pack.tensors[f"probe.weight.{L}"][0].astype(np.float64)
        b = float(pack.tensors[f"probe.bias.{L}"][0])
        pred = (np.stack(feats[L])[test] @ w + b > 0).astype(int)
        assert pack.meta["metrics"]["per_layer"][str(L)]["accuracy"] == pytest.approx(float((pred == data.y[test]).mean()))

    # the monitor: every probe scores every token of a live pass, equal to float64 on the oracle's states
    live = LiveModel.load(open_model(tiny_llama), device="cpu")
    bank = ProbeBank.from_packs([pack], width=64, n_layers=3)
    observer = bank.observer(live.decode)
    text = "The food was delicious and the staff were kind."
    ids = live.tokenizer(text, return_tensors="pt")["input_ids"]
    with attach(live.hf_model, [], [observer]) as captured:
        live.hf_model(input_ids=ids)
        result = observe([observer], captured, ids)[MONITOR]
    hs, oracle_ids = oracle_hidden(text)
    assert result["tokens"] == [live.decode(i) for i in oracle_ids]
    assert [c["layer"] for c in result["columns"]] == [0, 1, 2]
    scores = np.array(result["scores"])
    assert scores.shape == (3, len(oracle_ids))
    for j, L in enumerate(range(3)):
        w = pack.tensors[f"probe.weight.{L}"][0].astype(np.float64)
        b = float(pack.tensors[f"probe.bias.{L}"][0])
        oracle = 1 / (1 + np.exp(-(hs[L] @ w + b)))
        # scores are rounded to 4 decimals; the float32 forward differs from float64 far below that
        np.testing.assert_allclose(scores[j], oracle, atol=5e-5 + 1e-4)


def test_probe_train_cli_refuses_one_class_data_before_loading_the_model(tmp_path, tiny_llama):
    from click.testing import CliRunner

    from tensor_surgery.cli import main

    data = tmp_path / "one.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"text {i}", "label": "spam"}) for i in range(5)))
    r = CliRunner().invoke(main, ["probe", "train", str(tiny_llama), str(data), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert err["field"] == "label" and str(data) in err["message"] and "two classes" in err["message"]
    r = CliRunner().invoke(main, ["probe", "train", str(tiny_llama), str(EXAMPLE), "--layers", "2-5",
                                  "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 2 and "outside the model" in json.loads(r.stdout)["error"]["message"]
    assert not (tmp_path / "o").exists()


# -- the lens bank beside the probes: numpy float64 on exactly representable translators ---------------


def test_lens_bank_stats_equal_numpy_float64_for_several_lenses_at_once():
    """Several lenses (two tuned, one with translators at some blocks only, the logit lens) in one
    LensBank, on a float64 norm + unembedding. The translator inputs are small dyadic numbers, so
    the bank's float32 translator arithmetic is exact; what remains is the bank's float32 logits
    and softmax: each logit rounded (u |z|), the max subtracted, the V-term sum (gamma_V) and its
    log, so log-probabilities within u (2 max|z| + V + 8), probabilities within e^that - 1
    relative, the entropy within that x (H + 1) and the KL within that plus the final's rounding."""
    import torch

    from tensor_surgery.interp.bank import LensBank
    from tensor_surgery.interp.lens import TunedLens

    rng = np.random.default_rng(7)
    width, vocab, tokens, layers = 16, 40, 5, 4
    lenses = []
    for blocks in (range(layers), (1, 3)):
        lens = TunedLens.identity(layers, width)
        lens.weights = {L: rng.integers(-4, 5, (width, width)).astype(np.float32) / 64 for L in blocks}
        lens.biases = {L: rng.integers(-8, 9, width).astype(np.float32) / 8 for L in blocks}
        lenses.append(lens)
    lenses.append(None)
    hidden = {L: torch.from_numpy(rng.integers(-16, 17, (tokens, width)).astype(np.float64) / 4) for L in range(layers)}
    norm = torch.nn.LayerNorm(width, dtype=torch.float64)
    head = torch.nn.Linear(width, vocab, bias=False, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, width)))
        norm.bias.copy_(torch.from_numpy(rng.normal(0, 0.1, width)))
        head.weight.copy_(torch.from_numpy(rng.normal(0, 1, (vocab, width))))
    final = torch.from_numpy(rng.normal(0, 2, (tokens, vocab)))
    bank = LensBank(lenses)
    got = bank.stats(norm, head, hidden, final, top=2)
    assert got["token_id"].shape == (3, layers, tokens, 2) and got["entropy"].shape == (3, layers, tokens)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    fl = log_softmax(final.numpy())
    w, g, beta = head.weight.detach().numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy()
    for k, lens in enumerate(lenses):
        for L in range(layers):
            h = hidden[L].numpy()
            if lens is not None and L in lens.weights:
                h = h + h @ lens.weights[L].astype(np.float64).T + lens.biases[L]
            x = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + norm.eps) * g + beta
            z = x @ w.T
            lp = log_softmax(z)
            p = np.exp(lp)
            e_lp = F32_EPS * (2 * np.abs(z).max() + vocab + 8)
            e_final = F32_EPS * (2 * np.abs(final.numpy()).max() + vocab + 8)
            order = np.argsort(-p, axis=-1)[:, :2]
            np.testing.assert_array_equal(got["token_id"][k, L], order)
            np.testing.assert_allclose(got["prob"][k, L], np.take_along_axis(p, order, -1), rtol=np.expm1(e_lp),
                                       atol=0)
            H = -(p * lp).sum(-1)
            np.testing.assert_allclose(got["entropy"][k, L], H, rtol=0, atol=np.expm1(e_lp) * (H.max() + 1) + e_lp)
            kl = (np.exp(fl) * (fl - lp)).sum(-1)
            np.testing.assert_allclose(got["kl_to_final"][k, L], kl, rtol=0,
                                       atol=np.expm1(e_final) * (np.abs(fl).max() + 1) + e_lp + e_final)
    seq = bank.stats_sequential(norm, head, hidden, final, top=2)
    np.testing.assert_array_equal(seq["token_id"], got["token_id"])
    np.testing.assert_allclose(seq["prob"], got["prob"], rtol=1e-12, atol=0)
    # the lenses are not all alike: the translators changed what blocks 1 and 3 decode to
    assert not np.array_equal(got["prob"][0], got["prob"][2]) and np.array_equal(got["prob"][1, 0], got["prob"][2, 0])
    assert not np.array_equal(got["prob"][1, 1], got["prob"][2, 1])
