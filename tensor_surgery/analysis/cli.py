"""`tensor-surgery analyze` and `tensor-surgery download` (registered in tensor_surgery/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..cli import emit, handles_errors, json_option, progress_bar


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The table: .csv, .jsonl or .parquet (the extension picks the format). "
                   "run_meta.json is written beside it.")
@click.option("--rank", "rank", type=click.Choice(["exact", "randomized", "none"]), default="exact",
              show_default=True, help="Numerical rank (s > 1e-6 * s.max()): exact, randomized "
                                      "(top --rank-k singular values, with an error bound) or none.")
@click.option("--rank-k", type=int, default=128, show_default=True,
              help="Singular values a randomized rank computes.")
@click.option("--sparsity-eps", type=float, default=1e-8, show_default=True,
              help="|x| <= eps counts as zero for the sparsity column.")
@click.option("--match", "pattern", help="Only tensors whose name matches this regular expression.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomized rank.")
@click.option("--ray", "ray", metavar="auto|ADDRESS|env|local:N",
              help="Run the per-tensor work as Ray tasks: auto (RAY_ADDRESS or the cluster `ray start` "
                   "made here), HOST:PORT or ray://HOST:PORT, env (RAY_ADDRESS), or local:N (a private "
                   "local Ray with N CPUs). Every node must see the model paths.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@json_option
@handles_errors
def analyze(models: tuple[Path, ...], out: Path, rank: str, rank_k: int, sparsity_eps: float,
            pattern: str | None, seed: int, ray: str | None, overwrite: bool, as_json: bool) -> None:
    """One row per parameter of MODELS (one or more) with shape, rank and statistics.

    Interrupted runs resume: run the same command again and the tensors already analysed
    are not computed again.
    """
    from .parallel import default_ray_address
    from .run import analyze_to_file
    from .table import Options

    options = Options(rank=rank, sparsity_eps=sparsity_eps, rank_k=rank_k, seed=seed)
    address = default_ray_address(ray)
    bar = progress_bar(0, "analyze")
    last = [0]

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - last[0])
        last[0] = done

    with bar:
        result = analyze_to_file([str(m) for m in models], out, options, pattern=pattern, ray_address=address,
                                 command=["tensor-surgery", *sys.argv[1:]], progress=progress,
                                 overwrite=overwrite)
    result.pop("table")
    text = (f"{result['rows']} rows -> {result['out']} ({result['format']}); {result['run_meta']}"
            + (f"; {result['resumed_tensors']} tensors taken from the interrupted run" if result["resumed_tensors"] else ""))
    emit(result, as_json, text)
    if not as_json:
        for s in result["skipped"]:
            click.echo(f"skipped {s['param_name']} {tuple(s['shape'])} {s['dtype']}: {s['reason']}", err=True)


@click.command()
@click.argument("model_id")
@click.option("--revision", help="A branch, tag or commit (default main).")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="The Hugging Face cache to use (default HF_HUB_CACHE / HF_HOME's).")
@json_option
@handles_errors
def download(model_id: str, revision: str | None, cache_dir: Path | None, as_json: bool) -> None:
    """Fetch MODEL_ID's files into the Hugging Face cache, verify each file's sha256 against the
    hub's metadata, and print the local folder (which analyze and serve accept)."""
    from .download import download_model

    bar = progress_bar(0, "download")
    last = [0]

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - last[0])
        last[0] = done

    with bar:
        result = download_model(model_id, revision=revision, cache_dir=cache_dir, progress=progress)
    emit(result, as_json, result["path"])
