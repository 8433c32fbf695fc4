"""Reading tensors: the list with layout metadata, slices, statistics, histograms, hex, overviews."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.convertors import StringConvertor, register_url_convertor

from ..store import slicing
from ..store.rank import tensor_rank
from ..store import stats as st
from ..workspace import tensor_cache_key
from .compression import accepts_gzip
from .deps import FiniteFloatQuery, ModelDep, SettingsDep, ViewParam, WorkspaceDep

router = APIRouter(prefix="/api", tags=["tensors"])


class TensorNameConvertor(StringConvertor):
    """A tensor name in a path: any text, slashes and newlines included (names are data; a
    model may hold "a/b" or "x\ny"), unlike Starlette's `path`, whose `.*` stops at a newline."""

    regex = "[\\s\\S]+"


register_url_convertor("tensor", TensorNameConvertor())

_DIM_PARAM = re.compile(r"^dim")  # every dim* key goes to the parser, so a typo is an error, not ignored
SLICE_DOC = (
    "Slice parameters (query): `dimN_start` and `dimN_end` (optionally `dimN_step`) for at most two "
    "viewed dimensions, `dimN_idx` to fix each other dimension (default 0). With none given, the "
    "last two dimensions are viewed through a window of 256 from 0."
)


def slice_params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if _DIM_PARAM.match(k)}


@router.get(
    "/tensors",
    summary="Every tensor with shape, dtype, size and canvas layout metadata",
    description="A JSON list of `{name, shape, dtype, numel, nbytes, metadata_for_canvas: {layer_index, "
    "type_group, specific_type_key, canvas_x, canvas_y, expert_index, block}}`, in canvas order. "
    "By default the whole list; `offset` and `limit` give a window of it (the `X-Total-Count` header "
    "says how many there are). Gzipped when the client's Accept-Encoding accepts gzip (q > 0: `gzip;q=0` "
    "gets plain JSON).",
)
def list_tensors(
    request: Request, ws: WorkspaceDep, model: ModelDep,
    offset: Annotated[int, Query(ge=0, le=1 << 40, description="skip this many entries")] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1 << 40, description="at most this many entries (default: all)")] = None,
) -> Response:
    listing = ws.tensor_listing(model)
    headers = {"X-Total-Count": str(listing.count)}
    takes_gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
    if offset or limit is not None:  # a window: small, compressed (or not) by the GZip middleware
        return Response(listing.page(offset, limit), media_type="application/json", headers=headers)
    if takes_gzip:  # stored compressed: sent as it is (the GZip middleware leaves it alone)
        return Response(listing.gzipped(), media_type="application/json",
                        headers={**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    # inflated block by block as it is sent, never held whole (225 MB for a million tensors)
    return StreamingResponse(listing.iter_json(), media_type="application/json",
                             headers={**headers, "Content-Length": str(listing.json_size)})


@router.get("/tensor_slice/{tensor_name:tensor}", summary="Values of a slice of a tensor", description=SLICE_DOC)
def tensor_slice(
    tensor_name: str, request: Request, ws: WorkspaceDep, settings: SettingsDep, view: ViewParam = "base"
) -> dict:
    reader = ws.reader(tensor_name, view)
    return slicing.read_slice(reader, slice_params(request), max_cells=settings.max_slice_cells)


@router.get(
    "/tensor_stats/{tensor_name:tensor}",
    summary="Statistics of a whole tensor (cached) or of a slice",
    description="min, max, sum, mean, std, var, abs_max, l2_norm (integer dtypes: min, max, sum and "
    "abs_max as exact integers), sparsity, NaN/Inf counts and exact "
    "percentiles. With slice parameters, of that slice only. " + SLICE_DOC,
)
def tensor_stats(
    tensor_name: str,
    request: Request,
    ws: WorkspaceDep,
    settings: SettingsDep,
    view: ViewParam = "base",
    threshold: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="sparsity threshold (default SPARSITY_THRESHOLD)")
    ] = None,
) -> dict:
    reader = ws.reader(tensor_name, view)
    params = slice_params(request)
    if not params:
        return ws.tensor_stats(reader, threshold=threshold)
    spec = slicing.parse_slice(reader.shape, params, tensor=tensor_name, max_cells=settings.max_slice_cells)
    pats = reader.read_patterns(spec.index)
    out = st.array_stats(
        reader.decode(pats), reader.dtype, patterns=pats,
        threshold=settings.sparsity_threshold if threshold is None else threshold,
    )
    return {"tensor_name": tensor_name, "view": view, "slice_definition": spec.definition, **out}


@router.get(
    "/tensor_histogram/{tensor_name:tensor}",
    summary="Histogram of a whole tensor or of a slice",
    description="`bins` equal-width bins over [lo, hi] (default: the value range); `log=true` bins "
    "|x| on a log scale and counts zeros apart. " + SLICE_DOC,
)
def tensor_histogram(
    tensor_name: str,
    request: Request,
    ws: WorkspaceDep,
    settings: SettingsDep,
    view: ViewParam = "base",
    bins: Annotated[int, Query(ge=1, le=4096)] = 64,
    lo: FiniteFloatQuery = None,
    hi: FiniteFloatQuery = None,
    log: bool = False,
) -> dict:
    reader = ws.reader(tensor_name, view)
    params = slice_params(request)
    if not params:
        return ws.tensor_histogram(reader, bins=bins, lo=lo, hi=hi, log=log)
    spec = slicing.parse_slice(reader.shape, params, tensor=tensor_name, max_cells=settings.max_slice_cells)
    values = reader.read_values(spec.index)
    hist = st.values_histogram(values, bins=bins, lo=lo, hi=hi, log=log)
    return {"tensor_name": tensor_name, "view": view, "bins": bins, "slice_definition": spec.definition, **hist}


@router.get(
    "/tensor_hex/{tensor_name:tensor}",
    summary="Raw bytes of a range of a tensor, with each element they touch decoded",
    description="`offset` counts from the tensor's first byte (as in .hexpatch files). Alternatively "
    "give `element` (a flat element index) and `count`. For a quantized GGUF tensor, `blocks` lists each "
    "quantization block the range touches: its fields (scales decoded, codes) and dequantized values.",
)
def tensor_hex(
    tensor_name: str,
    ws: WorkspaceDep,
    view: ViewParam = "base",
    offset: Annotated[int | None, Query(ge=0)] = None,
    length: Annotated[int, Query(ge=0, le=slicing.MAX_HEX_BYTES)] = 256,
    element: Annotated[int | None, Query(ge=0)] = None,
    count: Annotated[int, Query(ge=1, le=4096)] = 16,
) -> dict:
    reader = ws.reader(tensor_name, view)
    if element is not None:
        ub, ue = reader.unit_bytes, reader.unit_elems
        offset = (element // ue) * ub
        length = min(-(-count // ue) * ub, slicing.MAX_HEX_BYTES)
    return slicing.hex_view(reader, offset or 0, length)


@router.get(
    "/tensor_overview/{tensor_name:tensor}",
    summary="Downsampled overview (block mean and block abs-max) for thumbnails and zoomed-out heatmaps",
)
def tensor_overview(
    tensor_name: str,
    ws: WorkspaceDep,
    view: ViewParam = "base",
    rows: Annotated[int, Query(ge=1, le=1024)] = 64,
    cols: Annotated[int, Query(ge=1, le=1024)] = 64,
) -> dict:
    reader = ws.reader(tensor_name, view)
    return ws.cached(
        tensor_cache_key("overview", reader, rows, cols), lambda: slicing.overview(reader, rows, cols),
        lambda o: 32 * rows * cols + 1024,
    )


@router.get(
    "/tensor_rank/{tensor_name:tensor}",
    summary="Numerical rank of a 2-D tensor from its singular values (exact or randomized)",
)
def tensor_rank_route(
    tensor_name: str,
    ws: WorkspaceDep,
    view: ViewParam = "base",
    method: Annotated[str, Query(pattern="^(auto|exact|randomized)$")] = "auto",
    k: Annotated[int, Query(ge=1, le=4096)] = 256,
    rtol: Annotated[float | None, Query(gt=0, lt=1)] = None,
) -> dict:
    reader = ws.reader(tensor_name, view)
    return ws.cached(
        tensor_cache_key("rank", reader, method, k, rtol), lambda: tensor_rank(reader, method=method, k=k, rtol=rtol),
        lambda r: 8 * 600 + 1024,
    )
