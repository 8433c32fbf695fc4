"""`tensor-surgery cluster MODEL`: the model's tensors (or one matrix's rows, columns or heads) as
2-D/3-D points, printed or written as JSON or CSV."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli import _open, emit, handles_errors, json_option, progress_bar
from ..errors import InvalidRequest
from . import clustering as cl
from .diff_cli import _write_failed, check_writable


def _indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidRequest(f"--indices must be comma-separated integers, got {text[:80]!r}",
                             field="indices") from None


@click.command("cluster")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--tensor", help="Cluster the parts of this 2-D tensor instead of the model's tensors.")
@click.option("--by", type=click.Choice(cl.BY), default="rows", show_default=True,
              help="With --tensor: each point a row, a column or an attention head.")
@click.option("--indices", help="With --tensor: comma-separated rows (or columns) to show, e.g. token ids.")
@click.option("--head-dim", type=click.IntRange(min=1), help="With --by heads: override config.json's head_dim.")
@click.option("--method", type=click.Choice(cl.METHODS), default="pca", show_default=True,
              help="pca (linear, exact) or tsne (neighbourhoods).")
@click.option("--dims", type=click.Choice(["2", "3"]), default="2", show_default=True, help="Coordinates per point.")
@click.option("--match", "pattern", help="Tensors mode: only names matching this regular expression.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the points to FILE.json or FILE.csv.")
@json_option
@handles_errors
def cluster(model, tensor, by, indices, head_dim, method, dims, pattern, out, as_json) -> None:
    """Map MODEL's tensors (features: statistics and spectrum), or with --tensor one matrix's rows,
    columns or attention heads, to 2-D or 3-D by PCA or t-SNE."""
    dims = int(dims)
    if out is not None:
        if out.suffix.lower() not in (".json", ".csv"):
            raise InvalidRequest(f"--out {str(out)!r}: write .json or .csv", field="out", path=str(out))
        check_writable(out)
    if tensor is None and (indices is not None or head_dim is not None):
        raise InvalidRequest("--indices and --head-dim apply to one tensor's parts: give --tensor too",
                             field="tensor")
    if tensor is not None and pattern is not None:
        raise InvalidRequest("--match chooses tensors; with --tensor the points are its parts", field="match")
    with _open(model) as m:
        bar = progress_bar(1, "features" if tensor is None else "reading")
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()
        with bar:
            if tensor is None:
                result = cl.cluster_tensors(m, method=method, dims=dims, match=pattern, progress=progress)
            else:
                result = cl.cluster_matrix(m, tensor, by, method=method, dims=dims, indices=_indices(indices),
                                           config=cl.model_config(m), head_dim=head_dim, progress=progress)
    if out is not None:
        from ..surgery.library import atomic_write

        data = (cl.points_csv(result) if out.suffix.lower() == ".csv"
                else json.dumps(result, indent=1) + "\n").encode()
        try:
            atomic_write(out, data)
        except OSError as e:
            raise _write_failed(out, e) from None
    if as_json:
        emit(result if out is None else {"path": str(out), **{k: v for k, v in result.items() if k != "points"}},
             True)
        return
    what = result["tensor"] or result["model"]
    head = f"{result['count']} points ({result['mode']} of {what}), {method.upper()} to {dims}-D"
    if "explained_variance_ratio" in result and method == "pca":
        head += ", variance explained " + " + ".join(f"{v:.1%}" for v in result["explained_variance_ratio"])
    click.echo(head + (f"; wrote {out}" if out else ""))
    if result.get("note"):
        click.echo(f"  {result['note']}")
    if out is None:
        for p in result["points"][:40]:
            click.echo(f"  {p['label']:<60} " + " ".join(f"{v:>10.4g}" for v in p["coords"]))
        if result["count"] > 40:
            click.echo(f"  ... {result['count'] - 40} more (--out FILE.csv for all)")
    for s in result["skipped"]:
        click.echo(f"  skipped {s['name']}: {s['reason']}", err=True)
