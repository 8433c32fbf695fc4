"""The one seam where interpretability touches the running model: forward hooks on decoder blocks.

Two kinds of things hang on it:

- an **intervention** changes the residual stream: for each of its layers L, a function
  `(L, hidden) -> hidden` replaces the output of decoder block L (what transformers reports as
  `output_hidden_states[L + 1]`, before the final norm for the last block). Steering vectors are
  interventions; each can be switched on and off like a staged edit or an adapter.
- an **observer** reads the output of chosen blocks during the live forward pass (after the
  interventions) and turns them into a small JSON-able result that rides along in the live
  `logits` message under `observers: {name: result}` (a probe monitor, a lens).

`Hooks` is the registry (any thread may change it; the live worker takes a snapshot per pass), and
`attach` registers the hooks for one forward pass and removes them after, so a pass without
interventions or observers runs the bare model. Like repeng's ControlModel, the hook is the only
place the model is touched: nothing here edits a weight.

torch is imported lazily (by the caller's model), like the rest of live/.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import InvalidRequest, SurgeryError

class InterventionNotFound(SurgeryError):
    code = "intervention_not_found"
    http_status = 404


HiddenFn = Callable[[int, "object"], "object"]  # (layer, hidden [batch, tokens, width]) -> hidden


@dataclass(frozen=True)
class Intervention:
    """Replaces block L's output by `fn(L, output)` for every L in `layers` while enabled."""

    name: str
    layers: tuple[int, ...]
    fn: HiddenFn
    enabled: bool = True
    kind: str = "intervention"  # what made it (steering, ...), for listings
    info: dict = field(default_factory=dict)  # JSON-able facts for the pages (coefficient, source)
    payload: object = field(default=None, compare=False)  # what it was built from (vectors), not published

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "layers": list(self.layers), "enabled": self.enabled, **self.info}


@dataclass(frozen=True)
class Observer:
    """Reads the outputs of `layers` (None: every block) during a live pass.

    `finish(hidden, ids)` gets {layer: block output [1, tokens, width]} and the input ids, and
    returns the small result published with the logits; it runs on the model's thread, so it may
    keep tensors on the device until its own final reduction."""

    name: str
    layers: tuple[int, ...] | None
    finish: Callable[[dict, object], object]


class Hooks:
    """Interventions and observers of one live model; thread-safe, snapshots are immutable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interventions: dict[str, Intervention] = {}
        self._observers: dict[str, Observer] = {}

    # -- interventions ----------------------------------------------------------------------------

    def put_intervention(self, iv: Intervention) -> None:
        """Add or replace (same name) an intervention."""
        with self._lock:
            self._interventions[iv.name] = iv

    def remove_intervention(self, name: str) -> None:
        with self._lock:
            if self._interventions.pop(name, None) is None:
                raise self._unknown(name)

    def set_enabled(self, name: str, enabled: bool) -> Intervention:
        with self._lock:
            iv = self._interventions.get(name)
            if iv is None:
                raise self._unknown(name)
            iv = self._interventions[name] = _replace(iv, enabled=enabled)
            return iv

    def get(self, name: str) -> Intervention:
        with self._lock:
            iv = self._interventions.get(name)
        if iv is None:
            raise self._unknown(name)
        return iv

    def interventions(self) -> list[Intervention]:
        with self._lock:
            return list(self._interventions.values())

    def active(self) -> list[Intervention]:
        return [iv for iv in self.interventions() if iv.enabled]

    def _unknown(self, name: str) -> SurgeryError:
        return InterventionNotFound(f"no intervention named {name!r} on the live model (there are: "
                                    f"{', '.join(sorted(self._interventions)) or 'none'})", name=name)

    # -- observers --------------------------------------------------------------------------------

    def put_observer(self, ob: Observer) -> None:
        with self._lock:
            self._observers[ob.name] = ob

    def remove_observer(self, name: str) -> None:
        with self._lock:
            self._observers.pop(name, None)

    def observers(self) -> list[Observer]:
        with self._lock:
            return list(self._observers.values())

    def clear(self) -> None:
        with self._lock:
            self._interventions.clear()
            self._observers.clear()


def decoder_layers(hf_model) -> list:
    """The decoder blocks of a transformers causal LM (or a PEFT wrapper around one), in order."""
    import torch

    n = getattr(getattr(hf_model, "config", None), "num_hidden_layers", None)
    best = None
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n:
            # the first such list is the outermost (model.layers), not a list inside a block
            if best is None or name.count(".") < best[0].count("."):
                best = (name, module)
    if best is None:
        raise SurgeryError(f"cannot find the {n} decoder blocks of this {type(hf_model).__name__}",
                           field="model")
    return list(best[1])


def _replace(iv: Intervention, **kw) -> Intervention:
    from dataclasses import replace

    return replace(iv, **kw)


@contextlib.contextmanager
def attach(hf_model, interventions: list[Intervention] = (), observers: list[Observer] = ()) -> Iterator[dict]:
    """Hooks for one forward pass (or one generation); yields {layer: captured block output}.

    Per layer, the interventions run in the order given, then observers read the result. Captured
    tensors are kept only for the layers some observer asked for (references, no copies)."""
    blocks = decoder_layers(hf_model) if (interventions or observers) else []
    n = len(blocks)
    per_layer: dict[int, list[HiddenFn]] = {}
    for iv in interventions:
        for L in iv.layers:
            if not 0 <= L < n:
                raise InvalidRequest(f"intervention {iv.name!r} names layer {L}; the model has blocks 0-{n - 1}",
                                     field="layers")
            per_layer.setdefault(L, []).append(iv.fn)
    watch: set[int] = set()
    for ob in observers:
        watch |= set(range(n)) if ob.layers is None else {L for L in ob.layers if 0 <= L < n}
    captured: dict[int, object] = {}
    handles = []

    def make(L: int, fns: list[HiddenFn], keep: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            for fn in fns:
                hidden = fn(L, hidden)
            if keep:
                captured[L] = hidden
            if not fns:
                return None  # observation only: the output is left as it is
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    try:
        for L in sorted(set(per_layer) | watch):
            handles.append(blocks[L].register_forward_hook(make(L, per_layer.get(L, []), L in watch)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def observe(observers: list[Observer], captured: dict, ids) -> dict:
    """Each observer's result from one pass's captured outputs; a failing observer reports its error."""
    out = {}
    for ob in observers:
        layers = sorted(captured) if ob.layers is None else [L for L in ob.layers if L in captured]
        try:
            out[ob.name] = ob.finish({L: captured[L] for L in layers}, ids)
        except SurgeryError as e:
            out[ob.name] = {"error": e.message}
    return out
