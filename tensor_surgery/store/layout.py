"""Canvas layout inferred from tensor names alone: layer, type group, role key and a grid cell.

The canvas is a layer-major, type-minor grid in abstract units (one thumbnail = one cell; the UI
scales). Each layer is a horizontal band; bands run top to bottom: embeddings, layer 0, 1, ..., then
final norm / head, with one empty row between bands. Inside a layer band the columns are the roles of
its stack (ordered by TYPE_GROUPS, then role), so a role sits in the same column in every layer. MoE
experts go in a sub-grid under their layer's row: experts left to right (wrapped at EXPERT_WRAP), each
expert's matrices stacked in one column. Models with several stacks (encoder/decoder, vision/text) get
one run of bands per stack, encoder before decoder, and `block` names the stack.

Speed: a 671B MoE has ~90k tensors, but only a few dozen distinct *templates* (the name with every
integer path component replaced by "*"). Names are grouped by template with regex passes over all the
names joined (never a regex call per name), the rule matching runs once per template, and the per-name
work left is list slicing and map/zip in C.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import repeat

__all__ = ["TYPE_GROUPS", "CanvasMeta", "infer_layout"]

TYPE_GROUPS: tuple[str, ...] = (
    "embedding", "attention_qkv", "attention_out", "mlp_gateup", "mlp_down",
    "norm", "output_head", "moe_router", "other",
)
EXPERT_WRAP = 32  # experts per sub-grid row: keeps a 256-expert layer about as wide as a dense one


@dataclass(frozen=True, slots=True)
class CanvasMeta:
    layer_index: int  # -1 before the first layer; the stack's layer count after the last
    type_group: str  # one of TYPE_GROUPS
    specific_type_key: str  # the name with the layer (and expert) index replaced by "*"
    canvas_x: float
    canvas_y: float
    expert_index: int | None = None
    block: str | None = None  # which stack ("encoder", "decoder", "vision", ...) when there are several

    def to_dict(self) -> dict:
        return {"layer_index": self.layer_index, "type_group": self.type_group,
                "specific_type_key": self.specific_type_key, "canvas_x": self.canvas_x,
                "canvas_y": self.canvas_y, "expert_index": self.expert_index, "block": self.block}


# An integer path component, matched in "." + name + "\n". "0" or no leading zero, so that rewriting
# it as "*" and back is exact: two names never share template, layer and expert, hence never a cell.
_NUM = re.compile(r"\.(0|[1-9][0-9]*)(?=[.\n])")
_LAYER_KW = frozenset(("layers", "layer", "h", "block", "blocks", "blk", "resblocks", "transformer_blocks",
                       "stages"))
_EXPERT_KW = frozenset(("experts", "expert", "local_experts"))
# last name components that are a module's tensors, not a module; the rank orders them side by side
_PARAMS = {"weight": 0, "bias": 1, "weight_scale_inv": 2, "weight_scale": 2, "input_scale": 2, "scales": 2,
           "biases": 2, "qweight": 2, "qzeros": 2, "g_idx": 2, "absmax": 2}


def _c(alternatives: str) -> re.Pattern[str]:
    """A regex matching one whole dotted path component out of `alternatives`."""
    return re.compile(r"(?:^|\.)(?:" + alternatives + r")(?:\.|$)")


_ATTN_CTX = _c(r"\w*att\w*")  # attn, self_attn, attention, SelfAttention, EncDecAttention, encoder_attn
_MLP_CTX = _c(r"\w*mlp\w*|ffn|feed_forward|densereludense|experts?|shared_experts?|\w*moe\w*")

# (group, pattern, required context): first match wins, tested on the lower-cased template after
# the layer index (the whole template for tensors outside layers). Order matters: buffers and
# routers before norms, norms before heads/embeddings (embeddings.LayerNorm is a norm), names that
# are unambiguous anywhere before the short ones (q, o, dense, wo) that need an attention/MLP context.
_RULES: tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None], ...] = (
    # rotary tables, position-id buffers, GPT-2/NeoX causal-mask buffers saved as `attn.bias`
    ("other", re.compile(r"(?:^|\.)(?:inv_freq|\w*rotary\w*|cos_cached|sin_cached|masked_bias|position_ids)"
                         r"(?:\.|$)|(?:^|\.)(?:attn|attention)\.bias$"), None),
    ("moe_router", _c(r"gate|router|gating|\w*gate_inp\w*|shared_expert_gate|e_score_correction_bias"), None),
    ("norm", _c(r"\w*norm\w*|ln(?:_\w+|\d*)"), None),
    ("output_head", re.compile(r"(?:^|\.)(?:lm_head|embed_out|head|score|classifier|qa_outputs|pooler|cls"
                               r"|final_logits_bias|output_layer)(?:\.|$)|^output\.(?:weight|bias)$"), None),
    ("embedding", _c(r"\w*embed\w*|wte|wpe|shared|relative_attention_bias|token_embd|cls_token|mask_token"),
     None),
    ("attention_qkv", _c(r"\w*?(?:q|k|v|qkv|kv)_(?:a_|b_)?proj\w*|query_key_value|c_attn|wqkv|in_proj\w*"
                         r"|attn_(?:q|k|v|qkv)|to_[qkv]|[qkv]_lin"), None),
    ("attention_out", _c(r"o_proj|out_proj|attn_out(?:put)?|out_lin"), None),
    ("mlp_gateup", re.compile(r"(?:^|\.)(?:gate_proj|up_proj|gate_up_proj\w*|w1|w3|wi|wi_[01]|fc1|c_fc"
                              r"|dense_h_to_4h|fc_in|ffn_(?:gate|up)\w*|lin1|w12)(?:\.|$)"
                              r"|(?:^|\.)intermediate\.dense(?:\.|$)"), None),
    ("mlp_down", _c(r"down_proj\w*|w2|fc2|dense_4h_to_h|fc_out|ffn_down\w*|lin2"), None),
    ("attention_qkv", _c(r"[qkv]|w[qkv]|qkv|kv|query|key|value"), _ATTN_CTX),
    ("attention_out", _c(r"o|wo|dense|proj|out|c_proj|output|to_out"), _ATTN_CTX),
    ("mlp_down", re.compile(r"(?:^|\.)output\.dense(?:\.|$)"), None),  # BERT: layer.N.output.dense
    ("mlp_gateup", _c(r"up|fc|in|gate_up"), _MLP_CTX),
    ("mlp_down", _c(r"wo|c_proj|dense|proj|out|down"), _MLP_CTX),
)


def _type_group(role: str) -> str:
    for group, pattern, context in _RULES:
        if pattern.search(role) and (context is None or context.search(role)):
            return group
    return "other"


_SLOT_SETTERS = tuple(getattr(CanvasMeta, f).__set__ for f in CanvasMeta.__slots__)


def _bulk_metas(n: int, *columns: Iterable) -> list[CanvasMeta]:
    """n CanvasMeta from one iterable per field, same as map(CanvasMeta, *columns) but about twice as
    fast: the frozen __init__ is a Python call per object, while filling the slots column by column
    with map() runs in C. (Half the time of a 90k-tensor layout went into __init__.)"""
    metas = list(map(object.__new__, repeat(CanvasMeta, n)))
    for set_field, column in zip(_SLOT_SETTERS, columns, strict=True):
        deque(map(set_field, metas, column), maxlen=0)
    return metas


def _by_template(names: list[str]) -> dict[str, list[str]]:
    """Names grouped by template, with one regex pass over all the names joined: a regex call per
    name would cost more than all the rest of the layout. Odd names (holding "*" or a newline) are
    taken literally, marked by a leading NUL."""
    big = "." + "\n.".join(names) + "\n"
    if big.count("\n") == len(names) and "*" not in big:
        templates = _NUM.sub(".*", big)[1:-1].split("\n.")
    else:
        templates = ["\0" + n if "\n" in n or "*" in n else _NUM.sub(".*", f".{n}\n")[1:-1] for n in names]
    groups: dict[str, list[str]] = {}
    for name, tpl in zip(names, templates):
        group = groups.get(tpl)
        if group is None:
            groups[tpl] = [name]
        else:
            group.append(name)
    return groups


class _Tpl:
    """What a template says, worked out once: group, which "*" is the layer / expert, which stack."""

    __slots__ = ("before", "expert_star", "group", "layer_star", "n_stars", "parent", "plain", "stack")

    def __init__(self, tpl: str) -> None:
        literal = tpl.startswith("\0")  # see _by_template
        comps = tpl.removeprefix("\0").split(".")
        stars = [] if literal else [i for i, c in enumerate(comps) if c == "*"]
        self.n_stars = len(stars)
        low = [c.lower() for c in comps]
        # the layer is the first number after a stack keyword (layers.N, h.N, block.N, ...), else
        # the first number that is not an expert number (Sequential stacks, unknown models)
        cand = [s for s, i in enumerate(stars) if i and low[i - 1] in _LAYER_KW]
        cand = cand or [s for s, i in enumerate(stars) if not i or low[i - 1] not in _EXPERT_KW]
        self.layer_star = cand[0] if cand else -1
        at = stars[self.layer_star] if cand else -1
        self.expert_star = next((s for s, i in enumerate(stars) if i > at and low[i - 1] in _EXPERT_KW), -1)
        self.plain = len(stars) == (self.layer_star >= 0) + (self.expert_star >= 0)
        if at >= 0:
            self.stack: str | _Stack = ".".join(comps[:at])  # e.g. "model.layers", "encoder.block", "h"
            self.parent = tuple(comps[: at - 1] if at and low[at - 1] in _LAYER_KW else comps[:at])
        else:
            self.stack, self.parent = None, tuple(comps)
        role = ".".join(low[at + 1:])
        self.group = _type_group(role)
        # outside any layer: embeddings (and their norms / position-id buffers) open the canvas,
        # everything else (final norm, heads, unknowns) closes it
        self.before = self.group == "embedding" or (self.group != "output_head" and "embed" in role)


def _key(tpl: str, nums: list[str], t: _Tpl) -> str:
    """The specific type key of a name whose template has numbers other than layer/expert (those stay)."""
    parts = tpl.split("*")
    out = [parts[0]]
    for s, num in enumerate(nums):
        out.append("*" if s in (t.layer_star, t.expert_star) else num)
        out.append(parts[s + 1])
    return "".join(out)


_ROLE_RANK = {"q": 0, "query": 0, "wq": 0, "q_a": 0, "q_b": 0, "k": 1, "key": 1, "wk": 1, "kv": 1,
              "kv_a": 1, "kv_b": 1, "v": 2, "value": 2, "wv": 2, "gate": 0, "w1": 0, "wi_0": 0, "up": 1,
              "w3": 1, "wi_1": 1}
_PROJ_TAIL = re.compile(r"_proj.*$")
_CROSS = re.compile(r"encoder_attn|encdec|cross", re.IGNORECASE)


def _sort_key(key: str, group: str) -> tuple:
    """Column order: type group, then module path, q/k/v and gate/up in their usual order, and a
    module's weight, bias and scales side by side."""
    comps = key.split(".")
    param = _PARAMS.get(comps[-1], -1)
    n = len(comps) - (param >= 0)  # components naming the module
    leaf = comps[n - 1].lower() if n else ""
    rank = _ROLE_RANK.get(_PROJ_TAIL.sub("", leaf.removeprefix("attn_").removeprefix("ffn_")), 5)
    context = ".".join(comps[: n - 1])
    cross = _CROSS.search(context) is not None  # cross-attention after self-attention (BART)
    return (TYPE_GROUPS.index(group), cross, context, rank, leaf, param, key)


_RANK_OF_LABEL = {"vision": 0, "audio": 1, "encoder": 2, "decoder": 4}


def _label(stack: str) -> str:
    s = stack.lower()
    for needle, label in (("vision", "vision"), ("visual", "vision"), ("image", "vision"), ("audio", "audio"),
                          ("speech", "audio"), ("encoder", "encoder"), ("decoder", "decoder"),
                          ("language", "text"), ("text", "text")):
        if needle in s:
            return label
    return stack or "main"


_GENERIC = frozenset(("model", "transformer", "base_model", ""))


class _Stack:
    """One run of numbered layers (model.layers, encoder.block, ...): its layers, columns, experts."""

    __slots__ = ("block", "col_of", "cols", "id", "label", "layer_y", "layers", "n_layers", "n_roles", "parent",
                 "role_of", "roles", "wrap")

    def __init__(self, stack_id: str, parent: tuple[str, ...]) -> None:
        self.id, self.parent, self.label = stack_id, parent, _label(stack_id)
        self.layers: dict[int, int] = {}  # layer -> highest expert index in it (-1: no experts)
        self.cols: dict[str, str] = {}  # key -> group, for the layer row
        self.roles: dict[str, str] = {}  # key -> group, for the expert sub-grid
        self.layer_y: dict[int, int] = {}

    def finish(self, multi: bool, ambiguous_label: bool) -> None:
        self.block = (self.id if ambiguous_label else self.label) if multi else None
        cols = sorted(self.cols, key=lambda k: _sort_key(k, self.cols[k]))
        roles = sorted(self.roles, key=lambda k: _sort_key(k, self.roles[k]))
        self.col_of = {k: float(i) for i, k in enumerate(cols)}
        self.role_of = {k: i for i, k in enumerate(roles)}
        self.n_roles = len(self.role_of)
        self.wrap = max(1, min(EXPERT_WRAP, max(self.layers.values()) + 1))
        self.n_layers = max(self.layers) + 1


def _home_stack(parent: tuple[str, ...], stacks: list[_Stack]) -> _Stack | None:
    """The stack a tensor outside the layers belongs to (encoder.final_layer_norm -> encoder):
    the one whose path shares the longest non-generic prefix with it; None if none or a tie."""
    best, best_len, tie = None, 0, False
    for stack in stacks:
        n = 0
        for a, b in zip(parent, stack.parent):
            if a != b:
                break
            n += 1
        if all(c in _GENERIC for c in parent[:n]):  # sharing only "model." says nothing
            n = 0
        if n > best_len:
            best, best_len, tie = stack, n, False
        elif n == best_len and n:
            tie = True
    return None if tie else best


def infer_layout(
    names: Sequence[str], shapes: Sequence[tuple[int, ...]] | None = None
) -> dict[str, CanvasMeta]:
    """Layer, type group, specific type key and a distinct grid cell for every tensor name.

    `shapes` (same order as `names`) is optional; it only refines one guess: a 3-D-or-more tensor
    named `*.bias` is a saved attention-mask buffer, not a bias."""
    names = list(names)
    if not names:
        return {}
    stacks: dict[str, _Stack] = {}
    layered: list[tuple[_Tpl, list[str], list[int], list, list[str]]] = []  # per template
    loose: list[tuple[str, _Tpl, str, int | None]] = []  # tensors outside any layer
    # per template: its facts, then every name's numbers with one regex call and slicing
    for tpl, group in _by_template(names).items():
        t = _Tpl(tpl)
        n = t.n_stars
        if not n:
            loose += [(name, t, name, None) for name in group]
            continue
        flat = _NUM.findall("." + "\n.".join(group) + "\n")
        experts = list(map(int, flat[t.expert_star::n])) if t.expert_star >= 0 else [None] * len(group)
        if t.plain:
            keys = [tpl] * len(group)
        else:
            keys = [_key(tpl, flat[i:i + n], t) for i in range(0, len(flat), n)]
        if t.layer_star < 0:
            loose += zip(group, [t] * len(group), keys, experts)
            continue
        layers = list(map(int, flat[t.layer_star::n]))
        st = stacks.get(t.stack)
        if st is None:
            st = stacks[t.stack] = _Stack(t.stack, t.parent)
        t.stack = st
        seen = st.layers  # layer -> highest expert index in it (-1: none)
        if t.expert_star < 0:
            for layer in set(layers):
                seen.setdefault(layer, -1)
            st.cols.update(dict.fromkeys(keys, t.group))
        else:  # highest expert per layer, all in C: sorted pairs into a dict keep the last (largest)
            for layer, expert in dict(sorted(zip(layers, experts))).items():
                if seen.get(layer, -1) < expert:
                    seen[layer] = expert
            st.roles.update(dict.fromkeys(keys, t.group))
        layered.append((t, group, layers, experts, keys))

    order = sorted(stacks.values(), key=lambda st: (_RANK_OF_LABEL.get(st.label, 3), st.id))
    multi = len(order) > 1
    labels = [st.label for st in order]
    for st in order:
        st.finish(multi, labels.count(st.label) > 1)
    width = max([EXPERT_WRAP] + [len(st.col_of) for st in order])  # loose bands wrap at this width

    # tensors outside layers go to bands "top", "bottom", or their stack's "pre" / "post" band
    bands: dict[object, list[tuple]] = {}
    for name, t, key, expert in loose:
        st = _home_stack(t.parent, order) if multi else None
        band = ("top" if t.before else "bottom") if st is None else (st, "pre" if t.before else "post")
        bands.setdefault(band, []).append((_sort_key(key, t.group), name, t.group, expert))

    # vertical placement: one band after another, one empty row between bands
    band_y: dict[object, int] = {}
    y = 0

    def place(band: object, height: int) -> None:
        nonlocal y
        if height:
            band_y[band] = y
            y += height + 1

    place("top", -(-len(bands.get("top", ())) // width))
    for st in order:
        place((st, "pre"), -(-len(bands.get((st, "pre"), ())) // width))
        for layer, top_e in sorted(st.layers.items()):
            st.layer_y[layer] = y
            place((st, layer), 1 + (-(-(top_e + 1) // st.wrap)) * len(st.role_of))
        place((st, "post"), -(-len(bands.get((st, "post"), ())) // width))
    place("bottom", -(-len(bands.get("bottom", ())) // width))

    out: dict[str, CanvasMeta] = dict.fromkeys(names)  # type: ignore[arg-type]  # keys in the caller's order
    n_last = max((st.n_layers for st in order), default=0)
    for band, members in bands.items():
        members.sort()
        st = band[0] if isinstance(band, tuple) else None
        layer_index = -1 if band == "top" or (st and band[1] == "pre") else (st.n_layers if st else n_last)
        y0 = band_y[band]
        block = st.block if st else None
        for i, (sk, name, group, expert) in enumerate(members):
            out[name] = CanvasMeta(layer_index, group, sk[-1], float(i % width), float(y0 + i // width),
                                   expert, block)
    for t, group, layers, experts, keys in layered:  # the hot loop: map/zip keep it in C
        st, n = t.stack, len(group)
        if t.expert_star < 0:
            col_of, layer_y = st.col_of, st.layer_y
            xs = [col_of[key] for key in keys]
            ys = [float(layer_y[layer]) for layer in layers]
        else:  # expert e: column e % wrap; its matrices stacked, one row each, in block e // wrap
            w, n_roles, role_of, layer_y = st.wrap, st.n_roles, st.role_of, st.layer_y
            xs = [float(e % w) for e in experts]
            ys = [float(layer_y[layer] + 1 + e // w * n_roles + role_of[key])
                  for layer, e, key in zip(layers, experts, keys)]
        metas = _bulk_metas(n, layers, repeat(t.group, n), keys, xs, ys, experts, repeat(st.block, n))
        out.update(zip(group, metas))
    if shapes is not None:  # a >= 3-D "bias" is a causal-mask buffer (GPT-2, GPT-NeoX checkpoints)
        for name, shape in zip(names, shapes):
            if len(shape) >= 3 and name.endswith(".bias") and out[name].type_group != "other":
                out[name] = replace(out[name], type_group="other")
    return out
