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


def run_child(script: str, tmp_path, cases: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run `script` in a child process (a SIGBUS kills only it) over `cases`; its JSON lines back."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(cases)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_long_reads_of_a_file_truncated_underneath_answer_409_and_the_server_survives(tmp_path):
    proc, results = run_child(CHILD, tmp_path, ROUTES)
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


# -- surgery: checksums, verification, diff and apply hash whole tensors ---------------------------

SURGERY_CHILD = textwrap.dedent(
    """
    import hashlib, json, os, shutil, sys
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner
    from fastapi.testclient import TestClient
    from safetensors.numpy import save_file

    from tensor_surgery.cli import main
    from tensor_surgery.web.app import create_app
    from tests.conftest import BASE_URL, make_settings

    tmp = Path(sys.argv[1])
    cases = json.loads(sys.argv[2])
    armed = {}  # path -> the size to truncate it to when the first long hash update comes
    real_sha256 = hashlib.sha256

    class TruncatingSha256:
        # The truncation comes in the middle of hashing a whole tensor: after its first chunk is
        # handed over, before the hash reads it. A chunk that is a view of the memory map then
        # faults; a pread copy does not, and the next pread comes back short.
        def __init__(self, data=b""):
            self._h = real_sha256()
            self.update(data)

        def update(self, data):
            if memoryview(data).nbytes >= 256 << 10:
                while armed:
                    path, size = armed.popitem()
                    os.truncate(path, size)
            self._h.update(data)

        def hexdigest(self):
            return self._h.hexdigest()

    hashlib.sha256 = TruncatingSha256

    def write(name, bump=0.0):
        path = tmp / name / "model.safetensors"
        path.parent.mkdir(parents=True)
        rng = np.random.default_rng(0)
        tensors = {n: rng.standard_normal((512, 1024)).astype(np.float32) for n in ("w", "x")}  # 2 MiB each
        tensors["x"][3, :8] += np.float32(bump)
        save_file(tensors, str(path))
        return path

    def arm(path):
        data_start = 8 + int.from_bytes(path.read_bytes()[:8], "little")
        armed[str(path)] = data_start + 4096  # keep only the first page of data

    def patch_file(path, with_base_checksum):
        # entries on w and x at byte 0, checksums per the .hexpatch spec, from the file's own bytes
        from safetensors.numpy import load_file

        t = load_file(str(path))
        entries = [{"tensor_name": n, "offset_bytes": 0, "original_hex": t[n].tobytes()[:4].hex().upper(),
                    "new_hex": "00000000", "dtype": "F32", "shape_at_edit_time": [512, 1024]} for n in ("w", "x")]
        obj = {"format": "hexpatch", "version": 1, "description": "two words",
               "tensor_checksums": {n: "sha256:" + real_sha256(t[n].tobytes()).hexdigest() for n in ("w", "x")},
               "patches": entries}
        if with_base_checksum:
            h = real_sha256()
            for n in sorted(t):
                h.update(n.encode() + b"\\0F32\\0512,1024\\0" + t[n].tobytes())
            obj["base_model_checksum"] = "sha256:" + h.hexdigest()
        out = tmp / "patches" / f"{path.parent.name}.hexpatch"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(obj))
        return out

    def report(case, path, **kw):
        truncated = os.path.getsize(path) < 8 + int.from_bytes(open(path, "rb").read(8), "little") + 4097
        print(json.dumps({"case": case, "truncated": truncated, **kw}), flush=True)

    first = write("api")
    settings = make_settings(tmp, first, allowed_roots=[tmp])
    with TestClient(create_app(settings), base_url=BASE_URL) as c:
        for case in cases:
            if not case.startswith("api"):
                continue
            path = first if case == "api save" else write(case.replace(" ", "-"))
            assert c.post("/api/model", json={"path": str(path)}).status_code == 200
            if case == "api save":
                r = c.post("/api/edit_tensor", json={"tensor_name": "w", "op": "zero", "slice": {
                    "dim0_start": 0, "dim0_end": 1, "dim1_start": 0, "dim1_end": 4}})
                assert r.status_code == 200, r.text
                arm(path)
                r = c.post("/api/patches", json={"name": "saved", "description": "row 0"})
            else:
                name = patch_file(path, case == "api verify base checksum").stem
                assert c.get("/api/tensor_slice/w").status_code == 200  # mapped
                arm(path)
                r = c.post(f"/api/patches/{name}/verify")
            report(case, path, status=r.status_code, body=r.json(), alive=c.get("/api/model").status_code)

    runner = CliRunner()
    for case in cases:
        if not case.startswith("cli"):
            continue
        for as_json in (False, True):
            name = case.replace(" ", "-") + "-json" * as_json
            path = write(name)
            out = tmp / "out" / name
            if case == "cli diff":
                b = write(name + "-b", bump=1.0)
                args = ["patch", "diff", str(path), str(b), "--out", str(out) + ".hexpatch"]
            else:
                p = patch_file(path, True)
                args = ["patch", "verify", str(path), str(p)] if case == "cli verify" else \\
                    ["patch", "apply", str(path), str(p), "--out", str(out)]
            arm(path)
            r = runner.invoke(main, args + ["--json"] * as_json)
            report(case, path, exit_code=r.exit_code, stdout=r.stdout, stderr=r.stderr, json=as_json,
                   written=sorted(os.listdir(out.parent)) if out.parent.exists() else [])
    """
)

SURGERY_CASES = ["api save", "api verify base checksum", "api verify tensor checksums",
                 "cli verify", "cli diff", "cli apply"]


def test_checksums_verify_diff_and_apply_of_a_file_truncated_underneath_refuse_cleanly(tmp_path):
    """Saving a patch with checksums, verifying one, diffing and applying hash whole tensors: a
    file that shrinks meanwhile answers 409 model_changed (API) or exits 1 with one clear line (CLI)."""
    proc, results = run_child(SURGERY_CHILD, tmp_path, SURGERY_CASES)
    done = [r["case"] for r in results]
    assert proc.returncode != -signal.SIGBUS, f"SIGBUS after {done}: a hash read a truncated map"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done == SURGERY_CASES[:3] + [c for c in SURGERY_CASES[3:] for _ in (0, 1)]
    for r in results:
        assert r["truncated"], r  # the truncation really happened during the operation
        if r["case"].startswith("api"):
            assert r["status"] == 409, r
            err = r["body"]["error"]
            assert err["code"] == "model_changed" and "reopen" in err["message"], r
            assert err["file"].endswith("model.safetensors"), r
            assert r["alive"] == 200, r
        else:
            assert r["exit_code"] == 1, r
            assert r["written"] == [], r  # no patch, no model written
            if r["json"]:
                err = json.loads(r["stdout"])["error"]
                assert err["code"] == "model_changed" and err["file"].endswith("model.safetensors"), r
            else:
                errors = [line for line in r["stderr"].splitlines() if line.startswith("error")]
                assert len(errors) == 1 and "changed on disk" in errors[0] and "reopen" in errors[0], r
                assert "Traceback" not in r["stderr"] + r["stdout"], r
