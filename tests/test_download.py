"""`tensor-surgery download` through the real huggingface_hub client against a local hub.

No hub is reachable here, so the test starts a small HTTP server that answers the three requests
huggingface_hub makes (read from its source, version 2.x): `GET /api/models/{id}/revision/{rev}
?blobs=true` (model info with each file's blob id and LFS sha256), `HEAD /{id}/resolve/{commit}/
{file}` (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size, Content-Length) and the `GET` of the
same URL. The CLI runs in a subprocess with HF_ENDPOINT pointing there and HF_HUB_OFFLINE=0,
exactly as a user would run it.

For uploads (tests/test_packs.py pushes a pack) it also answers what `HfApi.create_repo` and
`upload_folder` / `create_commit` send for small files: `POST /api/repos/create` ({name,
organization} -> {url}; 409 when it exists), `POST /api/models/{id}/preupload/{rev}` (every file
"regular", i.e. sent inline, not through LFS) and `POST /api/models/{id}/commit/{rev}` (NDJSON: a
header line, then one `file` line per file with base64 content), which stores the files so that
the same hub then serves them as a new commit; `refuse_writes` answers writes with that status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save

REPO_ID = "acme/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _files() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, stored in LFS)."""
    rng = np.random.default_rng(1)
    weights = save({"w": rng.standard_normal((8, 4)).astype(np.float32), "b": np.arange(3, dtype=np.int64)})
    return {
        "model.safetensors": (weights, True),
        "config.json": (json.dumps({"model_type": "tiny"}).encode(), False),
    }


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.files = _files()
        self.serve_wrong_bytes: set[str] = set()
        self.gets: list[str] = []
        self.pushed: dict[str, dict[str, tuple[bytes, bool]]] = {}  # repos created through the API
        self.heads: dict[str, str] = {}  # their commit ids
        self.posts: list[str] = []  # paths of the write requests received
        self.refuse_writes: int | None = None  # e.g. 401 or 403: every write is answered so
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                hub.handle(self, head=False)

            def do_HEAD(self):
                hub.handle(self, head=True)

            def do_POST(self):
                hub.handle_post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def repo(self, repo_id: str) -> tuple[dict[str, tuple[bytes, bool]], str] | None:
        """(files, commit id) of a repo this hub serves, or None."""
        if repo_id == REPO_ID:
            return self.files, COMMIT
        if repo_id in self.pushed:
            return self.pushed[repo_id], self.heads[repo_id]
        return None

    def info(self, repo_id: str = REPO_ID) -> dict:
        files, commit = self.repo(repo_id)
        siblings = []
        for name, (data, lfs) in files.items():
            s = {"rfilename": name, "size": len(data), "blobId": _git_blob_id(data)}
            if lfs:
                s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(s)
        return {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings}

    @staticmethod
    def _repo_id(rest: str) -> tuple[str, str]:
        """'owner/name/more...' -> ('owner/name', 'more...')."""
        parts = rest.split("/", 2)
        return "/".join(parts[:2]), (parts[2] if len(parts) > 2 else "")

    def handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = req.path.split("?", 1)[0]
        if path.startswith("/api/models/"):
            repo_id, rest = self._repo_id(path[len("/api/models/"):])
            served = self.repo(repo_id)
            if served is None or not (rest == "" or rest.startswith("revision/")):
                return self._error(req, 404, "RepoNotFound", "Repository not found")
            rev = rest[len("revision/"):] if rest else "main"
            if rev not in ("main", served[1]):
                return self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return self._send(req, 200, json.dumps(self.info(repo_id)).encode(), {"Content-Type": "application/json"},
                              head)
        repo_id, rest = self._repo_id(path.lstrip("/"))
        served = self.repo(repo_id)
        if served is not None and rest.startswith("resolve/"):
            files, commit = served
            rev, _, name = rest[len("resolve/"):].partition("/")
            if rev not in ("main", commit) or name not in files:
                return self._error(req, 404, "EntryNotFound", "Entry not found")
            data, lfs = files[name]
            if not head:
                self.gets.append(name)
            body = data
            if name in self.serve_wrong_bytes:
                body = bytes([data[0] ^ 0xFF]) + data[1:]
            headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
            if lfs:
                sha = hashlib.sha256(data).hexdigest()
                headers |= {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            else:
                headers["ETag"] = f'"{_git_blob_id(data)}"'
            return self._send(req, 200, body, headers, head)
        return self._error(req, 404, "EntryNotFound", "not found")

    def handle_post(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        self.posts.append(path)
        if self.refuse_writes is not None:
            return self._error(req, self.refuse_writes, "Unauthorized" if self.refuse_writes == 401 else "Forbidden",
                               "You don't have the rights to write to this namespace")
        json_headers = {"Content-Type": "application/json"}
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if self.repo(repo_id) is not None:
                return self._error(req, 409, "RepoExists", "You already created this model repo")
            self.pushed[repo_id] = {}
            self.heads[repo_id] = hashlib.sha1(repo_id.encode()).hexdigest()
            return self._send(req, 200, json.dumps({"url": f"{self.url}/{repo_id}"}).encode(), json_headers, False)
        if path.startswith("/api/models/"):
            repo_id, rest = self._repo_id(path[len("/api/models/"):])
            if repo_id not in self.pushed:
                return self._error(req, 404, "RepoNotFound", "Repository not found")
            if rest.startswith("preupload/"):
                files = json.loads(body)["files"]
                answer = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                    for f in files]}
                return self._send(req, 200, json.dumps(answer).encode(), json_headers, False)
            if rest.startswith("commit/"):
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                if not lines or lines[0]["key"] != "header":
                    return self._error(req, 400, "BadRequest", "the commit starts with a header line")
                files = dict(self.pushed[repo_id])
                for line in lines[1:]:
                    if line["key"] != "file" or line["value"].get("encoding") != "base64":
                        return self._error(req, 400, "BadRequest", f"this hub takes inline files only: {line['key']}")
                    files[line["value"]["path"]] = (base64.b64decode(line["value"]["content"]), False)
                self.pushed[repo_id] = files
                oid = hashlib.sha1(self.heads[repo_id].encode() + body).hexdigest()
                self.heads[repo_id] = oid
                answer = {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}
                return self._send(req, 200, json.dumps(answer).encode(), json_headers, False)
        return self._error(req, 404, "EntryNotFound", "not found")

    @staticmethod
    def _send(req, status: int, body: bytes, headers: dict, head: bool) -> None:
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)

    @staticmethod
    def _error(req, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    yield h
    h.server.shutdown()


def run_download(hub: FakeHub, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(cache.parent / "hf_home"),
                        "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    return subprocess.run(
        [sys.executable, "-m", "tensor_surgery.cli", "download", *args, "--cache-dir", str(cache), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )


def _ok(proc) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_download_verifies_and_reuses_then_replaces_a_corrupted_cached_file(hub, tmp_path):
    cache = tmp_path / "cache"
    first = _ok(run_download(hub, cache, REPO_ID))
    snap = Path(first["path"])
    assert snap == cache / "models--acme--tiny-model" / "snapshots" / COMMIT
    assert first["revision"] == COMMIT
    assert {f["name"]: f["status"] for f in first["files"]} == {"model.safetensors": "downloaded",
                                                                 "config.json": "downloaded"}
    data, _ = hub.files["model.safetensors"]
    assert (snap / "model.safetensors").read_bytes() == data
    # the oracle: the safetensors library reads what was downloaded
    np.testing.assert_array_equal(load_file(snap / "model.safetensors")["b"], np.arange(3))
    by_name = {f["name"]: f for f in first["files"]}
    assert by_name["model.safetensors"]["algorithm"] == "sha256"
    assert by_name["model.safetensors"]["digest"] == hashlib.sha256(data).hexdigest()
    assert by_name["config.json"]["algorithm"] == "git-sha1"
    # the printed folder is what analyze takes: its rows name the hub model and the commit
    from tensor_surgery.analysis import run as run_mod
    from tensor_surgery.analysis import table as tb

    rows = run_mod.analyze_to_file([str(snap)], tmp_path / "t.jsonl", tb.Options(rank="none"), command=["t"])["table"]
    assert {(r["model_id"], r["revision"]) for r in rows} == {(REPO_ID, COMMIT)}
    assert sorted(r["param_name"] for r in rows) == ["b", "w"]

    # second run: everything valid in the cache, nothing fetched again
    hub.gets.clear()
    second = _ok(run_download(hub, cache, REPO_ID, "--revision", COMMIT))
    assert {f["status"] for f in second["files"]} == {"cached"}
    assert hub.gets == []

    # a cached blob corrupted on disk (same size): re-downloaded, never used
    blob = os.path.realpath(snap / "model.safetensors")
    raw = bytearray(Path(blob).read_bytes())
    raw[-1] ^= 0x01
    Path(blob).write_bytes(bytes(raw))
    third = _ok(run_download(hub, cache, REPO_ID))
    assert {f["name"]: f["status"] for f in third["files"]}["model.safetensors"] == "redownloaded"
    assert hub.gets == ["model.safetensors"]
    assert (snap / "model.safetensors").read_bytes() == data


def test_download_bad_revision_is_bad_input(hub, tmp_path):
    proc = run_download(hub, tmp_path / "cache", REPO_ID, "--revision", "no-such-branch")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["field"] == "revision" and "no-such-branch" in err["message"]


def test_download_unknown_model_is_bad_input(hub, tmp_path):
    proc = run_download(hub, tmp_path / "cache", "acme/nothing-here")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "model_not_found"


def test_download_that_does_not_match_the_hub_is_removed_and_fails(hub, tmp_path):
    cache = tmp_path / "cache"
    hub.serve_wrong_bytes.add("model.safetensors")
    try:
        proc = run_download(hub, cache, REPO_ID)
    finally:
        hub.serve_wrong_bytes.clear()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = json.loads(proc.stdout)["error"]
    assert err["code"] == "download_failed" and err["file"] == "model.safetensors"
    snap = cache / "models--acme--tiny-model" / "snapshots" / COMMIT
    assert not (snap / "model.safetensors").exists()
    blobs = cache / "models--acme--tiny-model" / "blobs"
    sha = hashlib.sha256(hub.files["model.safetensors"][0]).hexdigest()
    assert not (blobs / sha).exists()
