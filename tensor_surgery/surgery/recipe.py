"""Transplant recipes: the small JSON that says how a transplanted model was made, and remakes it.

```json
{"format": "tensor-surgery-transplant", "version": 1,
 "target": {"path": "/models/A", "checksum": "sha256:<64 hex>"},
 "source": {"path": "/models/B", "checksum": "sha256:<64 hex>"},
 "map": [["model.layers.3.self_attn", "model.layers.10.self_attn"]], "rename": [], "delete": [],
 "duplicate_layers": [10], "remove_layers": [], "dtype_policy": "convert", "resize_vocab": null,
 "max_shard_bytes": null}
```

Checksums are the `.hexpatch` `base_model_checksum` form: they name the weights, not the files, so
a recipe still applies to a re-sharded copy of the same weights, and refuses (naming the model)
weights that changed since. `source` is null when the target was its own source. The recipe holds
no time or host: running it again gives a byte-identical model, recipe included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import Conflict, InvalidRequest
from ..store import Model
from .hexpatch import model_checksum
from .transplant import TransplantSpec

FORMAT = "tensor-surgery-transplant"
VERSION = 1
MAX_RECIPE_BYTES = 1 << 20


class RecipeMismatch(Conflict):
    code = "recipe_checksum_mismatch"
    exit_code = 2


class InvalidRecipe(InvalidRequest):
    code = "invalid_recipe"


def build_recipe(target: Model, source: Model | None, spec: TransplantSpec, progress=None) -> dict:
    """The recipe of a transplant (hashes both models' weights: a full read of each).
    `progress(done, total)` counts the bytes of both."""
    same = source is None or os.path.realpath(source.path) == os.path.realpath(target.path)
    sums = _checksums([target] if same else [target, source], progress)
    return {"format": FORMAT, "version": VERSION, "target": {"path": os.path.realpath(target.path), "checksum": sums[0]},
            "source": None if same else {"path": os.path.realpath(source.path), "checksum": sums[1]},
            **spec.to_json()}


def _checksums(models: list[Model], progress=None) -> list[str]:
    total = sum(m.nbytes for m in models)
    out, base = [], 0
    for m in models:
        tick = (lambda d, _t, base=base: progress(base + d, total)) if progress else None
        out.append(model_checksum(m, tick))
        base += m.nbytes
    return out


def read_recipe(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise InvalidRecipe(f"{p}: cannot read the recipe: {e.strerror}", file=str(p)) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise InvalidRecipe(f"{p}: over {MAX_RECIPE_BYTES:,} bytes: not a transplant recipe", file=str(p))
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRecipe(f"{p}: not valid JSON: {e}", file=str(p)) from None
    return parse_recipe(obj, str(p))


def parse_recipe(obj, where: str = "recipe") -> dict:
    """Validate a recipe object; returns it with `spec` (a TransplantSpec) added."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InvalidRecipe(f"{where}: not a transplant recipe (format must be {FORMAT!r})", file=where, field="format")
    if obj.get("version") != VERSION:
        raise InvalidRecipe(f"{where}: recipe version {obj.get('version')!r} is not supported (only {VERSION})",
                            file=where, field="version")
    for key in ("target", "source"):
        part = obj.get(key)
        if key == "source" and part is None:
            continue
        if not (isinstance(part, dict) and isinstance(part.get("path"), str) and isinstance(part.get("checksum"), str)
                and part["checksum"].startswith("sha256:")):
            raise InvalidRecipe(f"{where}: {key!r} must be {{\"path\": ..., \"checksum\": \"sha256:...\"}}",
                                file=where, field=key)
    try:
        spec = TransplantSpec.from_json(obj, where)
    except InvalidRequest as e:  # the same words, as what it is: a broken recipe
        raise InvalidRecipe(e.message, **{"file": where, **e.context}) from None
    return {**obj, "spec": spec}


def check_recipe_models(recipe: dict, target: Model, source: Model | None, progress=None) -> None:
    """Refuse (naming the model) weights whose checksum is not the recipe's."""
    pairs = [(k, m) for k, m in (("target", target), ("source", source)) if recipe.get(k) is not None and m is not None]
    for (key, model), actual in zip(pairs, _checksums([m for _, m in pairs], progress)):
        part = recipe[key]
        if actual != part["checksum"]:
            raise RecipeMismatch(
                f"the recipe's {key} model {part['path']} has changed: its weights' checksum is {actual}, the "
                f"recipe was made from {part['checksum']}. Re-run with the original weights, or make a new recipe",
                model=part["path"], expected=part["checksum"], actual=actual, field=key)
