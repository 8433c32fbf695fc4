"""The diff table as a file: CSV, JSON Lines, Parquet, or one JSON document (summary included)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..errors import InvalidRequest
from .diff import COLUMNS

FORMATS = (".csv", ".jsonl", ".parquet", ".json")
_LIST_COLUMNS = ("base_shape", "model_shape", "delta_singular_values")


def _clean(v):
    """JSON has no NaN or Infinity: a non-finite float (a cosine over NaNs) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def table_bytes(result: dict, fmt: str) -> bytes:
    """The diff rows in one of FORMATS (`.json`: the whole result, summary included)."""
    rows = [{c: _clean(r[c]) if not isinstance(r[c], list) else [_clean(x) for x in r[c]] for c in COLUMNS}
            for r in result["rows"]]
    if fmt == ".json":
        return json.dumps({**result, "rows": rows}, indent=1, allow_nan=False).encode()
    if fmt == ".jsonl":
        return "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
    if fmt == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if r[c] is None else json.dumps(r[c]) if c in _LIST_COLUMNS else r[c] for c in COLUMNS])
        return buf.getvalue().encode()
    if fmt == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([
            ("name", pa.string()), ("status", pa.string()), ("layer_index", pa.int64()), ("type_group", pa.string()),
            ("base_dtype", pa.string()), ("model_dtype", pa.string()),
            ("base_shape", pa.list_(pa.int64())), ("model_shape", pa.list_(pa.int64())), ("numel", pa.int64()),
            ("relative_change", pa.float64()), ("cosine", pa.float64()), ("max_abs_change", pa.float64()),
            ("changed_elements", pa.int64()), ("changed_fraction", pa.float64()),
            ("base_norm", pa.float64()), ("model_norm", pa.float64()), ("delta_norm", pa.float64()),
            ("delta_rank", pa.int64()), ("delta_rank_tolerance", pa.float64()), ("delta_max_rank", pa.int64()),
            ("delta_singular_values", pa.list_(pa.float64())), ("note", pa.string()),
        ])
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        return sink.getvalue()
    raise InvalidRequest(f"unknown output format {fmt!r}: use one of {', '.join(FORMATS)}", field="out")


def output_format(out: Path) -> str:
    fmt = out.suffix.lower()
    if fmt not in FORMATS:
        raise InvalidRequest(f"--out {str(out)!r}: the extension names the format, one of {', '.join(FORMATS)}",
                             field="out", path=str(out))
    return fmt


