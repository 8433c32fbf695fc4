"""Logit lens and tuned lens of the live model for the current prompt; tuned-lens training as a job."""

from __future__ import annotations

import weakref
from pathlib import Path as FsPath
from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest, SurgeryError
from .deps import JobsDep, LiveDep, StagingDep, WorkspaceDep
from .routes_steering import NAME_PATTERN, _running

router = APIRouter(prefix="/api/lens", tags=["lens"])

# The tuned lens in use, per live service: (model path it was made for, lens, metrics, pack folder)
_TUNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("tuned-lens", pattern=NAME_PATTERN)
    steps: int = Field(200, ge=1, le=20_000, description="optimizer steps, one 64-token wikitext sequence each")
    seq_len: int = Field(64, ge=8, le=512)
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False)
    eval_sequences: int = Field(4, ge=1, le=64, description="held-out wikitext sequences for the KL/perplexity curves")


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., max_length=4096, description="a lens pack folder inside ALLOWED_ROOTS")


def _current(live):
    entry = _TUNED.get(live)
    if entry is None or entry[0] != live.model_path:
        return None
    return entry


@router.get("", summary="Layers x positions table of the top token each block's output decodes to")
def table(live: LiveDep, kind: Literal["logit", "tuned"] = "logit",
          prompt: str | None = Query(None, max_length=100_000, description="default: the live prompt")) -> dict:
    """Through the final norm and the unembedding (logit lens), or a trained translator first
    (tuned lens). Steering vectors that are on act on the blocks as they do in the live view.
    Evaluated by the lens bank: the translators of a block in one batched matmul, the norm and the
    unembedding over all positions at once, the statistics copied back from the device once."""
    from ..interp.lens import lens_table

    model = _running(live)
    lens = None
    if kind == "tuned":
        entry = _current(live)
        if entry is None:
            raise InvalidRequest("no tuned lens for this model yet: train one (or load a lens pack) first",
                                 field="kind")
        lens = entry[1]
    text = prompt if prompt is not None else live.wanted.prompt
    if not text.strip():
        raise InvalidRequest("the prompt is empty", field="prompt")

    def run():
        from ..live.hooks import attach

        ids, _ = model.encode(text, live.settings.live_max_prompt_tokens)
        model.apply_overlays(live._overlays(live.wanted.disabled_edits)[0])
        with attach(model.hf_model, live.hooks.active()):
            return lens_table(model.hf_model, model.tokenizer, ids, lens)

    out = live.call(run, timeout=300)
    out["prompt"] = text
    entry = _current(live)
    if entry is not None:
        out["tuned"] = {"metrics": entry[2], "pack": entry[3]}
    return out


@router.get("/tuned", summary="The tuned lens in use: its per-layer KL and perplexity curves")
def tuned(live: LiveDep) -> dict:
    entry = _current(live)
    if entry is None:
        return {"tuned": None}
    return {"tuned": {"metrics": entry[2], "pack": entry[3], "config": entry[1].config}}


@router.post("/tuned/train", status_code=202, summary="Train a tuned lens on wikitext as a job; follow /api/jobs/{id}/events")
def train(body: TrainRequest, live: LiveDep, ws: WorkspaceDep, staging: StagingDep, jobs: JobsDep) -> dict:
    from ..interp.lens import block_outputs, save_lens, train_tuned_lens

    model = _running(live)
    out = ws.roots.check(str(ws.settings.data_dir / "lenses" / body.name), "lens pack")
    if out.exists():
        raise InvalidRequest(f"{out} already exists; choose another name", field="name", path=str(out))
    current = ws.model()
    path = live.model_path

    def capture(ids):  # each forward pass on the model's thread, between live passes
        return live.call(lambda: block_outputs(model.hf_model, ids), timeout=600)

    def work(progress):
        if live.live is not model:
            raise SurgeryError("the live model changed before training started", field="live")
        lens, metrics = train_tuned_lens(model.hf_model, model.tokenizer, steps=body.steps, seq_len=body.seq_len,
                                         lr=body.lr, eval_chunks=body.eval_sequences, capture=capture,
                                         progress=progress, data_folder=ws.settings.text_corpus)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_lens(lens, metrics, out, name=body.name, model_checksum=staging.model_checksum(current),
                  model_name=FsPath(current.path).parent.name,
                  model_type=getattr(model.hf_model.config, "model_type", None))
        if live.model_path == path:
            _TUNED[live] = (path, lens, metrics, str(out))
        return {"pack": str(out), "metrics": metrics}

    job = jobs.start("tuned_lens", f"train tuned lens {body.name} ({body.steps} steps)", work,
                     meta={"out": str(out)})
    return job.snapshot()


@router.post("/tuned/load", summary="Use a lens pack (kind lens) as the tuned lens")
def load(body: LoadRequest, live: LiveDep, ws: WorkspaceDep, staging: StagingDep) -> dict:
    from ..interp.lens import TunedLens
    from ..interp.packs import load_pack

    model = _running(live)
    folder = ws.roots.check(body.path, "lens pack")
    pack = load_pack(folder, model_checksum=staging.model_checksum(ws.model()))
    cfg = model.hf_model.config
    lens = TunedLens.from_pack(pack, int(cfg.hidden_size), int(cfg.num_hidden_layers))
    metrics = pack.meta.get("metrics", {})
    _TUNED[live] = (live.model_path, lens, metrics, str(folder))
    return {"pack": str(folder), "layers": sorted(lens.weights), "metrics": metrics, "warnings": pack.warnings}
