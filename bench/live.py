"""Live view benchmark: click-to-logits latency over the WebSocket against a bare forward pass.

    python bench/live.py [--model DIR] [--rounds 50]

- click to logits: the real server (`tensor-surgery serve`, a subprocess, on the SmolLM2-135M demo
  model, CPU) with one staged edit (the " Paris" embedding row zeroed) and a 6-token prompt. A
  WebSocket client sends `toggle_edit` (off, on, off, ...) and times send -> receipt of the
  `logits` message whose `seq` is at least the one sent: the staged bytes re-applied to the
  running model, a forward pass, the top-k with base and change, JSON, the socket.
- bare forward: the same model loaded with transformers in this process, the same prompt,
  `model(input_ids=ids).logits[0, -1]` under torch.inference_mode.

The two are measured in alternation (one round of each, `--rounds` times, after a warm-up), so a
busy machine slows both alike. The server's own timings in each message split the round trip:
forward_ms (its forward pass) and total_ms (everything on the model's thread).

Ends with `RESULT click_to_logits_p50_ms=... p95_ms=... ratio_vs_forward=...` (ratio = click p50 /
forward p50). Targets: p50 <= 100 ms, p95 <= 150 ms, ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
PROMPT = "The capital city of France is"  # 6 tokens
EMB = "model.embed_tokens.weight"
HIDDEN = 576


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"LLM_MODEL", "DATABASE_URL", "AUTH_TOKEN", "HOST"}}
    env |= {"MODEL_PATH": str(model), "DATA_DIR": str(tmp / "data"), "PATCH_DIR": str(tmp / "patches"),
            "ALLOWED_ROOTS": f"{model},{tmp}", "HF_HUB_OFFLINE": "1", "LIVE_DEVICE": "cpu"}
    script = Path(sys.executable).with_name("tensor-surgery")
    cmd = [str(script), "serve"] if script.exists() else \
        [sys.executable, "-c", "from tensor_surgery.cli import main; main()", "serve"]
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{(tmp / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(base + "/api/model", timeout=2):
                return proc, base
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not answer:\n{(tmp / 'server.log').read_text()}") from None
            time.sleep(0.1)


def post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


class Socket:
    def __init__(self, conn) -> None:
        self.ws = conn
        self.seq = 0
        self.bytes: list[int] = []

    def until(self, pred, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            msg = json.loads(raw)
            if msg["type"] == "error":
                raise SystemExit(f"server error: {msg}")
            if pred(msg):
                self.bytes.append(len(raw))
                return msg

    def request(self, msg: dict) -> tuple[float, dict]:
        """Send with the next seq; (ms until its logits arrived, that message)."""
        self.seq += 1
        t0 = time.perf_counter()
        self.ws.send(json.dumps({**msg, "seq": self.seq}))
        got = self.until(lambda m: m["type"] == "logits" and m["seq"] >= self.seq)
        return (time.perf_counter() - t0) * 1000, got


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=SMOLLM2)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=6)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from websockets.sync.client import connect

    tok = AutoTokenizer.from_pretrained(str(args.model))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.bfloat16).eval()

    def bare_forward() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids).logits[0, -1].float()
        return (time.perf_counter() - t0) * 1000

    with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
        proc, base = start_server(args.model, Path(tmp))
        try:
            with connect(base.replace("http", "ws", 1) + "/ws/live", origin=base, max_size=None) as conn:
                ws = Socket(conn)
                t0 = time.perf_counter()
                _, first = ws.request({"type": "prompt", "text": PROMPT, "k": 10})  # loads the live model
                load_s = time.perf_counter() - t0
                assert first["prompt_tokens"] == 6, first["prompt_tokens"]
                edit = post(base, "/api/edit_tensor", {"tensor_name": EMB, "op": "zero", "slice": {
                    "dim0_start": paris, "dim0_end": paris + 1, "dim1_start": 0, "dim1_end": HIDDEN}})["edit"]["id"]
                ws.until(lambda m: m["type"] == "logits" and any(e["id"] == edit for e in m["edits"]))

                click, total, fwd, bare = [], [], [], []
                for i in range(args.warmup + args.rounds):
                    ms, msg = ws.request({"type": "toggle_edit", "id": edit, "enabled": i % 2 == 1})
                    top = max(msg["top"], key=lambda t: t["logit"])["id"]
                    assert (top == paris) == (i % 2 == 0), "the toggle did not show in the logits"
                    b = bare_forward()
                    if i >= args.warmup:
                        click.append(ms)
                        total.append(msg["total_ms"])
                        fwd.append(msg["forward_ms"])
                        bare.append(b)
        finally:
            proc.terminate()
            proc.wait(10)

    rows = [
        ("click -> logits (client)", click),
        ("  server: model thread total", total),
        ("  server: forward pass", fwd),
        ("  server: rest of the pass", [t - f for t, f in zip(total, fwd)]),
        ("  socket, JSON, scheduling", [c - t for c, t in zip(click, total)]),
        ("bare forward (this process)", bare),
    ]
    print(f"SmolLM2-135M on CPU ({torch.get_num_threads()} torch threads), prompt {PROMPT!r} (6 tokens), "
          f"{args.rounds} rounds after {args.warmup} warm-up; model load {load_s:.1f} s; "
          f"logits message {statistics.median(ws.bytes) / 1024:.1f} KiB")
    print(f"{'':32} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9} {'min ms':>9}")
    for name, xs in rows:
        print(f"{name:32} {statistics.median(xs):9.1f} {pct(xs, 95):9.1f} {statistics.fmean(xs):9.1f} {min(xs):9.1f}")
    p50, p95 = statistics.median(click), pct(click, 95)
    ratio = p50 / statistics.median(bare)
    ok = p50 <= 100 and p95 <= 150 and ratio <= 1.5
    print(f"targets: p50 <= 100 ms, p95 <= 150 ms, ratio <= 1.5: {'met' if ok else 'MISSED'}")
    print(f"RESULT click_to_logits_p50_ms={p50:.1f} p95_ms={p95:.1f} ratio_vs_forward={ratio:.2f}")


if __name__ == "__main__":
    main()
