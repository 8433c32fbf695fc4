"""Steering toggle benchmark: switching a steering vector on or off -> new logits over the WebSocket.

    python bench/steer_toggle.py [--model DIR] [--rounds 40]

The real server (`tensor-surgery serve`, a subprocess, SmolLM2-135M demo model, CPU) with the live
model loaded and a steering vector extracted from two of the shipped happy/sad pairs at blocks
8-10 (coefficient 8). A client toggles the vector (POST /api/steering/vectors/NAME/toggle, on,
off, on, ...) and times the request until the WebSocket brings the `logits` message that shows the
new state: the hooks attached, a forward pass, the top-k, JSON, the socket. The reference, in the
same run and in alternation, is the same round trip for a staged edit's toggle (bench/live.py's
click -> logits), so a busy machine slows both alike.

`measure_steer_toggle(base, ws, name, rounds)` is the measurement alone, for bench/probes.py to
import. Ends with `RESULT steer_toggle_p50_ms=... p95_ms=... ratio_vs_edit_toggle=...`.
Target (issue 16): p50 <= 100 ms on CPU, as for edits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live import EMB, HIDDEN, PROMPT, SMOLLM2, Socket, pct, post, start_server  # noqa: E402

PAIRS = [{"positive": "I am so happy today, everything feels wonderful.",
          "negative": "I am so sad today, everything feels hopeless."},
         {"positive": "What a delightful surprise, I love it!",
          "negative": "What a painful disappointment, I hate it."}]


def measure_steer_toggle(base: str, ws: Socket, name: str, rounds: int, on_each=None) -> list[float]:
    """Toggle vector `name` `rounds` times; ms from the HTTP request to the logits that show it."""
    out = []
    for i in range(rounds):
        enabled = i % 2 == 0
        t0 = time.perf_counter()
        req = urllib.request.Request(f"{base}/api/steering/vectors/{name}/toggle",
                                     json.dumps({"enabled": enabled}).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        ws.until(lambda m: m["type"] == "logits"
                 and any(v["name"] == name and v["enabled"] == enabled for v in m.get("interventions", [])))
        out.append((time.perf_counter() - t0) * 1000)
        if on_each:
            on_each(i)
    return out


def setup_vector(base: str, name: str = "joy", layers: str = "8-10", coefficient: float = 8.0) -> dict:
    """Extract the benchmark's vector on the live model (four forward passes: minutes on a busy machine)."""
    body = json.dumps({"name": name, "pairs": PAIRS, "layers": layers, "coefficient": coefficient}).encode()
    req = urllib.request.Request(f"{base}/api/steering/extract", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=4)
    args = ap.parse_args()

    from websockets.sync.client import connect

    with tempfile.TemporaryDirectory(prefix="steer-bench-") as tmp:
        proc, base = start_server(args.model, Path(tmp))
        try:
            with connect(base.replace("http", "ws", 1) + "/ws/live", origin=base, max_size=None) as conn:
                ws = Socket(conn)
                ws.request({"type": "prompt", "text": PROMPT, "k": 10})  # loads the live model
                setup_vector(base)
                edit = post(base, "/api/edit_tensor", {"tensor_name": EMB, "op": "scale", "factor": 1.01, "slice": {
                    "dim0_start": 0, "dim0_end": 1, "dim1_start": 0, "dim1_end": HIDDEN}})["edit"]["id"]
                ws.until(lambda m: m["type"] == "logits" and any(e["id"] == edit for e in m["edits"]))
                steer, edits = [], []
                for i in range(args.warmup + args.rounds):
                    s = measure_steer_toggle(base, ws, "joy", 2)  # on, then off
                    e = [ws.request({"type": "toggle_edit", "id": edit, "enabled": on})[0] for on in (False, True)]
                    if i >= args.warmup:
                        steer += s
                        edits += e
        finally:
            proc.terminate()
            proc.wait(10)
    p50, p95 = statistics.median(steer), pct(steer, 95)
    ratio = p50 / statistics.median(edits)
    print(f"SmolLM2-135M on CPU, prompt {PROMPT!r}, {args.rounds} rounds after {args.warmup} warm-up")
    print(f"{'':30} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    for label, xs in (("steering toggle -> logits", steer), ("edit toggle -> logits (ref)", edits)):
        print(f"{label:30} {statistics.median(xs):9.1f} {pct(xs, 95):9.1f} {statistics.fmean(xs):9.1f}")
    print(f"target: steering toggle p50 <= 100 ms: {'met' if p50 <= 100 else 'MISSED'}")
    print(f"RESULT steer_toggle_p50_ms={p50:.1f} p95_ms={p95:.1f} ratio_vs_edit_toggle={ratio:.2f}")


if __name__ == "__main__":
    main()
