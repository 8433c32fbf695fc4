"""The `tensor-surgery` command: the same verbs as the API.

Exit status: 0 ok, 1 the operation failed, 2 bad input (click's usage errors are 2 as well).
Every verb takes `--json` for machine-readable output; errors then print `{"error": {...}}`.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m tensor_surgery.cli`: run the importable module instead of this __main__ copy, on
    # whose group the commands of other modules (registered at the end) cannot import and land
    import sys

    from tensor_surgery.cli import main

    sys.exit(main())

import functools
import json
import math
import os
import re
import sys
from pathlib import Path

import click

from . import __version__
from .errors import SurgeryError
from .settings import Settings

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str))
    elif text is not None:
        click.echo(text)


def handles_errors(fn):
    """Turn SurgeryError into one readable line (or JSON) and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        as_json = kwargs.get("as_json", False)
        try:
            return fn(*args, **kwargs)
        except SurgeryError as e:
            if as_json:
                click.echo(json.dumps({"error": e.to_dict()}, default=str))
            else:
                click.echo(f"error: {e.message}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(1)

    return wrapper


def progress_bar(total: int, desc: str, unit: str = "B"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None, leave=False)


class JsonErrorsGroup(click.Group):
    """With `--json` anywhere on the command line, click's own errors (an unknown option, a
    missing argument) are printed as `{"error": {...}}` on stdout too, with click's exit status
    (2 for usage errors), instead of click's usage text: a script asked for JSON."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as e:
            error = {"code": "usage_error" if isinstance(e, click.UsageError) else "error",
                     "message": e.format_message()}
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                error["command"] = ctx.command_path
                error["usage"] = ctx.get_usage()
            param = getattr(e, "param", None)
            if param is not None and param.name:
                error["field"] = param.name
            click.echo(json.dumps({"error": error}))
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo(json.dumps({"error": {"code": "aborted", "message": "aborted"}}))
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=JsonErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tensor-surgery")
def main() -> None:
    """Look inside .safetensors model weights and change them on purpose."""


# -- serve ------------------------------------------------------------------------------------


def serve_app(app) -> None:
    import uvicorn

    settings: Settings = app.state.settings
    token = app.state.token
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}/"
    if token and not settings.is_loopback:
        click.echo(f"Tensor Surgery on {url}?token={token}  (bound beyond loopback: the token is required)")
    else:
        click.echo(f"Tensor Surgery on {url}")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--host", help="Address to listen on (default HOST, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default PORT, 8000).")
@click.option("--show-settings", is_flag=True, help="Print every setting (secrets redacted) and exit.")
@handles_errors
def serve(model: Path | None, host: str | None, port: int | None, show_settings: bool) -> None:
    """Serve the web app for MODEL (default MODEL_PATH, the SmolLM2 demo model)."""
    overrides = {k: v for k, v in {"model_path": model, "host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    if show_settings:
        for name, item in settings.describe().items():
            click.echo(f"{name}={item['value']}\n    {item['help']}")
        return
    from .web.app import create_app

    serve_app(create_app(settings))


# -- ls / stats -------------------------------------------------------------------------------


def _open(path: Path):
    from .store import open_model
    from .surgery.apply import pending_in_place

    model = open_model(path)
    # Reading never writes: an interrupted in-place apply is reported, and recovering it is the
    # user's explicit choice (`patch recover`, forward or --rollback).
    pending = pending_in_place(model.path)
    if pending:
        click.echo(f"warning: {pending['message']}", err=True)
    return model


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--match", "pattern", help="Only tensors whose name matches this regular expression.")
@json_option
@handles_errors
def ls(model: Path, pattern: str | None, as_json: bool) -> None:
    """List the tensors of MODEL with their layout metadata."""
    from .workspace import tensor_entries

    with _open(model) as m:
        entries = tensor_entries(m)
        if pattern:
            rx = _regex(pattern)
            entries = [e for e in entries if rx.search(e["name"])]
        if as_json:
            emit({"model": m.summary(), "tensors": entries}, True)
            return
        s = m.summary()
        click.echo(
            f"{s['name']}: {s['tensor_count']} tensors, {human_bytes(s['total_bytes'])}, "
            f"{s['shards']} file(s), dtypes {', '.join(f'{k}×{v}' for k, v in s['dtypes'].items())}"
        )
        for w in s["warnings"]:
            click.echo(f"warning: {w}", err=True)
        width = max((len(e["name"]) for e in entries), default=4)
        for e in entries:
            meta = e["metadata_for_canvas"]
            click.echo(
                f"{e['name']:<{width}}  {e['dtype']:<11} {str(tuple(e['shape'])):<20} "
                f"{human_bytes(e['nbytes']):>10}  layer {meta['layer_index']:>3}  {meta['type_group']}"
            )


def _regex(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SurgeryError(f"--match {pattern!r} is not a valid regular expression: {e}", field="match") from None


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("tensors", nargs=-1)
@click.option("--match", "pattern", help="Only tensors whose name matches this regular expression.")
@click.option("--threshold", type=float, default=1e-8, show_default=True, help="|x| <= threshold counts as zero.")
@json_option
@handles_errors
def stats(model: Path, tensors: tuple[str, ...], pattern: str | None, threshold: float, as_json: bool) -> None:
    """Streaming statistics of TENSORS of MODEL (all of them by default), with a progress bar."""
    from .store import TensorReader
    from .store import stats as st

    with _open(model) as m:
        names = list(tensors) or list(m.tensors)
        for n in names:
            m.tensor(n)  # unknown names fail before any work
        if pattern:
            rx = _regex(pattern)
            names = [n for n in names if rx.search(n)]
        total = sum(m.tensors[n].nbytes for n in names)
        results = {}
        skipped = {}
        with progress_bar(total, "stats") as bar:
            for n in names:
                ref = m.tensor(n)
                if not ref.dtype.decodable:
                    skipped[n] = ref.dtype.undecodable().message
                    bar.update(ref.nbytes)
                    continue
                done = [0]
                isz = ref.nbytes / max(ref.numel, 1)

                def tick(elems: int, _total: int, done=done, isz=isz) -> None:
                    step = int(elems * isz) - done[0]
                    done[0] += step
                    bar.update(step)

                results[n], _ = st.tensor_stats(TensorReader(ref), threshold=threshold, progress=tick)
                bar.update(ref.nbytes - done[0])
        if as_json:
            emit({"model": m.summary()["name"], "stats": results, "skipped": skipped}, True)
            return
        width = max((len(n) for n in names), default=4)
        click.echo(f"{'tensor':<{width}}  {'mean':>11} {'std':>11} {'min':>11} {'max':>11} {'sparsity':>9} {'nan':>5} {'inf':>5}")
        for n, s in results.items():
            click.echo(
                f"{n:<{width}}  {_fmt(s['mean']):>11} {_fmt(s['std']):>11} {_fmt(s['min']):>11} "
                f"{_fmt(s['max']):>11} {s['sparsity']:>9.3%} {s['nan_count']:>5} {s['inf_count']:>5}"
            )
        for n, why in skipped.items():
            click.echo(f"{n}: skipped: {why}", err=True)


# -- patch ------------------------------------------------------------------------------------


@main.group()
def patch() -> None:
    """Apply, verify, diff and invert .hexpatch files."""


def _read_patches(paths: tuple[Path, ...]):
    from .surgery import hexpatch as hp

    out = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise SurgeryError(f"{p}: cannot read the patch: {e.strerror}", file=str(p)) from None
        out.append((str(p), hp.loads(data, str(p))))
    return out


def _byte_bar(desc: str):
    bar = progress_bar(0, desc)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, progress


@patch.command("apply")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("patches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="New model: a folder, or a .safetensors file.")
@click.option("--in-place", is_flag=True, help="Write into MODEL's own files (a backup inverse patch is written first).")
@click.option("--max-shard-size", help="Re-shard the output to at most this per file (e.g. 2GB).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--allow-invalid-signature", is_flag=True, help="Apply a patch whose signature is INVALID all the same.")
@json_option
@handles_errors
def patch_apply(model, patches, out, in_place, max_shard_size, overwrite, allow_invalid_signature, as_json) -> None:
    """Write a new patched model (or patch MODEL in place). All or nothing: conflicts refuse it."""
    from .surgery.apply import apply_in_place, check_no_pending_intent, runs_for_patches
    from .surgery.hexpatch import model_checksum
    from .surgery.writer import export_model, parse_size

    if bool(out) == bool(in_place):
        raise SurgeryError("give exactly one of --out OUT or --in-place", field="out")
    loaded = _read_patches(patches)
    from .signing_cli import signature_gate

    signature_gate(loaded, allow_invalid_signature, as_json)  # PATCH_SIGNATURES: refused before any work
    if in_place:
        result = apply_in_place(model, loaded)  # refused while an interrupted apply waits for `recover`
        emit(result, as_json, f"patched {result['model']} in place: {result['entries']} entries, "
             f"{result['changed_bytes']:,} bytes; backup (the inverse patch): {result['backup']}")
        return
    with _open(model) as m:
        check_no_pending_intent(m)
        runs = runs_for_patches(m, loaded, checksum_fn=lambda: model_checksum(m))
        bar, progress = _byte_bar("export")
        with bar:
            result = export_model(m, out, runs, max_shard_bytes=parse_size(max_shard_size) if max_shard_size else None,
                                  overwrite=overwrite, progress=progress, protected=_protected_folders())
    emit(result, as_json, f"wrote {result['path']} ({', '.join(result['files'])}): "
         f"{result['patched_bytes']:,} patched bytes in {result['patched_tensors']} tensor(s), {result['seconds']} s")


def _protected_folders() -> list[tuple[str, Path]]:
    """What `--out` never replaces or holds: the server's folders, as the settings name them."""
    try:
        settings = Settings()
        roots = settings.resolved_allowed_roots
    except Exception:  # unreadable settings must not block an export the settings play no part in
        return []
    return [("DATA_DIR", settings.data_dir), ("PATCH_DIR", settings.patch_dir),
            *(("an allowed root", r) for r in roots)]


@patch.command("verify")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("patches", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@handles_errors
def patch_verify(model, patches, as_json) -> None:
    """Would PATCHES apply cleanly to MODEL (in order)? Lists every conflict; exit 1 if any."""
    from .surgery.apply import check_no_pending_intent, verify_patches
    from .signing_cli import signature_report
    from .surgery.hexpatch import model_checksum

    loaded = _read_patches(patches)
    signatures = signature_report(loaded)
    with _open(model) as m:
        check_no_pending_intent(m)  # a torn in-place apply would give answers about torn bytes
        _, report = verify_patches(m, loaded, checksum_fn=lambda: model_checksum(m))
    for r, sig in zip(report, signatures):
        r.update(sig)
    ok = all(r["ok"] and r["signature_ok"] for r in report)
    if as_json:
        emit({"ok": ok, "patches": report}, True)
    else:
        for r in report:
            if r["signature"]["status"] != "unsigned" or not r["signature_ok"]:  # (unsigned: in --json)
                click.echo(f"{r['patch']}: {r['signature']['text']}")
            if not r["signature_ok"]:
                click.echo(f"  - refused: {r['signature_refused']['message']}")
            if r["already_applied"]:
                click.echo(f"{r['patch']}: already applied: the model holds every entry's new bytes "
                           f"({r['entries']} entries); applying it again would change nothing")
                continue
            state = "applies cleanly" if r["ok"] else f"{len(r['conflicts'])} conflict(s)"
            click.echo(f"{r['patch']}: {state} ({r['entries']} entries)")
            for c in r["conflicts"]:
                click.echo(f"  - {c['message']}")  # one sentence each, hex included (--json: fields)
    sys.exit(0 if ok else 1)


@patch.command("diff")
@click.argument("model_a", type=click.Path(path_type=Path))
@click.argument("model_b", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The .hexpatch to write.")
@click.option("--description", default="", help="Why this patch exists.")
@json_option
@handles_errors
def patch_diff(model_a, model_b, out, description, as_json) -> None:
    """The minimal patch that turns MODEL_A into MODEL_B (same layout)."""
    from .surgery.apply import check_no_pending_intent
    from .surgery.diff import diff_models

    with _open(model_a) as a, _open(model_b) as b:
        check_no_pending_intent(a)
        check_no_pending_intent(b)
        bar, progress = _byte_bar("diff")
        with bar:
            result = diff_models(a, b, out, description, progress)
    emit(result, as_json, f"wrote {result['path']}: {result['entries']:,} entries, {result['changed_bytes']:,} bytes changed")


@patch.command("invert")
@click.argument("patch_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The inverse .hexpatch to write.")
@json_option
@handles_errors
def patch_invert(patch_file, out, as_json) -> None:
    """Swap original and new bytes: applying PATCH then its inverse restores the exact bytes."""
    from .surgery.library import atomic_write

    (_, p), = _read_patches((patch_file,))
    inv = p.inverted()
    atomic_write(out, inv.dumps().encode())
    emit({"path": str(out), **inv.summary()}, as_json, f"wrote {out}: {len(inv.entries)} entries")


@patch.command("recover")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--rollback", is_flag=True, help="Restore the old bytes instead of finishing the apply.")
@json_option
@handles_errors
def patch_recover(model, rollback, as_json) -> None:
    """Finish (or with --rollback undo) an interrupted `patch apply --in-place`."""
    from .surgery.apply import recover_in_place

    result = recover_in_place(model, rollback)
    emit(result, as_json, result.get("message") or f"{result['direction']}: rewrote {result['entries']} entries")


# -- investigate --------------------------------------------------------------------------------


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("question", required=False)
@click.option("--tool", help="Run one of the agent's tools by hand instead (no LLM needed).")
@click.option("--args", "tool_args", default="{}", show_default=True, help="The tool's arguments: a JSON object.")
@click.option("--list-tools", "show_tools", is_flag=True, help="List the agent's tools and their arguments.")
@click.option("--continue", "conversation_id", type=int, help="Continue the saved conversation with this id.")
@json_option
@handles_errors
def investigate(model, question, tool, tool_args, show_tools, conversation_id, as_json) -> None:
    """Ask the investigation agent (LLM_MODEL) QUESTION about MODEL, or run its read-only tools by hand."""
    from .agent.console import investigate as run

    sys.exit(run(model, question, tool, tool_args, show_tools, conversation_id, as_json))


# -- demo models --------------------------------------------------------------------------------


@main.command("demo-models")
@click.option("--force", is_flag=True, help="Rebuild even if the models are already there.")
@json_option
@handles_errors
def demo_models(force: bool, as_json: bool) -> None:
    """Build the real demo models (SmolLM2-135M-Instruct BF16 and its Q4_1 GGUF, all-MiniLM-L6-v2) into DATA_DIR/models."""
    try:
        from .live.demo_models import build_demo_models
    except ImportError as e:
        raise SurgeryError(
            f"building demo models needs the live extra (torch, transformers, gguf): {e}. "
            "Run `make run`, or pip install torch==2.13.0 then -e '.[live]'"
        ) from None
    settings = Settings()
    bar = progress_bar(100, "demo models", unit="%")
    last = [0]

    def progress(message: str, fraction: float) -> None:
        bar.set_description(message[:40])
        now = int(fraction * 100)
        bar.update(max(0, now - last[0]))
        last[0] = max(last[0], now)

    with bar:
        built = build_demo_models(settings.models_dir, force=force, progress=progress)
    emit({k: str(v) for k, v in built.items()}, as_json,
         "\n".join(f"{k}: {v}" for k, v in built.items()))


from .signing_cli import keys, patch_show, patch_sign  # noqa: E402 (it uses emit & co. from above)

main.add_command(keys)
patch.add_command(patch_sign)
patch.add_command(patch_show)

from .analysis.diff_cli import diff_command  # noqa: E402

main.add_command(diff_command)

from .transplant_cli import transplant  # noqa: E402

main.add_command(transplant)

from .interp.pack_cli import pack  # noqa: E402

main.add_command(pack)

from .interp.probe_cli import probe  # noqa: E402

main.add_command(probe)

from .interp.steer_cli import lens, steer  # noqa: E402

main.add_command(steer)
main.add_command(lens)

from .analysis.cli import analyze, download  # noqa: E402  (analysis/cli.py imports emit & co. from here)
main.add_command(analyze); main.add_command(download)  # noqa: E702

from .analysis.cluster_cli import cluster  # noqa: E402

main.add_command(cluster)

if __name__ == "__main__":
    main()
