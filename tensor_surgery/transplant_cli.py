"""`tensor-surgery transplant`: tensors and modules from one model into a new copy of another."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cli import _byte_bar, _open, _protected_folders, emit, handles_errors, json_option
from .errors import InvalidRequest


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        frm, sep, to = v.partition("=")
        if not sep or not frm.strip() or not to.strip():
            raise InvalidRequest(f"{option} {v!r} is not FROM=TO (a tensor name, a name prefix or 'layer N' on "
                                 "each side)", field=option.lstrip("-"))
        out.append((frm.strip(), to.strip()))
    return out


def _print_plan(plan: dict) -> None:
    width = max([len(e["target"]) for e in plan["entries"]] + [6])
    for e in plan["entries"]:
        src = e["source"] if e["source_model"] == "source" else f"(target) {e['source']}"
        click.echo(f"{e['verdict']:<9} {e['target']:<{width}}  <- {src}  {e['source_dtype']} {e['source_shape']}"
                   f" -> {e['dtype']} {e['shape']}  [{e['action']}]" + (f"\n          {e['reason']}" if e["reason"] else ""))
    for name in plan["deleted"]:
        click.echo(f"{'delete':<9} {name}")
    for p in plan["problems"]:
        click.echo(f"{p['verdict']}: {p['reason']}")
    for k, (old, new) in plan["config_changes"].items():
        click.echo(f"config.json: {k}: {old} -> {new}")
    for n in plan["notes"]:
        click.echo(f"note: {n}")
    for f in plan["fixes"]:
        click.echo(f"fix offered: {f}")
    click.echo(f"{len(plan['entries'])} tensor(s) written from the plan, {plan['unchanged_tensors']} copied unchanged, "
               f"{plan['bytes_to_write']:,} bytes in all; verdict: {plan['verdict']}")
    if not plan["will_load"]:
        click.echo("WARNING: the result is predicted NOT to load or run: it will fail during inference "
                   "(see the will_fail lines). The transplant can still be written; the architecture is yours "
                   "to fix.", err=True)


@click.command("transplant")
@click.argument("target", required=False, type=click.Path(path_type=Path), metavar="TARGET|RECIPE")
@click.option("--out", type=click.Path(path_type=Path), help="The new model: a folder (or a .safetensors file).")
@click.option("--source", type=click.Path(path_type=Path), help="Where tensors come from (default: TARGET itself).")
@click.option("--map", "maps", multiple=True, metavar="FROM=TO",
              help="FROM (tensor, name prefix or 'layer N' of SOURCE) replaces or adds TO in TARGET. Repeatable.")
@click.option("--duplicate-layer", "dup", multiple=True, type=click.IntRange(min=0), metavar="N",
              help="Write layer N again right after itself, renumbering later layers. Repeatable.")
@click.option("--remove-layer", "rem", multiple=True, type=click.IntRange(min=0), metavar="N",
              help="Leave layer N out, renumbering later layers. Repeatable.")
@click.option("--rename", "renames", multiple=True, metavar="FROM=TO", help="Rename a tensor or prefix of the result.")
@click.option("--delete", "deletes", multiple=True, metavar="NAME", help="Leave a tensor (or prefix) out.")
@click.option("--dtype", "dtype_policy", type=click.Choice(["convert", "refuse", "keep"]), default="convert",
              show_default=True, help="A source tensor of another dtype: convert it to the target's (round to "
              "nearest even), refuse the transplant, or keep the source's dtype.")
@click.option("--resize-vocab", type=click.IntRange(min=1), help="Resize embedding and lm_head rows to this vocabulary.")
@click.option("--max-shard-size", help="Shard the output at this size per file (e.g. 2GB; default: like TARGET).")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path), help="Run this recipe instead of the options.")
@click.option("--recipe-out", type=click.Path(path_type=Path), help="Also save the recipe here (it is always saved "
              "beside the output).")
@click.option("--dry-run", is_flag=True, help="Print the plan and its verdicts; write nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is a previous export or transplant.")
@json_option
@handles_errors
def transplant(target, out, source, maps, dup, rem, renames, deletes, dtype_policy, resize_vocab, max_shard_size,
               recipe_file, recipe_out, dry_run, overwrite, as_json) -> None:
    """Transplant tensors or modules of SOURCE into a new copy of TARGET (never in place).

    Same shapes or not: the new model gets a new header and offsets. Before anything is written,
    every written tensor is checked against the target's architecture (verdict ok / warning /
    will_fail, with the reason); --dry-run stops there. A recipe is saved beside the output;
    `transplant --recipe FILE --out OUT` makes the same model again (byte-identical), refusing
    models whose weights changed since.
    """
    from .surgery.recipe import build_recipe, check_recipe_models, read_recipe
    from .surgery.transplant import TransplantSpec, plan_transplant, recipe_bytes, write_transplant
    from .surgery.writer import parse_size

    recipe = None
    if recipe_file is None and target is not None and target.suffix == ".json" and not target.name.endswith(
            ".index.json") and target.is_file():
        recipe_file, target = target, None  # `transplant RECIPE --out OUT`
    if recipe_file is not None:
        if target or source or maps or dup or rem or renames or deletes or resize_vocab or max_shard_size:
            raise InvalidRequest("--recipe says everything: give only --out (and --dry-run, --overwrite)", field="recipe")
        recipe = read_recipe(recipe_file)
        spec = recipe["spec"]
        target = Path(recipe["target"]["path"])
        source = Path(recipe["source"]["path"]) if recipe["source"] else None
    else:
        if target is None:
            raise InvalidRequest("give TARGET (the model to transplant into) or --recipe FILE", field="target")
        spec = TransplantSpec(_pairs(maps, "--map"), _pairs(renames, "--rename"), list(deletes), list(dup), list(rem),
                              dtype_policy, resize_vocab, parse_size(max_shard_size) if max_shard_size else None)
    if out is None and not dry_run:
        raise InvalidRequest("give --out (a new folder or .safetensors file), or --dry-run", field="out")

    tgt = _open(target)
    src = _open(source) if source is not None else None
    try:
        plan = plan_transplant(tgt, src, spec)
        summary = plan.to_json()
        if dry_run:
            if out is not None:
                from .surgery.transplant import check_output

                check_output(plan, out, overwrite, _protected_folders())
            emit(summary, as_json)
            if not as_json:
                _print_plan(summary)
            return
        from .surgery.transplant import check_output

        check_output(plan, out, overwrite, _protected_folders())  # before hashing: a bad OUT fails at once
        bar, progress = _byte_bar("checksums")
        with bar:
            if recipe is not None:
                check_recipe_models(recipe, tgt, src, progress)
            made = build_recipe(tgt, src, spec, progress)
        bar, progress = _byte_bar("transplant")
        with bar:
            result = write_transplant(plan, out, recipe=made, overwrite=overwrite, progress=progress,
                                      protected=_protected_folders())
        if recipe_out is not None:
            from .surgery.library import atomic_write

            atomic_write(Path(recipe_out), recipe_bytes(made))
            result["recipe_out"] = str(recipe_out)
    finally:
        tgt.close()
        if src is not None:
            src.close()
    result["plan"] = summary
    if as_json:
        emit(result, True)
    else:
        if not summary["will_load"]:
            _print_plan(summary)
        click.echo(f"wrote {result['path']} ({', '.join(result['files'])}): {result['tensors']} tensors, "
                   f"{result['changed_tensors']} from the plan, {result['bytes']:,} bytes in {result['seconds']} s; "
                   f"recipe {result['recipe']}")
    sys.exit(0)
