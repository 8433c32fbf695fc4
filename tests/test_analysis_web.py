"""The analysis routes: a job computes the open model's table (the same rows as the CLI's),
then it is served as JSON, exported inside ALLOWED_ROOTS and downloaded in the three formats."""

from __future__ import annotations

import io
import json
import time

import pyarrow.parquet as pq

from tensor_surgery.analysis import table as tb

from .conftest import assert_error


def wait_job(client, job_id: str, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        snap = client.get(f"/api/jobs/{job_id}").json()
        if snap["state"] != "running":
            return snap
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running")


def test_table_job_json_export_and_download(client, tiny_model, tmp_path):
    r = client.get("/api/analysis/table")
    assert_error(r, 404, "analysis_not_ready")
    r = client.post("/api/analysis", json={"rank": "exact"})
    assert r.status_code == 202, r.text
    snap = wait_job(client, r.json()["job"]["id"])
    assert snap["state"] == "done", snap
    body = client.get("/api/analysis/table", params={"rank": "exact"}).json()
    assert body["columns"] == list(tb.ALL_COLUMNS)
    # the same table the CLI's pipeline gives (an independent oracle checks that one in test_analysis)
    rows, _ = tb.build_table([tb.describe_model(str(tiny_model))], tb.Options())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "created_at"} for r in rs]  # noqa: E731
    assert strip(body["rows"]) == strip(rows)

    out = tmp_path / "data" / "exports" / "t.parquet"
    r = client.post("/api/analysis/export", json={"rank": "exact", "format": "parquet", "out": str(out)})
    assert r.status_code == 200, r.text
    assert strip(pq.read_table(out).to_pylist())[0]["param_name"] == rows[0]["param_name"]
    assert json.loads((out.parent / "run_meta.json").read_text())["rows"] == len(rows)
    assert_error(client.post("/api/analysis/export", json={"rank": "exact", "format": "parquet", "out": str(out)}), 400)
    assert_error(client.post("/api/analysis/export", json={"rank": "exact", "format": "csv", "out": "/etc/t.csv"}), 403)

    r = client.get("/api/analysis/download", params={"rank": "exact", "format": "jsonl"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    assert [json.loads(x)["param_name"] for x in r.text.splitlines()] == [x["param_name"] for x in rows]
    r = client.get("/api/analysis/download", params={"rank": "exact", "format": "parquet"})
    assert pq.read_table(io.BytesIO(r.content)).num_rows == len(rows)


def test_bad_options_are_4xx(client):
    assert_error(client.post("/api/analysis", json={"match": "("}), 400, "invalid_request")
    assert client.post("/api/analysis", json={"rank": "svd"}).status_code == 422
    assert client.post("/api/analysis", json={"sparsity_eps": -1}).status_code == 422
