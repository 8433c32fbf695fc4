"""The Ray path of `analyze`: on a real local Ray cluster (2 CPUs, 127.0.0.1) it gives the same
table as the in-process path; errors in tasks come back as themselves; an address that does not
answer fails fast (exit 1), before anything is written."""

from __future__ import annotations

import json
import math
import socket
import threading
import time

import pytest

from tensor_surgery.analysis import parallel
from tensor_surgery.analysis import run as run_mod
from tensor_surgery.analysis import table as tb

ray = pytest.importorskip("ray")

MATCH = r"^encoder\.layer\.[0-2]\.|^embeddings\.(token_type|position)_embeddings|^pooler\."


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             _system_config=parallel.LOCAL_SYSTEM_CONFIG)
    yield
    ray.shutdown()


EPS = 2.0**-52


def assert_same_table(got: list[dict], want: list[dict]) -> None:
    """The same rows; every integer, string and rank exactly. Float64 sums of squares go through
    BLAS (np.dot, the Gram matrix), whose summation order follows its thread count, and a Ray
    worker runs 1 thread: those may differ by the sum's rounding, at most numel * eps relative."""
    assert [(r["model_path"], r["param_name"]) for r in got] == [(r["model_path"], r["param_name"]) for r in want]
    for g, w in zip(got, want):
        for k, v in w.items():
            if k == "created_at":
                continue
            if isinstance(v, float) and isinstance(g[k], float):
                assert math.isclose(g[k], v, rel_tol=w["numel"] * EPS, abs_tol=0), (w["param_name"], k, g[k], v)
            else:
                assert g[k] == v, (w["param_name"], k)


def test_ray_table_equals_in_process_table(local_ray, demo_models_dir, tmp_path):
    model = str(demo_models_dir / "all-MiniLM-L6-v2")
    here = run_mod.analyze_to_file([model], tmp_path / "here.jsonl", tb.Options(), pattern=MATCH, command=["t"])
    there = run_mod.analyze_to_file([model], tmp_path / "ray.jsonl", tb.Options(), pattern=MATCH,
                                    ray_address="auto", command=["t"])
    assert len(here["table"]) == 3 * 16 + 4  # three layers, two embeddings, the pooler's two
    assert_same_table(there["table"], here["table"])
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert meta["ray_address"] == "auto" and meta["ray_version"] == ray.__version__


def _pid(x):
    import os

    return os.getpid(), x


def _fail(x):
    raise ValueError(f"task {x} failed")


def test_run_tasks_streams_results_from_workers_and_reraises_task_errors(local_ray):
    import os

    got = dict(parallel.run_tasks(_pid, [(i,) for i in range(6)], ray_address="auto"))
    assert sorted(r[1] for r in got.values()) == list(range(6))
    assert all(pid != os.getpid() for pid, _ in got.values())  # ran in Ray workers
    with pytest.raises(ValueError, match="task 3 failed"):
        list(parallel.run_tasks(_fail, [(3,)], ray_address="auto"))


def test_in_process_path_never_imports_ray():
    import subprocess
    import sys

    code = ("import sys; from tensor_surgery.analysis.parallel import run_tasks; "
            "print(list(run_tasks(abs, [(-2,)]))); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.splitlines() == ["[((-2,), 2)]", "False"]


def test_an_address_that_does_not_answer_fails_within_10_s(run, tiny_model, tmp_path):
    # a port that accepts connections and says nothing: TCP alone cannot tell it from a head node
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    out = tmp_path / "t.csv"
    t0 = time.monotonic()
    try:
        # a fresh process: this module's own Ray session would otherwise be reused
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-m", "tensor_surgery.cli", "analyze", str(tiny_model), "--out",
                               str(out), "--ray", f"127.0.0.1:{srv.getsockname()[1]}", "--json"],
                              capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        srv.close()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["code"] == "ray_unavailable" and "127.0.0.1" in err["message"]
    # Ray's own connect attempts are bounded (~4 s); the rest is the process starting
    assert elapsed < 10 + _startup_allowance()
    assert not out.exists() and not list(tmp_path.glob(".t.csv*"))


def _startup_allowance() -> float:
    """Python + Ray import time on this machine (a loaded CI box takes several seconds)."""
    import subprocess
    import sys

    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import ray, tensor_surgery.cli"], capture_output=True, timeout=120)
    return time.monotonic() - t0
