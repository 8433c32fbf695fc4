"""Probe bank benchmark: 100 probes on each of the 30 blocks of SmolLM2-135M (3,000 probes) scoring
every token of a 64-token prompt, batched against a sequential loop, and the monitor's cost on the
live forward pass.

    python bench/probes.py [--model DIR] [--device cpu|cuda] [--probes 100] [--repeat 30] [--lenses 10]
                           [--lens-repeat 1] [--steer-rounds 10 | --no-steer]

- batched vs sequential: the same block outputs (captured once from a real forward pass), scored by
  `ProbeBank.scores` (one addmm per block, 30 in all) and by `ProbeBank.scores_sequential` (one
  product per probe, 3,000), both ending on the device and synchronised; median of --repeat,
  alternating so a busy machine slows both alike. The scores are checked equal (1e-5) first.
- monitor overhead: the live forward pass (`LiveModel.logits`, hooks attached by live/hooks.attach)
  with the monitor observer (scores of every probe at every token, copied back once as the
  [probes, tokens] result the WebSocket carries) against the same pass without it, alternating;
  overhead = median(with) / median(without) - 1.
- lenses batched vs sequential: --lenses tuned lenses (random translators at every block) on the
  same block outputs, the whole lens table's statistics (top token, probability, entropy, KL to
  the final distribution for every lens, block and token) by `LensBank.stats` (one batched
  translator matmul per block, then norm + unembedding over lenses x positions) against
  `LensBank.stats_sequential` (one lens, one block at a time); median of --lens-repeat,
  alternating, the results checked equal (token ids identical, probabilities within 1e-4). The
  unembedding (vocab x width per row) is the same work in both and dominates on CPU; the
  translator step alone (one bmm per block vs one product per lens) is printed beside it.
- steer toggle: part A's bench/steer_toggle.py measurement (the real server, a steering vector
  toggled, ms until the logits show it), --steer-rounds toggles; --no-steer skips it (CUDA runs:
  the server bench runs the CPU live model).

Ends with `RESULT batched_vs_sequential=... monitor_overhead=... steer_toggle_p50_ms=...
lens_batched_vs_sequential=...`.
Targets (issue 16): batched >= 6x faster, monitoring all 3,000 probes <= 25% of a forward pass,
steer toggle p50 <= 100 ms on CPU.
"""

from __future__ import annotations

import os

# single-threaded numbers, as bench/read.py: on a shared 2-core machine, OpenMP threads that spin
# waiting for a busy core turn milliseconds into seconds; set before torch is imported
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
PROMPT_WORDS = ("The history of the city begins with a small fishing village on the northern bank of the river, "
                "where traders from the south exchanged salt, wool and iron for fish and timber. Over the next "
                "three centuries the village grew into a market town with a stone bridge, two churches and a "
                "harbour that sheltered ships from the winter storms of the northern sea and the eastern coast.")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


CPU_MS: dict[int, list[float]] = {}  # id(list of wall times) -> the same calls in process CPU time


def timed(fn, device, into: list[float]) -> None:
    """Append fn's wall time (ms) to `into`, and its process CPU time to CPU_MS[id(into)]: on a
    busy machine the CPU time says what the method costs, the wall time also how long it waited."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    into.append((time.perf_counter() - t0) * 1000)
    CPU_MS.setdefault(id(into), []).append((time.process_time() - c0) * 1000)


def cpu(xs: list[float]) -> float:
    return statistics.median(CPU_MS[id(xs)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--probes", type=int, default=100, help="probes per block")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--lenses", type=int, default=10, help="tuned lenses evaluated together")
    ap.add_argument("--lens-repeat", type=int, default=1, help="each lens table call takes minutes on CPU")
    ap.add_argument("--steer-rounds", type=int, default=10)
    ap.add_argument("--no-steer", action="store_true")
    args = ap.parse_args()

    import torch

    from tensor_surgery.interp.bank import MONITOR, ProbeBank
    from tensor_surgery.live.hooks import Observer, attach, observe
    from tensor_surgery.live.runtime import LiveModel
    from tensor_surgery.store import open_model

    live = LiveModel.load(open_model(args.model), device=args.device)
    device = live.device
    cfg = live.hf_model.config
    n_layers, width = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    ids = live.tokenizer(PROMPT_WORDS, return_tensors="pt")["input_ids"][:, : args.tokens].to(device)
    assert ids.shape[1] == args.tokens, f"the prompt has only {ids.shape[1]} tokens"

    rng = np.random.default_rng(0)
    per_layer = {L: [(f"bench{L}", [f"p{i}" for i in range(args.probes)],
                      (rng.standard_normal((args.probes, width)) / np.sqrt(width)).astype(np.float32),
                      rng.standard_normal(args.probes).astype(np.float32))] for L in range(n_layers)}
    bank = ProbeBank(per_layer, device)

    grab = Observer("grab", None, lambda hidden, ids: None)
    with torch.inference_mode(), attach(live.hf_model, [], [grab]) as captured:
        live.hf_model(input_ids=ids)
    hidden = dict(captured)

    with torch.inference_mode():
        a, b = bank.scores(hidden), bank.scores_sequential(hidden)
        err = float((a - b).abs().max())
        # float32 sums in another order: |difference| <= 2 x width x eps x sum|h_i w_i| (+|b|), x 1/4 (sigmoid');
        # the residual stream's outlier features make that larger than 1e-5 here (test_probes checks 1e-5)
        bound = torch.cat([(bank._tokens(hidden[L]).abs() @ bank.weights[L].abs().T + bank.biases[L].abs())
                           for L in bank.layers], dim=1) * 0.25 * 2 * (width + 2) * 2.0 ** -24
        assert bool(((a - b).abs() <= bound).all()), f"batched and sequential scores differ by {err}, beyond rounding"
        batched, sequential = [], []
        for _ in range(3):  # warm-up
            bank.scores(hidden), bank.scores_sequential(hidden)
        for _ in range(args.repeat):
            timed(lambda: bank.scores(hidden).cpu(), device, batched)
            timed(lambda: bank.scores_sequential(hidden).cpu(), device, sequential)
    b50, s50 = statistics.median(batched), statistics.median(sequential)
    ratio = s50 / b50
    ratio_cpu = cpu(sequential) / cpu(batched)

    monitor = bank.observer(live.decode)
    model = live.hf_model

    def plain():
        with attach(model, [], []):
            live.logits(ids, model)

    def monitored():
        with attach(model, [], [monitor]) as cap:
            live.logits(ids, model)
            out = observe([monitor], cap, ids)[MONITOR]
        assert len(out["scores"]) == len(bank) and len(out["scores"][0]) == args.tokens

    for _ in range(3):
        plain(), monitored()
    without, with_ = [], []
    for _ in range(args.repeat):
        timed(plain, device, without)
        timed(monitored, device, with_)
    w50, m50 = statistics.median(without), statistics.median(with_)
    overhead = m50 / w50 - 1
    overhead_cpu = cpu(with_) / cpu(without) - 1

    lens = lens_bench(live, hidden, args.lenses, args.lens_repeat, device)

    steer_p50 = None
    if not args.no_steer:
        steer_p50 = steer_toggle(args.model, args.steer_rounds)

    load = os.getloadavg()[0]
    print(f"{args.model.name} on {device}, {n_layers} blocks x {args.probes} probes = {len(bank)} probes, "
          f"{args.tokens}-token prompt, width {width}; median of {args.repeat}, alternating")
    print(f"{'measure':52} {'p50 ms':>9} {'p95 ms':>9} {'p50 CPU ms':>11}")
    for label, xs in (("scores, batched (one addmm per block)", batched),
                      ("scores, sequential (one product per probe, ref)", sequential),
                      ("live forward pass, no monitor (ref)", without),
                      (f"live forward pass + monitor ({len(bank)} probes)", with_)):
        print(f"{label:52} {statistics.median(xs):9.2f} {np.percentile(xs, 95):9.2f} {cpu(xs):11.2f}")
    print(f"batched vs sequential: {ratio:.1f}x faster, {ratio_cpu:.1f}x in CPU time (target >= 6x: "
          f"{'met' if ratio >= 6 else 'MISSED'}); "
          f"max |batched - sequential| = {err:.2e}")
    print(f"monitor overhead: {overhead * 100:.1f}% of a forward pass, {overhead_cpu * 100:.1f}% in CPU time "
          "(target <= 25%: "
          f"{'met' if overhead <= 0.25 else 'MISSED'})")
    print(f"{args.lenses} tuned lenses x {n_layers} blocks x {args.tokens} tokens, vocab {lens['vocab']}:")
    for label, key in (("lens table stats, batched (LensBank.stats)", "batched"),
                       ("lens table stats, sequential (per lens, per block, ref)", "sequential"),
                       ("translators only, batched (one matmul per block)", "tr_batched"),
                       ("translators only, sequential (per lens, ref)", "tr_sequential")):
        xs = lens[key]
        print(f"{label:52} {statistics.median(xs):9.2f} {np.percentile(xs, 95):9.2f} {cpu(xs):11.2f}")
    print(f"lenses batched vs sequential: {lens['ratio']:.2f}x faster ({lens['ratio_cpu']:.2f}x in CPU time); "
          f"translators alone {lens['tr_ratio']:.2f}x; max |prob difference| = {lens['err']:.1e}")
    if steer_p50 is not None:
        print(f"steer toggle -> logits p50: {steer_p50:.1f} ms (target <= 100 ms on CPU: "
              f"{'met' if steer_p50 <= 100 else 'MISSED'})")
    print(f"load average {load:.1f} on {os.cpu_count()} cores (torch threads {torch.get_num_threads()})")
    steer_txt = f"{steer_p50:.1f}" if steer_p50 is not None else "skipped"
    print(f"RESULT batched_vs_sequential={ratio:.2f} monitor_overhead={overhead:.3f} steer_toggle_p50_ms={steer_txt} "
          f"batched_vs_sequential_cpu={ratio_cpu:.2f} monitor_overhead_cpu={overhead_cpu:.3f} "
          f"lens_batched_vs_sequential={lens['ratio']:.2f} lens_translators_batched_vs_sequential={lens['tr_ratio']:.2f} "
          f"load={load:.1f}")
    return 0


def lens_bench(live, hidden: dict, n_lenses: int, repeat: int, device) -> dict:
    """LensBank.stats against stats_sequential for n_lenses random tuned lenses on `hidden`."""
    import torch

    from tensor_surgery.interp.bank import LensBank
    from tensor_surgery.interp.lens import TunedLens, final_norm, unembedding

    model = live.hf_model
    n_layers, width = len(hidden), int(model.config.hidden_size)
    rng = np.random.default_rng(1)
    lenses = []
    for _ in range(n_lenses):
        lens = TunedLens.identity(n_layers, width)
        for L in range(n_layers):
            lens.weights[L] = (rng.standard_normal((width, width)) * 0.02).astype(np.float32)
            lens.biases[L] = (rng.standard_normal(width) * 0.1).astype(np.float32)
        lenses.append(lens)
    bank = LensBank(lenses, device)
    norm, head = final_norm(model), unembedding(model)
    hidden = {L: (h[0] if h.dim() == 3 else h) for L, h in hidden.items()}
    with torch.inference_mode():
        final = head(norm(hidden[n_layers - 1]))

        def tr_batched():
            return [bank.translate(L, h.float()) for L, h in hidden.items()][-1].cpu()

        def tr_sequential():
            out = None
            for ln in lenses:
                for L, h in hidden.items():
                    A = torch.from_numpy(ln.weights[L]).to(h.device)
                    bb = torch.from_numpy(ln.biases[L]).to(h.device)
                    hf = h.float()
                    out = hf + hf @ A.T + bb
            return out.cpu()

        res: dict = {"batched": [], "sequential": [], "tr_batched": [], "tr_sequential": []}
        tr_batched(), tr_sequential()  # warm-up (the stats warm up on the small prefix below)
        short = {L: h[:4] for L, h in hidden.items()}
        bank.stats(norm, head, short, final[:4]), bank.stats_sequential(norm, head, short, final[:4])
        got: dict = {}
        for _ in range(repeat):  # each call is seconds of unembedding on CPU: few, long repeats
            timed(lambda: got.__setitem__("a", bank.stats(norm, head, hidden, final)), device, res["batched"])
            timed(lambda: got.__setitem__("b", bank.stats_sequential(norm, head, hidden, final)), device,
                  res["sequential"])
        a, b = got["a"], got["b"]
        same = (a["token_id"] == b["token_id"]).mean()
        err = float(np.abs(a["prob"] - b["prob"]).max())
        assert same > 0.999 and err < 1e-4, f"batched and sequential lenses differ: {same:.4f} same tokens, {err}"
        for _ in range(max(repeat, 10)):
            timed(tr_batched, device, res["tr_batched"])
            timed(tr_sequential, device, res["tr_sequential"])
    res["ratio"] = statistics.median(res["sequential"]) / statistics.median(res["batched"])
    res["ratio_cpu"] = cpu(res["sequential"]) / cpu(res["batched"])
    res["tr_ratio"] = statistics.median(res["tr_sequential"]) / statistics.median(res["tr_batched"])
    res["err"], res["vocab"] = err, int(final.shape[-1])
    return res


def steer_toggle(model: Path, rounds: int) -> float:
    """Part A's measurement (bench/steer_toggle.py) on the real server: p50 ms toggle -> logits."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from live import PROMPT, Socket, start_server
    from steer_toggle import measure_steer_toggle, setup_vector
    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="probes-bench-") as tmp:
        proc, base = start_server(model, Path(tmp))
        try:
            with connect(base.replace("http", "ws", 1) + "/ws/live", origin=base, max_size=None) as conn:
                ws = Socket(conn)
                ws.request({"type": "prompt", "text": PROMPT, "k": 10})  # loads the live model
                setup_vector(base)
                measure_steer_toggle(base, ws, "joy", 4)  # warm-up
                times = measure_steer_toggle(base, ws, "joy", rounds)
        finally:
            proc.terminate()
            proc.wait(10)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
