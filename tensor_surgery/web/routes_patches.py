"""The patch library: save staged edits, list, show, download, upload, annotate, delete, verify,
load into staging, invert and compose."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..errors import SurgeryError, TooLarge
from ..surgery import hexpatch as hp
from ..surgery import signing as sg
from ..surgery.library import patch_filename
from ..settings import Settings
from .deps import LibraryDep, ModelDep, SettingsDep, StagingDep

router = APIRouter(prefix="/api/patches", tags=["patches"])
PatchName = Annotated[str, Path(min_length=1, max_length=200, description="file name in PATCH_DIR")]


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=200)
    description: str = Field("", max_length=10_000)
    edit_ids: list[int] | None = Field(None, description="only these staged edits (default: all)")
    checksums: bool = Field(True, description="record base_model_checksum and tensor_checksums")
    overwrite: bool = False


class AnnotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field(..., max_length=10_000)


class DeriveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out_name: str = Field(..., min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    overwrite: bool = False


class ComposeRequest(DeriveRequest):
    names: list[str] = Field(..., min_length=1, max_length=100)


AllowInvalid = Annotated[bool, Query(description="load even if the patch's signature is INVALID (changed after "
                                      "signing): the explicit override PATCH_SIGNATURES asks for")]


def _trusted(settings: Settings) -> dict[str, str]:
    return sg.KeyStore(settings.data_dir).trusted_fingerprints()


def signature_policy(settings: Settings, patches: list[tuple[str, hp.HexPatch]], allow_invalid: bool = False) -> list[str]:
    """PATCH_SIGNATURES for patches about to be applied: raises (403 signature_refused, 422
    signature_invalid) before anything changes; else the warnings."""
    return sg.enforce_policy(patches, settings.patch_signatures, sg.KeyStore(settings.data_dir),
                             allow_invalid=allow_invalid)


@router.get("", summary="Every patch in the library with its description, size and signature status",
            description="`signature.status` is unsigned, trusted, unknown_key or invalid (with `reason` and "
            "`field`); `signature.text` says it in words. A corrupt trust list is reported in `trust_error` "
            "(signatures are then checked against no trusted key).")
def list_patches(library: LibraryDep, settings: SettingsDep) -> dict:
    trust_error = None
    try:
        trusted = _trusted(settings)
    except SurgeryError as e:
        trusted, trust_error = {}, e.to_dict()
    patches = library.list(lambda p: {"signature": sg.check(p, trusted).to_json()})
    return {"patches": patches, "folder": str(library.folder), "policy": settings.patch_signatures,
            **({"trust_error": trust_error} if trust_error else {})}


@router.post("", summary="Save staged edits (all, or a selection) as a .hexpatch in the library")
def save_patch(body: SaveRequest, staging: StagingDep, library: LibraryDep, model: ModelDep) -> dict:
    patch_filename(body.name)  # a bad name fails before any work
    patch = staging.build_patch(model, body.description, body.edit_ids, body.checksums)
    return library.save(body.name, patch, overwrite=body.overwrite)


@router.post("/upload", summary="Add a .hexpatch file to the library (validated first)")
async def upload_patch(
    library: LibraryDep,
    file: Annotated[UploadFile, File(description="a .hexpatch (JSON) file")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    overwrite: Annotated[bool, Form()] = False,
) -> dict:
    data = await file.read(hp.MAX_PATCH_BYTES + 1)
    if len(data) > hp.MAX_PATCH_BYTES:
        raise TooLarge(f"upload is over the {hp.MAX_PATCH_BYTES:,}-byte patch limit", field="file")
    return library.upload(name or file.filename or "uploaded", data, overwrite=overwrite)


@router.post("/compose", summary="One patch with the effect of several applied in order")
def compose(body: ComposeRequest, library: LibraryDep, staging: StagingDep, model: ModelDep) -> dict:
    patch_filename(body.out_name)
    patches = [library.read(n) for n in body.names]
    composed = hp.compose(patches, staging.base_bytes(model), body.description or "")
    return library.save(body.out_name, composed, overwrite=body.overwrite)


@router.get("/{name}", summary="A patch: its summary, entries (the first `limit`) and `signature_status`")
def show_patch(name: PatchName, library: LibraryDep, settings: SettingsDep,
               limit: Annotated[int, Query(ge=0, le=100_000)] = 500) -> dict:
    patch = library.read(name)
    d = patch.to_json()
    d["patches"] = d["patches"][:limit]
    return {"name": patch_filename(name), "summary": patch.summary(), "truncated": len(patch.entries) > limit,
            **d, "signature_status": sg.check(patch, _trusted(settings)).to_json()}


@router.get("/{name}/download", summary="The .hexpatch file itself")
def download_patch(name: PatchName, library: LibraryDep) -> Response:
    fname = patch_filename(name)
    return Response(library.read_bytes(name), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{fname}"'})


@router.patch("/{name}", summary="Change a patch's description")
def annotate_patch(name: PatchName, body: AnnotateRequest, library: LibraryDep) -> dict:
    return library.annotate(name, body.description)


@router.delete("/{name}", summary="Delete a patch from the library")
def delete_patch(name: PatchName, library: LibraryDep) -> dict:
    library.delete(name)
    return {"deleted": patch_filename(name)}


@router.post(
    "/{name}/verify",
    summary="Would the patch apply to the current staged state? Every conflict listed",
    description="`already_applied` is true when the staged state already holds every entry's new bytes "
    "(the patch was loaded or applied before): its entries then conflict, but loading it would change nothing. "
    "`signature` is its signature status; `signature_ok` false (with `signature_refused`) when PATCH_SIGNATURES "
    "would refuse to load it; `ok` needs both.",
)
def verify_patch(name: PatchName, library: LibraryDep, staging: StagingDep, model: ModelDep,
                 settings: SettingsDep) -> dict:
    patch = library.read(name)
    status = sg.check(patch, _trusted(settings))
    sig: dict = {"signature": status.to_json(), "signature_ok": True}
    try:
        if w := sg.enforce(status, settings.patch_signatures, patch_filename(name)):
            sig["signature_warning"] = w
    except sg.SignatureRefused as e:
        sig.update(signature_ok=False, signature_refused=e.to_dict())
    conflicts = staging.verify_patch(model, patch)
    applied = bool(conflicts) and hp.is_applied(patch, model, staging.current_bytes(model))
    return {"name": patch_filename(name), "ok": not conflicts and sig["signature_ok"], "already_applied": applied,
            "entries": len(patch.entries), "conflicts": [c.to_json() for c in conflicts], **sig}


@router.post("/{name}/load", summary="Stage the whole patch as one edit, or nothing (409 lists every conflict; "
             "already_applied says when the staged state already holds the patch's bytes)",
             description="PATCH_SIGNATURES applies first: an INVALID signature is refused (422 signature_invalid) "
             "unless `allow_invalid_signature=true`; unsigned or unknown-key patches are refused (403 "
             "signature_refused) when the setting requires signed or trusted ones. Nothing is staged then.")
def load_patch(name: PatchName, library: LibraryDep, staging: StagingDep, model: ModelDep,
               settings: SettingsDep, allow_invalid_signature: AllowInvalid = False) -> dict:
    patch = library.read(name)
    warnings = signature_policy(settings, [(patch_filename(name), patch)], allow_invalid_signature)
    try:
        return {"edit": staging.load_patch(model, patch, patch_filename(name)).summary(),
                "signature_warnings": warnings}
    except hp.PatchConflict as e:
        if hp.is_applied(patch, model, staging.current_bytes(model)):
            raise hp.PatchConflict(f"{patch_filename(name)} is already applied: the staged state holds every "
                                   "entry's new bytes, so loading it again would change nothing; nothing was staged",
                                   **e.context, already_applied=True) from None
        raise


@router.post("/{name}/invert", summary="Save the inverse of a patch (original and new bytes swapped)")
def invert_patch(name: PatchName, body: DeriveRequest, library: LibraryDep) -> dict:
    patch_filename(body.out_name)
    inv = library.read(name).inverted(body.description)
    return library.save(body.out_name, inv, overwrite=body.overwrite)
