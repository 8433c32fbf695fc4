"""`tensor-surgery probe train MODEL DATA --layers A-B --out PACK`: linear probes per layer as a pack."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import _open, emit, handles_errors, json_option, progress_bar


@click.group("probe")
def probe() -> None:
    """Linear probes on the residual stream (see README, "Probes and the monitor")."""


@probe.command("train")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--layers", default="all", show_default=True, help="Blocks to probe: A-B, 3,5,7 or all.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The pack folder to write.")
@click.option("--read", type=click.Choice(["last", "mean"]), default="last", show_default=True,
              help="Read each text's residual at its last token or averaged over its tokens.")
@click.option("--name", help="Pack name (default: the --out folder's name).")
@click.option("--version", "version", default="1.0.0", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split and the solver.")
@click.option("--test-fraction", type=float, default=0.25, show_default=True, help="Share of texts held out.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@json_option
@handles_errors
def probe_train(model, data, layers, out, read, name, version, seed, test_fraction, device, as_json) -> None:
    """Train a logistic-regression probe per layer of MODEL on DATA (JSONL: text, label)."""
    from ..errors import InvalidRequest
    from ..live.runtime import LiveModel
    from ..surgery.hexpatch import model_checksum
    from . import probes as pr
    from .steering import parse_layers

    if out.exists():
        raise InvalidRequest(f"{out}: already exists; choose another --out", file=str(out), field="out")
    name = name or out.name
    labelled = pr.read_labelled(data)  # bad data is refused before the model loads
    m = _open(model)
    live = LiveModel.load(m, device=device)
    chosen = parse_layers(layers, live.hf_model.config.num_hidden_layers)
    bar = progress_bar(len(labelled.texts), "reading residuals", unit="text")
    try:
        fits, metrics = pr.train(live.hf_model, live.tokenizer, labelled, chosen, read=read, seed=seed,
                                 test_fraction=test_fraction,
                                 progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    folder = pr.write_probe_pack(out, fits, metrics, labelled, name=name, version=version,
                                 model_checksum=model_checksum(m), model_name=m.name,
                                 read=read, seed=seed)
    best = metrics["best_layer"]
    lines = [f"wrote probe pack {name} {version} to {folder}",
             f"  best layer {best}: held-out accuracy {metrics['best_accuracy']:.3f}, F1 {metrics['best_f1']:.3f} "
             f"({metrics['split']['test']} of {len(labelled.texts)} texts held out)",
             "  layer  accuracy  f1"]
    lines += [f"  {L:>5}  {v['accuracy']:.3f}     {v['f1']:.3f}" for L, v in metrics["per_layer"].items()]
    emit({"pack": str(folder), "name": name, "version": version, **metrics}, as_json, "\n".join(lines))
