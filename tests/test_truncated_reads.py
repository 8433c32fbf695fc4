"""A model file truncated by another process while the server reads it: every long whole-tensor
read (statistics, overview, rank, checksums) answers 409 and the server keeps serving.

Reading a mapped page past the new end of a file kills the process with SIGBUS, so the requests
run in a child process and the test reads its exit status. The truncation comes at the worst
moment, deterministically: right after the read's "is the file unchanged?" check has passed,
before any of the tensor's bytes are touched (what a concurrent `truncate` hits by chance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import numpy as np
    from fastapi.testclient import TestClient
    from safetensors.numpy import save_file

    from tensor_surgery.store.model import SafetensorsFile
    from tensor_surgery.web.app import create_app
    from tests.conftest import BASE_URL, make_settings

    tmp = Path(sys.argv[1])
    routes = json.loads(sys.argv[2])
    armed = {}  # real path -> the size to truncate it to at its next "unchanged?" check
    check = SafetensorsFile.check_unchanged

    def check_then_truncate(self):
        check(self)
        size = armed.pop(os.path.realpath(self.path), None)
        if size is not None:
            os.truncate(self.path, size)

    SafetensorsFile.check_unchanged = check_then_truncate

    def write(i):
        path = tmp / f"m{i}" / "model.safetensors"
        path.parent.mkdir(parents=True)
        w = np.random.default_rng(i).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB
        save_file({"w": w, "b": np.ones(8, np.float32)}, str(path))
        return path

    first = write(0)
    settings = make_settings(tmp, first, allowed_roots=[tmp])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        for i, route in enumerate(routes):
            path = first if i == 0 else write(i)
            assert c.post("/api/model", json={"path": str(path)}).status_code == 200
            assert c.get("/api/tensor_slice/w").status_code == 200  # mapped
            data_start = 8 + int.from_bytes(path.read_bytes()[:8], "little")
            armed[os.path.realpath(path)] = data_start + 4096  # keep only the first page of data
            r = c.get(route)
            alive = c.get("/api/model").status_code
            print(json.dumps({"route": route, "status": r.status_code, "body": r.json(),
                              "alive": alive, "truncated": os.path.getsize(path) < data_start + 4097}),
                  flush=True)
    """
)

ROUTES = [
    "/api/tensor_stats/w",
    "/api/tensor_histogram/w?bins=16",
    "/api/tensor_overview/w?rows=8&cols=8",
    "/api/tensor_rank/w?method=exact",
]


def test_long_reads_of_a_file_truncated_underneath_answer_409_and_the_server_survives(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(ROUTES)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [r["route"] for r in results]
    assert proc.returncode != -signal.SIGBUS, f"SIGBUS after {done}: the read touched a truncated map"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done == ROUTES
    for r in results:
        assert r["truncated"], r  # the truncation really happened during the request
        assert r["status"] == 409, r
        err = r["body"]["error"]
        assert err["code"] == "model_changed" and "reopen" in err["message"], r
        assert err["file"].endswith("model.safetensors"), r
        assert r["alive"] == 200, r
