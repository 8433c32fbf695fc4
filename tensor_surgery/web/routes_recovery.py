"""An interrupted in-place apply of the open model: finish it or roll it back, as the user chooses.

Opening and reading a model never write it; `GET /api/model` reports a pending apply in its
`interrupted_apply` field and the page shows a banner with both choices.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..surgery.apply import pending_in_place
from .deps import ModelDep, WorkspaceDep

router = APIRouter(prefix="/api/model", tags=["model"])


class RecoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rollback: bool = Field(
        False, description="false: finish the apply (write the rest of the patch); "
        "true: roll it back (restore every byte it touched from the backup written before it started)",
    )


@router.post(
    "/recover",
    summary="Finish or roll back the open model's interrupted in-place apply (`patch recover [--rollback]`)",
    responses={409: {"description": "the journal belongs to another model in the folder, or cannot be used"}},
)
def recover(body: RecoverRequest, ws: WorkspaceDep, model: ModelDep) -> dict:
    result = ws.recover_interrupted_apply(model, rollback=body.rollback)
    return {**result, "interrupted_apply": pending_in_place(ws.model().path)}
