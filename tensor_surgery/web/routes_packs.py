"""Packs (installed under DATA_DIR/packs), probe training on the live model, and the probe monitor:
every probe of the loaded probe packs scores every token of the live prompt, pushed with the logits
over /ws/live (`observers.probes`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest, SurgeryError
from .deps import LiveDep, SettingsDep, StagingDep, WorkspaceDep

router = APIRouter(prefix="/api/packs", tags=["packs"])
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
PackName = Annotated[str, Path(pattern=NAME_PATTERN, description="an installed pack's name")]


class LiveNotReady(SurgeryError):
    code = "live_not_loaded"
    http_status = 409


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., max_length=4096, description="a folder or .tar/.tar.gz/.zip inside ALLOWED_ROOTS, "
                        "or a Hugging Face repo id (hf:owner/name)")
    version: str | None = Field(None, pattern=r"^\d{1,9}(\.\d{1,9}){0,3}$", description="default: the newest")
    force: bool = Field(False, description="replace a locally modified pack of the same name")


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dest: str = Field(..., max_length=4096, description="a remote folder or an archive inside ALLOWED_ROOTS, or hf:owner/name")
    overwrite: bool = False


class LabelledText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., max_length=20_000)
    label: str | int | bool


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=NAME_PATTERN)
    rows: list[LabelledText] | None = Field(None, max_length=20_000, description="labelled texts (or `example`)")
    example: str | None = Field(None, max_length=64, description="a shipped example set (GET /examples)")
    layers: str = Field("all", max_length=200, description="decoder blocks: A-B, 3,5,7 or all")
    read: Literal["last", "mean"] = "last"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    test_fraction: float = Field(0.25, ge=0.05, le=0.5)
    version: str = Field("1.0.0", pattern=r"^\d{1,9}(\.\d{1,9}){0,3}$")


class MonitorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    packs: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(..., max_length=256,
                                                                     description="probe packs to monitor ([] stops)")


def _registry(settings):
    from ..interp.registry import PackRegistry

    return PackRegistry(settings.data_dir)


def _with(reg, obj: dict) -> dict:
    if reg.warnings:
        obj["warnings"] = obj.get("warnings", []) + reg.warnings
    return obj


def _location(ws, text: str, what: str) -> str:
    """A path must be inside ALLOWED_ROOTS; a Hugging Face repo id goes to the hub."""
    from ..interp.registry import HF_ID_RE

    if text.startswith("hf:"):
        return text
    p = FsPath(text).expanduser()
    if not p.is_absolute() and not p.exists() and HF_ID_RE.match(text):
        return "hf:" + text
    return str(ws.roots.check(text, what))


def _running(live):
    model = live.live
    if live.state != "ready" or model is None:
        raise LiveNotReady("load the live model first (Live tab → Load); probes read its residual stream",
                           field="live")
    return model


@router.get("", summary="Installed packs: kind, version, source, size, locally modified")
def list_packs(settings: SettingsDep) -> dict:
    reg = _registry(settings)
    return _with(reg, {"packs": reg.list(), "folder": str(reg.folder)})


@router.get("/status", summary="Installed packs against their sources: newer versions, local changes")
def status(settings: SettingsDep) -> dict:
    reg = _registry(settings)
    return _with(reg, {"packs": reg.status()})


@router.get("/examples", summary="The shipped example labelled-text sets for probes")
def examples() -> dict:
    from ..interp.probes import example_sets, read_labelled

    out = []
    for name, path in example_sets().items():
        data = read_labelled(path)
        out.append({"name": name, "count": len(data.texts), "labels": [data.positive, data.negative]})
    return {"examples": out}


@router.get("/monitor", summary="The probes the monitor scores on every live pass")
def monitor_state(live: LiveDep) -> dict:
    return _monitor_summary(live)


def _monitor_summary(live) -> dict:
    bank = getattr(live, "probe_bank", None)
    if bank is None:
        return {"packs": [], "probes": 0, "columns": []}
    return {"packs": bank.pack_names, "probes": len(bank), "columns": [c.to_json() for c in bank.columns],
            "device": str(bank.device)}


@router.put("/monitor", summary="Monitor these probe packs on the live model ([] stops)")
def monitor(body: MonitorRequest, live: LiveDep, settings: SettingsDep, ws: WorkspaceDep, staging: StagingDep) -> dict:
    """Loads each installed probe pack (verified in full), stacks every probe into one bank on the
    model's device, and hangs it on the live forward pass as an observer: the next logits message
    carries `observers.probes` = {tokens, columns, scores [probe][token]}."""
    from ..interp.bank import MONITOR, ProbeBank

    if not body.packs:
        with live._wake:
            live.hooks.remove_observer(MONITOR)
            live.probe_bank = None
        live.set_prompt()
        return _monitor_summary(live)
    model = _running(live)
    reg = _registry(settings)
    checksum = staging.model_checksum(ws.model())
    packs = [reg.load(name, model_checksum=checksum) for name in dict.fromkeys(body.packs)]
    cfg = model.hf_model.config
    bank = live.call(lambda: ProbeBank.from_packs(packs, width=int(cfg.hidden_size),
                                                  n_layers=int(cfg.num_hidden_layers), device=model.device))
    with live._wake:  # a snapshot of the wanted state never sees half of a replacement
        live.hooks.put_observer(bank.observer(model.decode))
        live.probe_bank = bank
    live.set_prompt()
    return _with(reg, {**_monitor_summary(live), "warnings": [w for p in packs for w in p.warnings]})


@router.post("/probes/train", summary="Train a linear probe per layer on the live model and install it as a pack")
def train_probe(body: TrainRequest, live: LiveDep, settings: SettingsDep, ws: WorkspaceDep,
                staging: StagingDep) -> dict:
    """Reads each text's residual at the chosen blocks on the running model (as it is: staged edits
    and adapters that are on), fits one logistic regression per layer on a stratified split and
    installs the result as a probe pack (source: local). Returns accuracy and F1 per layer."""
    from ..interp import probes as pr
    from ..interp.steering import parse_layers

    model = _running(live)
    if (body.rows is None) == (body.example is None):
        raise InvalidRequest("give either rows or example", field="rows")
    if body.example is not None:
        sets = pr.example_sets()
        if body.example not in sets:
            raise InvalidRequest(f"no example set {body.example!r} (there are: {', '.join(sets)})", field="example")
        data = pr.read_labelled(sets[body.example])
    else:
        data = pr.labelled_from_rows([r.model_dump() for r in body.rows], "typed texts")
    layers = parse_layers(body.layers, int(model.hf_model.config.num_hidden_layers))
    reg = _registry(settings)
    if reg.path(body.name).exists():
        raise InvalidRequest(f"a pack named {body.name!r} is installed already; choose another name", field="name")
    fits, metrics = live.call(lambda: pr.train(model.hf_model, model.tokenizer, data, layers, read=body.read,
                                               seed=body.seed, test_fraction=body.test_fraction), timeout=1800)
    current = ws.model()
    reg.folder.mkdir(parents=True, exist_ok=True)
    tmp = FsPath(tempfile.mkdtemp(prefix=".trained-", dir=reg.folder))
    try:
        folder = pr.write_probe_pack(tmp / body.name, fits, metrics, data, name=body.name, version=body.version,
                                     model_checksum=staging.model_checksum(current), model_name=current.name,
                                     read=body.read, seed=body.seed)
        entry = reg.add_local(folder, f"trained in the page on {current.name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _with(reg, {**entry, "metrics": metrics})


@router.post("/install", summary="Install a pack from a folder, an archive or a Hugging Face repo")
def install(body: InstallRequest, settings: SettingsDep, ws: WorkspaceDep) -> dict:
    reg = _registry(settings)
    return _with(reg, reg.install(_location(ws, body.source, "pack source"), body.version, force=body.force))


@router.get("/{name}", summary="An installed pack: pack.json, files, registry entry")
def show(name: PackName, settings: SettingsDep) -> dict:
    reg = _registry(settings)
    return _with(reg, reg.show(name))


@router.post("/{name}/verify", summary="Check every file of an installed pack against its pack.json")
def verify(name: PackName, settings: SettingsDep) -> dict:
    reg = _registry(settings)
    return _with(reg, reg.verify(name, installed=True))


@router.post("/{name}/push", summary="Publish an installed pack to a remote folder, an archive or a HF repo")
def push(name: PackName, body: PushRequest, settings: SettingsDep, ws: WorkspaceDep) -> dict:
    reg = _registry(settings)
    return _with(reg, reg.push(name, _location(ws, body.dest, "pack destination"), overwrite=body.overwrite))


@router.delete("/{name}", summary="Uninstall a pack (also stops monitoring it)")
def remove(name: PackName, settings: SettingsDep, live: LiveDep) -> dict:
    from ..interp.bank import MONITOR

    reg = _registry(settings)
    out = reg.remove(name)
    bank = getattr(live, "probe_bank", None)
    if bank is not None and name in bank.pack_names:
        with live._wake:
            live.hooks.remove_observer(MONITOR)
            live.probe_bank = None
        live.set_prompt()
    return _with(reg, out)
