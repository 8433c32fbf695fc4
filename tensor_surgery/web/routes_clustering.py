"""Tensor clusters: the open model's tensors (or one matrix's rows, columns or heads) as 2-D/3-D points.

GET takes query parameters, POST the same fields as a JSON body (token texts with commas, long
index lists). Per-tensor features are cached in the workspace's cache, keyed by the tensor's file
identity and staged state, so a second map of the same model (another method, dims, filter) costs
only the reduction.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..analysis import clustering as cl
from ..errors import InvalidRequest
from ..store import Model
from ..workspace import Workspace, tensor_cache_key
from .deps import ModelDep, WorkspaceDep

router = APIRouter(prefix="/api/clusters", tags=["clusters"])

Method = Literal["pca", "tsne"]
By = Literal["rows", "cols", "heads"]


class ClusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Method = Field("pca", description="`pca` (linear, exact) or `tsne` (scikit-learn, neighbourhoods)")
    dims: Literal[2, 3] = Field(2, description="2 or 3 coordinates per point")
    view: Literal["base", "staged"] = Field("base", description="`staged`: with staged edits overlaid")
    tensor: str | None = Field(None, min_length=1, max_length=4096,
                               description="cluster the parts of this 2-D tensor instead of the model's tensors")
    by: By = Field("rows", description="with `tensor`: each point a row, a column or an attention head")
    indices: list[int] | None = Field(None, max_length=cl.MAX_INDICES,
                                      description="with `tensor`: the rows (or columns) to show, e.g. token ids")
    tokens: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=cl.MAX_INDICES,
        description="with `tensor` and by=rows: texts whose token ids choose the rows (the model's tokenizer.json)")
    head_dim: int | None = Field(None, ge=1, le=1 << 20, description="with by=heads: override config.json's")
    match: str | None = Field(None, max_length=1000, description="tensors mode: only names matching this regex")
    groups: list[str] | None = Field(None, max_length=16, description="tensors mode: only these type groups")


def _features(ws: Workspace):
    """Per-tensor features through the workspace cache (a tensor that cannot be a point is cached
    as such too, so a NaN-holding tensor is not read again on every request)."""
    def compute(reader):
        try:
            return cl.tensor_features(reader)
        except cl.Skip as s:
            return {"skip": s.reason}

    def features(reader):
        value = ws.cached(tensor_cache_key("cluster_features", reader, cl.FEATURE_VERSION),
                          lambda: compute(reader), lambda v: 2048)
        if "skip" in value:
            raise cl.Skip(value["skip"])
        return value
    return features


def _token_rows(ws: Workspace, model: Model, tokens: list[str]) -> tuple[list[int], list[str]]:
    from ..agent.registry import ToolContext
    from ..agent.tokens import load_vocab

    vocab = load_vocab(ToolContext(ws, model))  # padding off: only each text's own tokens
    ids, labels = [], []
    for text in tokens:
        for i in vocab.encode(text):
            if i not in ids:
                ids.append(i)
                labels.append(f"#{i} {vocab.text(i)!r}")
    return ids, labels


def run(req: ClusterRequest, ws: Workspace, model: Model) -> dict:
    if req.tensor is None:
        for field in ("indices", "tokens", "head_dim"):
            if getattr(req, field) is not None:
                raise InvalidRequest(f"{field} applies to one tensor's parts: give `tensor` too", field=field)
        return cl.cluster_tensors(model, method=req.method, dims=req.dims, match=req.match, groups=req.groups,
                                  reader=lambda name: ws.reader(name, req.view, model), features=_features(ws))
    if req.match is not None or req.groups is not None:
        raise InvalidRequest("match and groups choose tensors; with `tensor` the points are its parts", field="match")
    reader = ws.reader(req.tensor, req.view, model)
    indices, labels = req.indices, None
    if req.tokens is not None:
        if req.by != "rows" or req.indices is not None:
            raise InvalidRequest("tokens choose rows of an embedding: use by=rows and no indices", field="tokens")
        indices, labels = _token_rows(ws, model, req.tokens)
    return cl.cluster_matrix(model, req.tensor, req.by, method=req.method, dims=req.dims, indices=indices,
                             labels=labels, config=cl.model_config(model), head_dim=req.head_dim, reader=reader)


DESCRIPTION = (
    "Without `tensor`: every floating tensor of the open model is a point; its features (statistics and "
    "spectrum: mean/std, log std, abs-max/std, kurtosis, stable rank, top singular values, shape, spread of "
    "row and column norms) are standardised and reduced to `dims` coordinates by PCA or t-SNE. Points carry "
    "`layer_index` and `type_group` to colour by; `skipped` lists tensors that cannot be points (integer "
    "dtypes, NaN). With `tensor` (a 2-D matrix): each row, column or attention head (`by`) is a point; rows "
    "can be chosen by `indices` or `tokens`; heads split by config.json's head_dim. Bad input is a 400 naming "
    "the field."
)


@router.get("", summary="2-D/3-D map of the model's tensors, or of one matrix's rows, columns or heads",
            description=DESCRIPTION)
def clusters_get(
    ws: WorkspaceDep, model: ModelDep,
    method: Method = "pca",
    dims: Annotated[int, Query(ge=2, le=3)] = 2,
    view: Annotated[str, Query(pattern="^(base|staged)$")] = "base",
    tensor: Annotated[str | None, Query(min_length=1, max_length=4096)] = None,
    by: By = "rows",
    indices: Annotated[str | None, Query(max_length=20000, description="comma-separated row/column indices")] = None,
    tokens: Annotated[str | None, Query(max_length=20000, description="comma-separated texts (POST for commas)")]
    = None,
    head_dim: Annotated[int | None, Query(ge=1, le=1 << 20)] = None,
    match: Annotated[str | None, Query(max_length=1000)] = None,
    groups: Annotated[str | None, Query(max_length=400, description="comma-separated type groups")] = None,
) -> dict:
    idx = None
    if indices is not None:
        try:
            idx = [int(x) for x in indices.split(",") if x.strip()]
        except ValueError:
            raise InvalidRequest(f"indices must be comma-separated integers, got {indices[:80]!r}",
                                 field="indices") from None
        if len(idx) > cl.MAX_INDICES:
            raise InvalidRequest(f"{len(idx)} indices; at most {cl.MAX_INDICES}", field="indices")
    try:
        req = ClusterRequest(
            method=method, dims=dims, view=view, tensor=tensor, by=by, indices=idx, head_dim=head_dim, match=match,
            tokens=[t for t in tokens.split(",") if t] if tokens is not None else None,
            groups=[g.strip() for g in groups.split(",") if g.strip()] if groups is not None else None)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first.get("loc", ())) or None
        raise InvalidRequest(f"{field}: {first.get('msg')}", field=field) from None
    return run(req, ws, model)


@router.post("", summary="The same map, asked for with a JSON body", description=DESCRIPTION)
def clusters_post(req: ClusterRequest, ws: WorkspaceDep, model: ModelDep) -> dict:
    return run(req, ws, model)
