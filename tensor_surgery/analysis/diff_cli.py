"""`tensor-surgery diff BASE MODEL --out FILE`: the per-tensor diff table, and `--extract-lora`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..cli import _open, emit, handles_errors, json_option, progress_bar
from ..errors import InvalidRequest, SurgeryError
from .diff import diff_models
from .diff_table import output_format, table_bytes

def check_writable(out: Path, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that exists or whose folder cannot be written."""
    if out.exists() or out.is_symlink():
        raise InvalidRequest(f"--out {str(out)!r} already exists; choose a new path", field="out", path=str(out))
    parent = out.parent
    while not parent.exists():  # created on write: the nearest existing folder must take it
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidRequest(f"--out {str(out)!r}: {parent} is not a writable folder", field="out", path=str(out))


@click.command("diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The table (.csv, .jsonl, .parquet or .json); with --extract-lora, the adapter folder.")
@click.option("--match", "pattern", help="Only tensors whose name matches this regular expression.")
@click.option("--no-rank", is_flag=True, help="Skip the SVD of changed matrices (no delta rank).")
@click.option("--extract-lora", "lora_rank", type=int, metavar="RANK",
              help="Write the deltas' truncated SVD of this rank as a PEFT LoRA adapter folder at --out.")
@click.option("--ray", "ray_address", envvar="RAY_ADDRESS",
              help="Run the per-tensor work on a Ray cluster: auto, HOST:PORT, ray://HOST:PORT or local:N "
                   "(default RAY_ADDRESS; in process when unset).")
@json_option
@handles_errors
def diff_command(base, model, out, pattern, no_rank, lora_rank, ray_address, as_json) -> None:
    """How far each tensor of MODEL moved from BASE: relative change, cosine, max |B-A|, changed
    fraction and the delta's rank, tensors matched by name (unmatched and reshaped ones listed)."""
    fmt = None if lora_rank is not None else output_format(out)
    check_writable(out)
    with _open(base) as a, _open(model) as b:
        bar = progress_bar(0, "diff")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        with bar:
            result = diff_models(a, b, match=pattern, rank=not no_rank and lora_rank is None,
                                 ray_address=ray_address or None, progress=progress)
        if lora_rank is not None:
            from .lora_extract import extract_lora

            bar = progress_bar(0, "lora")
            with bar:
                try:
                    report = extract_lora(a, b, result["rows"], lora_rank, out, progress=progress)
                except OSError as e:
                    raise _write_failed(out, e) from None
            _report_lora(report, as_json)
            return
    from ..surgery.library import atomic_write

    try:
        atomic_write(out, table_bytes(result, fmt))
    except OSError as e:
        raise _write_failed(out, e) from None
    summary = result["summary"]
    if as_json:
        emit({"path": str(out), "base": result["base"], "model": result["model"], "summary": summary}, True)
        return
    click.echo(f"wrote {out}: {summary['tensors']} tensors, {summary['changed']} changed, "
               f"{summary['unchanged']} unchanged, {summary['only_in_base']} only in BASE, "
               f"{summary['only_in_model']} only in MODEL, {summary['shape_changed']} with another shape")
    for r in result["rows"][:10]:
        if r["status"] != "changed":
            break
        rank = "" if r["delta_rank"] is None else f"  delta rank {r['delta_rank']}/{r['delta_max_rank']}"
        rel = "-" if r["relative_change"] is None else f"{r['relative_change']:.3e}"
        click.echo(f"  {r['name']}: relative change {rel}, {r['changed_fraction']:.1%} of elements{rank}")
    for status, what in (("only_in_base", "only in BASE"), ("only_in_model", "only in MODEL"),
                         ("shape_changed", "another shape")):
        names = [r["name"] for r in result["rows"] if r["status"] == status]
        if names:
            more = f" and {len(names) - 5} more (see {out})" if len(names) > 5 else ""
            click.echo(f"  {what}: {', '.join(names[:5])}{more}")


class WriteFailed(SurgeryError):
    code = "write_failed"
    http_status = 507
    exit_code = 1


def _write_failed(out: Path, e: OSError) -> WriteFailed:
    return WriteFailed(f"cannot write {out}: {e.strerror or e} (nothing was left there)", path=str(out))


def _report_lora(report: dict, as_json: bool) -> None:
    if as_json:
        emit(report, True)
        return
    click.echo(f"wrote {report['path']}: rank-{report['rank']} LoRA on {len(report['captured'])} module(s); "
               f"relative error {report['relative_error_captured']:.3e} of the captured deltas, "
               f"{report['relative_error_overall']:.3e} of the whole fine-tune")
    for c in report["captured"]:
        click.echo(f"  {c['name']}: rank {c['rank']}, discarded energy {c['discarded_energy']:.3e} "
                   f"({c['relative_error']:.2e} of its delta)")
    for n in report["not_captured"]:
        click.echo(f"  not captured: {n['name']}: {n['reason']}", err=True)
