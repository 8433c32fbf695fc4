"""`tensor-surgery pack ...`: installed packs (DATA_DIR/packs), their sources, versions and checks."""

from __future__ import annotations

import sys

import click

from ..cli import emit, handles_errors, human_bytes, json_option
from ..signing_cli import _settings
from .registry import PackRegistry


def _registry() -> PackRegistry:
    return PackRegistry(_settings().data_dir)


def _with_warnings(reg: PackRegistry, obj: dict, as_json: bool) -> dict:
    if reg.warnings:
        obj["warnings"] = obj.get("warnings", []) + reg.warnings
        if not as_json:
            for w in reg.warnings:
                click.echo(f"warning: {w}", err=True)
    return obj


@click.group("pack")
def pack() -> None:
    """Packs of steering vectors, lenses and probes: install, share, verify (see README, "Packs")."""


@pack.command("list")
@json_option
@handles_errors
def pack_list(as_json: bool) -> None:
    """Installed packs: kind, version, source, size, and whether they were modified locally."""
    reg = _registry()
    rows = reg.list()
    out = _with_warnings(reg, {"packs": rows, "folder": str(reg.folder)}, as_json)
    if as_json:
        emit(out, True)
        return
    if not rows:
        click.echo(f"no packs installed in {reg.folder} (`tensor-surgery pack install SOURCE`)")
    for r in rows:
        src = r["source"]["location"] if r["source"] else "source unknown"
        flag = {True: "  MODIFIED locally", None: "  (unreadable: run pack verify)"}.get(r["modified"], "")
        click.echo(f"{r['name']}  {r['kind']}  {r['version']}  {human_bytes(r['size'])}  from {src}  "
                   f"installed {r['installed_at']}{flag}")


@pack.command("show")
@click.argument("name")
@json_option
@handles_errors
def pack_show(name: str, as_json: bool) -> None:
    """Everything about an installed pack: its pack.json, files and registry entry."""
    reg = _registry()
    info = _with_warnings(reg, reg.show(name), as_json)
    m = info["manifest"]
    emit(info, as_json, "\n".join([
        f"{m['name']} {m['version']} ({m['kind']})  {info['folder']}",
        f"  made for weights {m['model'].get('checksum')} {m['model'].get('name') or ''}".rstrip(),
        f"  layers {m['layers']}",
        f"  made with {m.get('made_with')}",
        f"  metrics {m.get('metrics')}",
        f"  source {info['source']}  installed {info['installed_at']}  modified locally: {info['modified']}",
        *[f"  {rel}  {e['size']} bytes  sha256 {e['sha256'][:16]}..." for rel, e in m["files"].items()],
    ]))


@pack.command("install")
@click.argument("source")
@click.option("--version", "version", help="Install this version (default: the newest at SOURCE).")
@click.option("--force", is_flag=True, help="Replace a locally modified pack of the same name.")
@json_option
@handles_errors
def pack_install(source: str, version: str | None, force: bool, as_json: bool) -> None:
    """Install a pack from SOURCE: a folder, a .tar/.tar.gz/.zip file, or a Hugging Face repo id."""
    reg = _registry()
    info = _with_warnings(reg, reg.install(source, version, force=force), as_json)
    for w in info.get("warnings", []) if not as_json else []:
        if w not in reg.warnings:
            click.echo(f"warning: {w}", err=True)
    was = f" (replacing {info['replaced']})" if info["replaced"] else ""
    emit(info, as_json, f"installed {info['name']} {info['version']}{was} into {info['folder']}")


@pack.command("push")
@click.argument("name")
@click.argument("dest")
@click.option("--overwrite", is_flag=True, help="Replace that version at DEST if it differs.")
@json_option
@handles_errors
def pack_push(name: str, dest: str, overwrite: bool, as_json: bool) -> None:
    """Publish installed pack NAME to DEST: a remote folder (DEST/<version>/), an archive, or a HF repo."""
    reg = _registry()
    info = _with_warnings(reg, reg.push(name, dest, overwrite=overwrite), as_json)
    same = " (already there, unchanged)" if info.get("unchanged") else ""
    emit(info, as_json, f"pushed {name} {info['version']} to {info['dest']['location']}{same}")


@pack.command("verify")
@click.argument("pack_ref", metavar="PACK")
@json_option
@handles_errors
def pack_verify(pack_ref: str, as_json: bool) -> None:
    """Check every file of PACK (an installed name or a pack folder) against its pack.json: exit 0 or 1."""
    reg = _registry()
    report = _with_warnings(reg, reg.verify(pack_ref), as_json)
    if as_json:
        emit(report, True)
    elif report["ok"]:
        mod = "  (modified locally since installed)" if report.get("modified") else ""
        click.echo(f"ok: {report['name']} {report['version']}, {report['tensors']} tensors, every file verifies{mod}")
    else:
        for e in report["errors"]:
            click.echo(f"FAILED: {e['message']}", err=True)
    sys.exit(0 if report["ok"] else 1)


@pack.command("remove")
@click.argument("name")
@json_option
@handles_errors
def pack_remove(name: str, as_json: bool) -> None:
    """Uninstall pack NAME (its folder and registry entry)."""
    reg = _registry()
    info = _with_warnings(reg, reg.remove(name), as_json)
    emit(info, as_json, f"removed {name} {info['version']}")


@pack.command("status")
@json_option
@handles_errors
def pack_status(as_json: bool) -> None:
    """Installed packs against their sources: which have newer versions, which were modified."""
    reg = _registry()
    rows = reg.status()
    out = _with_warnings(reg, {"packs": rows}, as_json)
    if as_json:
        emit(out, True)
        return
    if not rows:
        click.echo("no packs installed")
    for r in rows:
        if r.get("error"):
            state = r["error"]
        elif r["newer"]:
            state = f"newer version {r['latest']} at {r['source']['location']}"
        else:
            state = "up to date"
        mod = "  MODIFIED locally" if r["modified"] else ""
        click.echo(f"{r['name']}  {r['version']}  {state}{mod}")
