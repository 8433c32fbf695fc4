"""Write the per-parameter table as CSV, JSON Lines or Parquet (format from the extension),
atomically: the file is built in memory and renamed into place, so a killed run leaves the
previous file or none.

One declared schema (`SCHEMA`) serves all three: Parquet stores it as is (`created_at` as a UTC
timestamp), JSON Lines writes each row as an object with the columns in order (`null` for no
value), CSV writes a header line and an empty field for no value. Floats are written with
Python's shortest round-trip repr, so reading any of the three gives back the same float64.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from ..errors import InvalidRequest
from ..surgery.library import atomic_write
from .table import ALL_COLUMNS, PERCENTILE_COLUMNS

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}

_F = pa.float64()
SCHEMA = pa.schema(
    [
        pa.field("model_path", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("param_name", pa.string(), nullable=False),
        pa.field("layer_index", pa.int32()),
        pa.field("block_type", pa.string(), nullable=False),
        pa.field("shape", pa.string(), nullable=False),
        pa.field("rows", pa.int64()),
        pa.field("cols", pa.int64()),
        pa.field("rank", pa.int64()),
        pa.field("mean", _F),
        pa.field("std", _F),
        pa.field("var", _F),
        pa.field("sparsity", _F, nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("s", tz="UTC"), nullable=False),
        pa.field("type_group", pa.string(), nullable=False),
        pa.field("numel", pa.int64(), nullable=False),
        pa.field("min", _F),
        pa.field("max", _F),
        pa.field("abs_max", _F),
        pa.field("l2_norm", _F),
        pa.field("nan_count", pa.int64(), nullable=False),
        pa.field("inf_count", pa.int64(), nullable=False),
        *[pa.field(c, _F) for c in PERCENTILE_COLUMNS],
        pa.field("spectral_norm", _F),
        pa.field("stable_rank", _F),
        pa.field("rank_method", pa.string()),
        pa.field("rank_certain", pa.bool_()),
        pa.field("rank_error_bound", _F),
    ],
    metadata={"description": "tensor-surgery per-parameter analysis table"},
)
assert tuple(SCHEMA.names) == ALL_COLUMNS  # one contract: the table's columns, in order


def format_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise InvalidRequest(
            f"{Path(path).name!r}: the output's extension must be .csv, .jsonl or .parquet "
            f"(it picks the format), not {suffix or 'none'!r}",
            field="out",
        )
    return fmt


def render(rows: list[dict], fmt: str) -> bytes:
    """The table's bytes in `fmt` ("csv", "jsonl" or "parquet")."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(ALL_COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else _csv_value(r[c]) for c in ALL_COLUMNS])
        return buf.getvalue().encode("utf-8")
    if fmt == "jsonl":
        return b"".join(
            (json.dumps({c: r[c] for c in ALL_COLUMNS}, allow_nan=False, ensure_ascii=False) + "\n").encode("utf-8")
            for r in rows
        )
    if fmt == "parquet":
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(to_arrow(rows), buf)
        return buf.getvalue()
    raise InvalidRequest(f"unknown format {fmt!r}: csv, jsonl or parquet", field="format")


def _csv_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def to_arrow(rows: list[dict]) -> pa.Table:
    cols = {c: [r[c] for r in rows] for c in ALL_COLUMNS}
    cols["created_at"] = [_timestamp(v) for v in cols["created_at"]]
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_table(rows: list[dict], path: str | Path, fmt: str | None = None) -> int:
    """Write `rows` to `path` atomically; returns the bytes written."""
    path = Path(path)
    data = render(rows, fmt or format_of(path))
    atomic_write(path, data)
    return len(data)
