"""`tensor-surgery steer ...`: extract steering vectors into packs, export and import control vectors."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli import _open, emit, handles_errors, json_option, progress_bar
from ..errors import InvalidRequest

_model_arg = click.argument("model", type=click.Path(path_type=Path))


def _fresh_out(out: Path) -> Path:
    if out.exists() or out.is_symlink():
        raise InvalidRequest(f"{out} already exists; choose a new path (nothing is overwritten)", file=str(out),
                             field="out")
    if not out.parent.is_dir():
        raise InvalidRequest(f"{out.parent} is not a folder", file=str(out), field="out")
    return out


def _load_model(model_path: Path):
    """(store model, transformers model, tokenizer) in the stored dtype, as the live view runs it."""
    from ..live.runtime import LiveModel
    from ..settings import Settings

    store = _open(model_path)
    live = LiveModel.load(store, Settings().live_device)
    return store, live


def _model_facts(hf) -> tuple[str | None, int, int]:
    cfg = hf.config
    return getattr(cfg, "model_type", None), int(cfg.hidden_size), int(cfg.num_hidden_layers)


@click.group("steer")
def steer() -> None:
    """Steering vectors: extract from contrast pairs, export as llama.cpp control vectors, import."""


@steer.command("extract")
@_model_arg
@click.argument("pairs", type=click.Path(path_type=Path))
@click.option("--layers", default="all", show_default=True, help="Decoder blocks: A-B, a list 3,5,7, or all.")
@click.option("--method", type=click.Choice(["mean", "pca"]), default="mean", show_default=True,
              help="mean: mean of pair differences; pca: repeng's pca_diff (unit length).")
@click.option("--read", "read", type=click.Choice(["last", "mean"]), default="last", show_default=True,
              help="Read each text's last token or the mean over its tokens.")
@click.option("--name", help="Pack name (default: the pairs file's name).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new pack folder.")
@json_option
@handles_errors
def steer_extract(model: Path, pairs: Path, layers: str, method: str, read: str, name: str | None, out: Path,
                  as_json: bool) -> None:
    """One steering vector per layer from contrast PAIRS (JSONL of {positive, negative}) into a pack."""
    from ..surgery.hexpatch import model_checksum
    from .steering import extract, read_pairs

    _fresh_out(out)
    pair_list = read_pairs(pairs)
    store, live = _load_model(model)
    _, hidden, n_layers = _model_facts(live.hf_model)
    from .steering import parse_layers

    chosen = parse_layers(layers, n_layers, "--layers")
    with progress_bar(2 * len(pair_list), "reading activations", unit="text") as bar:
        def tick(done, total):
            bar.n = done
            bar.refresh()

        vec = extract(live.hf_model, live.tokenizer, pair_list, chosen, method, read, name or pairs.stem, tick)
    vec.made_with["data"] = pairs.name
    with progress_bar(store.nbytes, "checksum of the weights") as bar:
        checksum = model_checksum(store, lambda d, t: bar.update(d - bar.n))
    from .steering import save_pack

    save_pack(vec, out, model_checksum=checksum, model_name=Path(store.path).parent.name)
    norms = {L: m["norm"] for L, m in vec.metrics["per_layer"].items()}
    emit({"pack": str(out), "name": vec.name, "layers": vec.layers, "width": hidden, "method": method,
          "read": read, "pairs": len(pair_list), "model_checksum": checksum, "metrics": vec.metrics},
         as_json, f"wrote {out}: {len(vec.layers)} vectors ({method}, read {read}) of width {hidden} from "
                  f"{len(pair_list)} pairs; norms " + ", ".join(f"{L}:{n:.3g}" for L, n in norms.items()))


@steer.command("export")
@click.argument("pack", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["gguf", "safetensors"]), required=True)
@click.option("--model-hint", help="GGUF controlvector.model_hint (default: the pack's model type).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@json_option
@handles_errors
def steer_export(pack: Path, fmt: str, model_hint: str | None, out: Path, as_json: bool) -> None:
    """A steering pack as a llama.cpp control vector (GGUF) or a plain safetensors file."""
    from .packs import load_pack
    from .steering import vector_from_pack

    _fresh_out(out)
    vec = vector_from_pack(load_pack(pack))
    if fmt == "gguf":
        from .gguf_control import write_control_vector

        hint = model_hint or vec.made_with.get("model_type")
        if not hint:
            raise InvalidRequest(f"{pack} does not say which model type it was made for; pass --model-hint (e.g. llama)",
                                 field="model_hint")
        info = write_control_vector(out, vec, hint)
        text = f"wrote {out}: control vector for {hint!r}, layers {info['layers']}"
        if "skipped" in info:
            text += f" (block 0 left out: {info['skipped']['why']})"
    else:
        from safetensors.numpy import save

        from ..surgery.library import atomic_write

        atomic_write(out, save(vec.tensors(), metadata={"kind": "steering", "name": vec.name}))
        info = {"path": str(out), "format": "safetensors", "layers": vec.layers}
        text = f"wrote {out}: {len(vec.layers)} direction.N tensors"
    emit(info, as_json, text)


@steer.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--model", "model", type=click.Path(path_type=Path), required=True,
              help="The model it is for: its type and width are checked, its checksum goes into the pack.")
@click.option("--name", help="Pack name (default: the file's name).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new pack folder.")
@json_option
@handles_errors
def steer_import(file: Path, model: Path, name: str | None, out: Path, as_json: bool) -> None:
    """A llama.cpp control vector (GGUF) into a steering pack, checked against MODEL."""
    import json as _json

    from ..surgery.hexpatch import model_checksum
    from .gguf_control import check_for_model, read_control_vector
    from .steering import save_pack

    _fresh_out(out)
    vec, hint = read_control_vector(file, name or file.stem)
    store = _open(model)
    cfg_path = Path(store.path).parent / "config.json"
    try:
        cfg = _json.loads(cfg_path.read_text())
        model_type, hidden, n_layers = cfg.get("model_type"), int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidRequest(f"{cfg_path} does not give the model's type, hidden_size and num_hidden_layers",
                             file=str(cfg_path)) from None
    check_for_model(vec, hint, model_type, hidden, n_layers, str(file))
    with progress_bar(store.nbytes, "checksum of the weights") as bar:
        checksum = model_checksum(store, lambda d, t: bar.update(d - bar.n))
    save_pack(vec, out, model_checksum=checksum, model_name=Path(store.path).parent.name)
    emit({"pack": str(out), "name": vec.name, "layers": vec.layers, "width": vec.width, "model_hint": hint},
         as_json, f"wrote {out}: {len(vec.layers)} directions of width {vec.width} (made for {hint!r})")


@click.group("lens")
def lens() -> None:
    """Logit lens and tuned lens: what each decoder block's output already predicts."""


@lens.command("show")
@_model_arg
@click.argument("prompt")
@click.option("--pack", type=click.Path(path_type=Path), help="A lens pack (kind lens): the tuned lens instead of the logit lens.")
@json_option
@handles_errors
def lens_show(model: Path, prompt: str, pack: Path | None, as_json: bool) -> None:
    """The layers x positions table of PROMPT: each block's top token and its probability."""
    from .lens import MAX_LENS_TOKENS, TunedLens, lens_table

    if not prompt.strip():
        raise InvalidRequest("the prompt is empty", field="prompt")
    store, live = _load_model(model)
    tuned = None
    if pack is not None:
        from .packs import load_pack

        _, width, n_layers = _model_facts(live.hf_model)
        tuned = TunedLens.from_pack(load_pack(pack), width, n_layers)
    ids, _ = live.encode(prompt, MAX_LENS_TOKENS)
    table = lens_table(live.hf_model, live.tokenizer, ids, tuned)
    lines = [f"{table['kind']} lens of {Path(store.path).parent.name}: {len(table['tokens'])} tokens x "
             f"{len(table['layers'])} blocks (top token, probability, at the last position)"]
    for row in table["layers"]:
        lines.append(f"  block {row['layer']:>3}: {row['token'][-1]!r:<16} p={row['prob'][-1]:.3f} "
                     f"entropy={row['entropy'][-1]:.2f} KL(final||lens)={row['kl_to_final'][-1]:.3f}")
    emit(table, as_json, "\n".join(lines))


@lens.command("train")
@_model_arg
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new lens pack folder.")
@click.option("--steps", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Optimizer steps, one training sequence each.")
@click.option("--seq-len", type=click.IntRange(2, 4096), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--eval-sequences", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Held-out sequences for the per-block KL and perplexity.")
@click.option("--corpus", type=click.Path(path_type=Path), help="Folder with valid.txt (training) and test.txt "
              "(held out); default: the TEXT_CORPUS setting (wikitext-2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", help="Pack name (default: the output folder's name).")
@json_option
@handles_errors
def lens_train(model: Path, out: Path, steps: int, seq_len: int, lr: float, eval_sequences: int,
               corpus: Path | None, seed: int, name: str | None, as_json: bool) -> None:
    """Train a tuned lens (one affine translator per block, starting at the identity, by KL to the
    final distribution) and save it as a lens pack."""
    from ..surgery.hexpatch import model_checksum
    from .lens import save_lens, train_tuned_lens

    _fresh_out(out)
    store, live = _load_model(model)
    with progress_bar(steps, "training tuned lens", unit="step") as bar:
        def tick(done, total):
            bar.n = done
            bar.refresh()

        tuned, metrics = train_tuned_lens(live.hf_model, live.tokenizer, steps=steps, seq_len=seq_len, lr=lr,
                                          eval_chunks=eval_sequences, seed=seed, progress=tick,
                                          data_folder=corpus)
    with progress_bar(store.nbytes, "checksum of the weights") as bar:
        checksum = model_checksum(store, lambda d, t: bar.update(d - bar.n))
    save_lens(tuned, metrics, out, name=name or out.name, model_checksum=checksum,
              model_name=Path(store.path).parent.name, model_type=_model_facts(live.hf_model)[0])
    lk, tk = metrics["logit_kl"], metrics["tuned_kl"]
    emit({"pack": str(out), "metrics": metrics, "model_checksum": checksum}, as_json,
         f"wrote {out}: {len(tk)} translators after {steps} steps; mean held-out KL to the final "
         f"distribution {sum(lk) / len(lk):.3f} (logit lens) -> {sum(tk) / len(tk):.3f} (tuned lens)")
