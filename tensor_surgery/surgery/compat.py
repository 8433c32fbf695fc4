"""Will the model still load? A verdict, in plain words, before a transplant writes anything.

`check_model(config, tensors, changed)` looks at the *resulting* model (its config.json and every
tensor's shape and dtype) and judges each tensor the plan writes against the tensors it connects to:
q_proj's outputs against o_proj's inputs, gate/up_proj against down_proj, every layer's inputs
against the hidden size, the embedding and lm_head against the vocabulary size, and so on.

What "will load" means is what transformers does with the files, which the tests check against
`AutoModel*.from_pretrained` and one forward pass:
- it builds every module from config.json, then copies the checkpoint in. A checkpoint tensor whose
  shape differs from the module built from config.json is refused (size mismatch): `will_fail`.
- a parameter the checkpoint lacks is initialised with random values and the model loads: `warning`.
- a checkpoint tensor no module takes (an extra layer, an unknown name) is ignored: `warning`.
- a dtype other than the rest of the model's is cast when loading: `warning`.

Architectures: Llama-style decoders (llama, mistral, qwen2, qwen3) and BERT encoders (bert) are
checked against the exact parameter shapes transformers builds from config.json. Anything else gets
generic checks from the layout inference (store/layout.py): a tensor against the same role in the
other layers, against its own shape before the plan (when `before` is given), and the embeddings and
head against config.json's vocab and hidden sizes.

numpy/stdlib only (no torch): this runs before anything is written, on headers alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..store.layout import infer_layout

__all__ = ["CompatReport", "Verdict", "check_model"]

OK, WARNING, WILL_FAIL = "ok", "warning", "will_fail"
_SEVERITY = {OK: 0, WARNING: 1, WILL_FAIL: 2}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "ok" | "warning" | "will_fail"
    reason: str  # plain words: what will happen and why, naming the tensors involved
    tensors: tuple[str, ...] = ()  # the tensors the reason is about (the checked one first)

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "tensors": list(self.tensors)}


@dataclass
class CompatReport:
    """`verdicts`: one per changed tensor; `problems`: model-level findings (missing tensors, layer
    count against config.json, config values that cannot work); `fixes`: offers the caller can act on,
    e.g. {"kind": "resize_vocab", "vocab_size": N, "tensors": [...]} or
    {"kind": "set_config", "changes": {"vocab_size": N}}."""

    architecture: str  # "llama" (the Llama family), "bert", or "generic"
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    problems: list[Verdict] = field(default_factory=list)
    fixes: list[dict] = field(default_factory=list)

    @property
    def will_load(self) -> bool:
        """False when anything is predicted to make loading or the first forward pass fail."""
        return all(v.verdict != WILL_FAIL for v in (*self.verdicts.values(), *self.problems))

    @property
    def verdict(self) -> str:
        """The worst verdict of all: what a one-word summary shows."""
        worst = max((_SEVERITY[v.verdict] for v in (*self.verdicts.values(), *self.problems)), default=0)
        return (OK, WARNING, WILL_FAIL)[worst]

    def to_json(self) -> dict:
        return {"architecture": self.architecture, "will_load": self.will_load, "verdict": self.verdict,
                "verdicts": {k: v.to_json() for k, v in self.verdicts.items()},
                "problems": [p.to_json() for p in self.problems], "fixes": list(self.fixes)}


# --- what transformers builds from config.json -------------------------------------------------

@dataclass(frozen=True)
class _Dim:
    size: int
    would: str  # what the tensor would do with n, e.g. "output {n} features"
    because: str  # what it connects to, e.g. "o_proj (NAME) expects 576 (9 heads × 64 head_dim)"


@dataclass(frozen=True)
class _Param:
    dims: tuple[_Dim, ...]
    optional: bool = False  # missing is fine (a tied lm_head)

    @property
    def shape(self) -> Shape:
        return tuple(d.size for d in self.dims)


_LLAMA_FAMILY = frozenset(("llama", "mistral", "qwen2", "qwen3"))
_BUFFERS = re.compile(r"(?:^|\.)(?:inv_freq|original_inv_freq|position_ids|token_type_ids|rotary_emb\.\w+|"
                      r"masked_bias|cos_cached|sin_cached)$")


def _int(cfg: Mapping, *keys: str) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _prefix(names: Iterable[str], pattern: str) -> str | None:
    rx = re.compile(pattern)
    for name in names:
        m = rx.match(name)
        if m:
            return m.group(1)
    return None


class _Spec:
    """Expected parameters of one architecture: name -> _Param, plus what the layers are called."""

    def __init__(self, arch: str, cls: str, layer_rx: str, n_layers: int) -> None:
        self.arch, self.cls, self.n_layers = arch, cls, n_layers
        self.layer_rx = re.compile(layer_rx)  # group(1): the layer index
        self.params: dict[str, _Param] = {}
        self.problems: list[Verdict] = []

    def add(self, name: str, *dims: _Dim, optional: bool = False) -> None:
        self.params[name] = _Param(tuple(dims), optional)


def _llama_spec(cfg: Mapping, names: list[str]) -> _Spec | None:
    p = _prefix(names, r"^(.*?)layers\.\d+\.self_attn\.[qkvo]_proj\.weight$")
    H, nh, V = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads"), _int(cfg, "vocab_size")
    I, n = _int(cfg, "intermediate_size"), cfg.get("num_hidden_layers")
    if p is None or None in (H, nh, V, I) or not isinstance(n, int) or n < 0:
        return None
    nkv = _int(cfg, "num_key_value_heads") or nh
    hd = _int(cfg, "head_dim") or H // nh
    mt = cfg.get("model_type")
    tied = bool(cfg.get("tie_word_embeddings", False))  # False is every one of these configs' default
    archs = cfg.get("architectures") or []
    causal = p != "" or any(str(a).endswith("ForCausalLM") for a in archs)
    spec = _Spec("llama", str(archs[0]) if archs else f"{mt}", rf"^{re.escape(p)}layers\.(\d+)\.", n)
    embed = f"{p}embed_tokens.weight"
    hidden = _Dim(H, "read {n} features", f"the hidden state is {H} wide (hidden_size; {embed} is [{V}, {H}])")
    resid = _Dim(H, "output {n} features", f"the residual stream is {H} wide (hidden_size)")
    norm = _Dim(H, "scale {n} features", f"the hidden state is {H} wide (hidden_size)")
    spec.add(embed, _Dim(V, "have {n} rows (token ids)", f"config.json's vocab_size is {V}"
                         + (" and the tied lm_head emits that many logits" if tied else "")),
             _Dim(H, "give {n} features", f"every layer reads the hidden size {H} (hidden_size)"))
    spec.add(f"{p}norm.weight", norm)
    if causal:
        spec.add("lm_head.weight", _Dim(V, "emit {n} logits", f"config.json's vocab_size is {V} and {embed} "
                                        f"has {V} rows"),
                 _Dim(H, "read {n} features", f"the final norm ({p}norm.weight) emits {H} (hidden_size)"),
                 optional=tied)
    qkv_bias = mt == "qwen2" or bool(cfg.get("attention_bias"))
    o_bias = mt != "qwen2" and bool(cfg.get("attention_bias"))
    mlp_bias = mt == "llama" and bool(cfg.get("mlp_bias"))
    for i in range(n):
        L = f"{p}layers.{i}."
        q, k, v, o = (f"{L}self_attn.{x}_proj.weight" for x in "qkvo")
        gate, up, down = (f"{L}mlp.{x}_proj.weight" for x in ("gate", "up", "down"))
        heads = f"{nh} heads × {hd} head_dim"
        kv = f"{nkv} key/value heads × {hd} head_dim, shared by q_proj's {nh} heads"
        q_out = _Dim(nh * hd, "output {n} features", f"o_proj ({o}) expects {nh * hd} ({heads})")
        kv_out = _Dim(nkv * hd, "output {n} features", f"attention expects {nkv * hd} ({kv})")
        spec.add(q, q_out, hidden)
        spec.add(k, kv_out, hidden)
        spec.add(v, _Dim(nkv * hd, "output {n} features", f"o_proj ({o}) reads {nkv * hd} per token ({kv})"),
                 hidden)
        spec.add(o, resid, _Dim(nh * hd, "read {n} features", f"q_proj ({q}) and the attention heads give "
                                f"{nh * hd} ({heads})"))
        inter = f"{I} (intermediate_size)"
        spec.add(gate, _Dim(I, "output {n} features", f"down_proj ({down}) expects {inter}"), hidden)
        spec.add(up, _Dim(I, "output {n} features", f"down_proj ({down}) expects {inter}"), hidden)
        spec.add(down, resid, _Dim(I, "read {n} features", f"gate_proj and up_proj ({up}) output {inter}"))
        spec.add(f"{L}input_layernorm.weight", norm)
        spec.add(f"{L}post_attention_layernorm.weight", norm)
        if qkv_bias:
            for name, dim in ((q, q_out), (k, kv_out), (v, kv_out)):
                spec.add(name.removesuffix("weight") + "bias",
                         _Dim(dim.size, "add {n} values", f"{name.rsplit('.', 2)[-2]} outputs {dim.size}"))
        if o_bias:
            spec.add(f"{L}self_attn.o_proj.bias", _Dim(H, "add {n} values", f"o_proj outputs {H} (hidden_size)"))
        if mlp_bias:
            for x, size in (("gate", I), ("up", I), ("down", H)):
                spec.add(f"{L}mlp.{x}_proj.bias", _Dim(size, "add {n} values", f"{x}_proj outputs {size}"))
        if mt == "qwen3":
            for x in "qk":
                spec.add(f"{L}self_attn.{x}_norm.weight",
                         _Dim(hd, "scale {n} features", f"each head is {hd} wide (head_dim)"))
    if nh % nkv:
        spec.problems.append(Verdict(WILL_FAIL, f"config.json's num_attention_heads ({nh}) is not a multiple of "
                                     f"num_key_value_heads ({nkv}): the query heads cannot share key/value heads "
                                     "and the first forward pass will fail"))
    return spec


def _bert_spec(cfg: Mapping, names: list[str]) -> _Spec | None:
    p = _prefix(names, r"^(.*?)encoder\.layer\.\d+\.attention\.self\.(?:query|key|value)\.weight$")
    H, nh, V = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads"), _int(cfg, "vocab_size")
    I, n = _int(cfg, "intermediate_size"), cfg.get("num_hidden_layers")
    if p is None or None in (H, nh, V, I) or not isinstance(n, int) or n < 0:
        return None
    P, T = _int(cfg, "max_position_embeddings") or 512, _int(cfg, "type_vocab_size") or 2
    archs = cfg.get("architectures") or []
    spec = _Spec("bert", str(archs[0]) if archs else "BertModel", rf"^{re.escape(p)}encoder\.layer\.(\d+)\.", n)
    A = nh * (H // nh)  # all_head_size
    heads = f"{nh} heads × {H // nh}"
    E = f"{p}embeddings."
    words = f"{E}word_embeddings.weight"
    hidden = _Dim(H, "read {n} features", f"the hidden state is {H} wide (hidden_size; {words} is [{V}, {H}])")
    feats = _Dim(H, "give {n} features", f"the embeddings are summed into the hidden size {H} (hidden_size)")
    resid = _Dim(H, "output {n} features", f"the hidden state is {H} wide (hidden_size)")
    norm = _Dim(H, "scale {n} features", f"the hidden state is {H} wide (hidden_size)")
    spec.add(words, _Dim(V, "have {n} rows (token ids)", f"config.json's vocab_size is {V}"), feats)
    spec.add(f"{E}position_embeddings.weight",
             _Dim(P, "have {n} rows (positions)", f"config.json's max_position_embeddings is {P}"), feats)
    spec.add(f"{E}token_type_embeddings.weight",
             _Dim(T, "have {n} rows (token types)", f"config.json's type_vocab_size is {T}"), feats)
    spec.add(f"{E}LayerNorm.weight", norm)
    spec.add(f"{E}LayerNorm.bias", norm)
    for i in range(n):
        L = f"{p}encoder.layer.{i}."
        out_dense = f"{L}attention.output.dense.weight"
        inter, out = f"{L}intermediate.dense.weight", f"{L}output.dense.weight"
        for x in ("query", "key", "value"):
            w = f"{L}attention.self.{x}.weight"
            d = _Dim(A, "output {n} features", f"attention.output.dense ({out_dense}) and the other projections "
                                               f"expect {A} ({heads})")
            spec.add(w, d, hidden)
            spec.add(f"{L}attention.self.{x}.bias", _Dim(A, "add {n} values", f"{x} outputs {A} ({heads})"))
        spec.add(out_dense, resid, _Dim(A, "read {n} features", f"the attention heads give {A} ({heads}; "
                                        f"{L}attention.self.value.weight)"))
        spec.add(f"{L}attention.output.dense.bias", _Dim(H, "add {n} values", f"attention.output.dense outputs {H}"))
        spec.add(f"{L}attention.output.LayerNorm.weight", norm)
        spec.add(f"{L}attention.output.LayerNorm.bias", norm)
        spec.add(inter, _Dim(I, "output {n} features", f"output.dense ({out}) expects {I} (intermediate_size)"),
                 hidden)
        spec.add(f"{L}intermediate.dense.bias", _Dim(I, "add {n} values", f"intermediate.dense outputs {I}"))
        spec.add(out, resid, _Dim(I, "read {n} features", f"intermediate.dense ({inter}) outputs {I} "
                                  "(intermediate_size)"))
        spec.add(f"{L}output.dense.bias", _Dim(H, "add {n} values", f"output.dense outputs {H}"))
        spec.add(f"{L}output.LayerNorm.weight", norm)
        spec.add(f"{L}output.LayerNorm.bias", norm)
    if any(name.startswith(f"{p}pooler.") for name in names) or not archs or "BertModel" in archs:
        spec.add(f"{p}pooler.dense.weight", resid, _Dim(H, "read {n} features", f"the [CLS] hidden state is {H} "
                                                        "wide (hidden_size)"))
        spec.add(f"{p}pooler.dense.bias", _Dim(H, "add {n} values", f"pooler.dense outputs {H}"))
    if H % nh:
        spec.problems.append(Verdict(WILL_FAIL, f"config.json's hidden_size ({H}) is not a multiple of "
                                     f"num_attention_heads ({nh}): transformers refuses to build the model"))
    return spec


def _shape_str(shape: Iterable[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


_FAIL_TAIL = ("inference will fail with a shape mismatch (transformers already refuses it when loading: it builds "
              "{short} as {expected} from config.json)")


def _short(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[-1]


def _judge(name: str, shape: Shape, param: _Param) -> Verdict | None:
    """None when the shape is the one transformers builds; else a will_fail naming the connection."""
    expected = param.shape
    if tuple(shape) == expected:
        return None
    tail = _FAIL_TAIL.format(short=_short(name), expected=_shape_str(expected))
    partners = tuple(sorted(set(re.findall(r"\(([\w.]+\.(?:weight|bias))", " ".join(d.because for d in param.dims)))
                            - {name}))
    if len(shape) != len(expected):
        return Verdict(WILL_FAIL, f"{name} is {len(shape)}-D {_shape_str(shape)} but the model takes it as "
                       f"{len(expected)}-D {_shape_str(expected)}: {tail}", (name, *partners))
    bad = [f"would {d.would.format(n=n)} but {d.because}" for n, d in zip(shape, param.dims) if n != d.size]
    return Verdict(WILL_FAIL, f"{name} " + "; and ".join(bad) + f": {tail}", (name, *partners))


# --- the check -------------------------------------------------------------------------------

def _float(dtype: str) -> bool:
    return dtype.upper().startswith(("F", "BF"))  # F64 F32 F16 BF16 F8_E4M3 F8_E5M2


def _numel(shape: Shape) -> int:
    out = 1
    for n in shape:
        out *= int(n)
    return out


def _main_dtype(tensors: Mapping[str, tuple[Shape, str]]) -> str | None:
    weight: Counter[str] = Counter()
    for shape, dtype in tensors.values():
        if _float(dtype):
            weight[dtype] += _numel(shape)
    return weight.most_common(1)[0][0] if weight else None


def _dtype_verdict(name: str, dtype: str, main: str | None) -> Verdict | None:
    if main is None or dtype == main:
        return None
    what = "an integer or boolean" if not _float(dtype) else "a"
    return Verdict(WARNING, f"{name} is {dtype} while the rest of the model is {main}: transformers casts it to the "
                   f"model's dtype when loading ({what} {dtype} tensor in a {main} model loses or invents "
                   "precision), and runtimes that map the file directly may refuse mixed dtypes", (name,))


def _names_list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _layers_present(names: Iterable[str], rx: re.Pattern[str]) -> set[int]:
    out = set()
    for name in names:
        m = rx.match(name)
        if m:
            out.add(int(m.group(1)))
    return out


def check_model(config: Mapping, tensors: Mapping[str, tuple[Iterable[int], str]], changed: Iterable[str],
                *, before: Mapping[str, tuple[Iterable[int], str]] | None = None) -> CompatReport:
    """Judge a planned model before it is written.

    `config`: the resulting model's config.json (as written, e.g. num_hidden_layers already updated
    by a layer duplication). `tensors`: the resulting model, name -> (shape, dtype string as
    safetensors writes it: "BF16", "F32", ...). `changed`: the names the plan writes, adds or deletes
    (a deleted name is simply absent from `tensors`). `before` (optional): the target's tensors before
    the plan, which sharpens the generic checks for architectures not known here.

    Every changed name gets a Verdict; `problems` holds what is wrong with the model as a whole,
    changed or not (a config.json that disagrees with untouched tensors fails as surely)."""
    tensors = {k: (tuple(int(n) for n in s), str(d)) for k, (s, d) in tensors.items()}
    changed = list(dict.fromkeys(changed))
    names = list(tensors)
    cfg = config if isinstance(config, Mapping) else {}
    mt = str(cfg.get("model_type", "")).lower()
    spec = None
    if mt in _LLAMA_FAMILY:
        spec = _llama_spec(cfg, names)
    elif mt == "bert":
        spec = _bert_spec(cfg, names)
    main = _main_dtype(tensors)
    report = CompatReport("generic" if spec is None else spec.arch)
    if spec is not None:
        _check_known(report, spec, tensors, changed, main)
    else:
        _check_generic(report, cfg, tensors, changed, main, before)
    _vocab_fixes(report, cfg, tensors, spec)
    return report


def _check_known(report: CompatReport, spec: _Spec, tensors: dict[str, tuple[Shape, str]], changed: list[str],
                 main: str | None) -> None:
    params = spec.params
    report.problems.extend(spec.problems)
    for name in changed:
        param = params.get(name)
        if name not in tensors:
            if param is None or param.optional:
                report.verdicts[name] = Verdict(OK, f"{name} is removed; {spec.cls} does not need it", (name,))
            else:
                report.verdicts[name] = Verdict(WARNING, f"{name} is removed but {spec.cls} has this parameter: "
                                                "transformers will load the model with it initialised to random "
                                                "values", (name,))
            continue
        shape, dtype = tensors[name]
        if param is None:
            if _BUFFERS.search(name):
                verdict = Verdict(OK, f"{name} is a buffer transformers rebuilds from config.json; the checkpoint's "
                                  "copy is ignored", (name,))
            else:
                m = spec.layer_rx.match(name)
                where = (f"layer {m.group(1)} is past config.json's num_hidden_layers ({spec.n_layers})" if m
                         else f"no module of {spec.cls} is called that")
                verdict = Verdict(WARNING, f"{name} is not a parameter of {spec.cls} as config.json builds it "
                                  f"({where}): transformers ignores it when loading", (name,))
            report.verdicts[name] = verdict
            continue
        verdict = _judge(name, shape, param) or _dtype_verdict(name, dtype, main)
        report.verdicts[name] = verdict or Verdict(OK, f"{name} {_shape_str(shape)} {dtype} fits: "
                                                   f"{spec.cls} builds it as {_shape_str(param.shape)}", (name,))
    # model-level: untouched tensors judged the same way (a changed config.json breaks them too)
    done = set(changed)
    bad = [v for name, param in params.items() if name not in done and name in tensors
           for v in [_judge(name, tensors[name][0], param)] if v is not None]
    report.problems.extend(bad)
    missing = [name for name, param in params.items() if name not in tensors and not param.optional
               and name not in done]
    present = _layers_present(tensors, spec.layer_rx)
    n = spec.n_layers
    if missing:
        report.problems.append(Verdict(WARNING, f"{len(missing)} parameter(s) of {spec.cls} are not in the model: "
                                       f"{_names_list(missing)}. transformers will load it with them initialised "
                                       "to random values", tuple(missing)))
    extra = sorted(i for i in present if i >= n)
    if extra or (present and max(present) + 1 < n):
        have = max(present) + 1 if present else 0
        msg = (f"config.json's num_hidden_layers is {n} but the model has layers 0..{have - 1} ({len(present)} "
               "present): ")
        msg += (f"layers {extra[0]}..{extra[-1]} are ignored when loading" if extra
                else f"layers {have}..{n - 1} will be initialised with random values")
        report.problems.append(Verdict(WARNING, msg))
        if present == set(range(have)):
            report.fixes.append({"kind": "set_config", "changes": {"num_hidden_layers": have},
                                 "reason": f"the model holds {have} consecutive layers"})


def _check_generic(report: CompatReport, cfg: Mapping, tensors: dict[str, tuple[Shape, str]], changed: list[str],
                   main: str | None, before: Mapping | None) -> None:
    """Checks that hold for most transformer checkpoints, without knowing the architecture: layers are
    built from one config (a role has one shape in every layer), a tensor that existed keeps the shape
    the config gives it, and the token embeddings match hidden and vocab sizes."""
    names = list(tensors)
    layout = infer_layout(names, [tensors[n][0] for n in names]) if names else {}
    done = set(changed)
    # per role (block, key): the shapes of its untouched tensors, counted once (a 92k-tensor MoE has
    # 15k expert matrices per role: scanning them per changed name would be quadratic)
    peer_shapes: dict[tuple, Counter] = {}
    peer_example: dict[tuple, str] = {}
    for name, meta in layout.items():
        if "*" in meta.specific_type_key and name not in done:  # inside a numbered layer
            role = (meta.block, meta.specific_type_key)
            peer_shapes.setdefault(role, Counter())[tensors[name][0]] += 1
            peer_example.setdefault((*role, tensors[name][0]), name)
    common_of: dict[tuple, Shape] = {}
    H = _int(cfg, "hidden_size", "d_model", "n_embd", "dim", "hidden_dim")
    V = _int(cfg, "vocab_size", "n_vocab")
    before = {k: (tuple(int(n) for n in s), str(d)) for k, (s, d) in (before or {}).items()}
    for name in changed:
        if name not in tensors:
            report.verdicts[name] = Verdict(WARNING, f"{name} is removed: if the architecture has this parameter, "
                                            "transformers will initialise it with random values", (name,))
            continue
        shape, dtype = tensors[name]
        meta = layout[name]
        verdict = None
        role = (meta.block, meta.specific_type_key)
        others = peer_shapes.get(role) if "*" in meta.specific_type_key else None
        if others:
            common = common_of.get(role)
            if common is None:
                common = common_of[role] = others.most_common(1)[0][0]
            if shape != common:
                example = peer_example[(*role, common)]
                verdict = Verdict(WILL_FAIL, f"{name} is {_shape_str(shape)} but the same tensor in the other layers "
                                  f"is {_shape_str(common)} (e.g. {example}): every layer is built from one config, "
                                  "so inference will fail with a shape mismatch (transformers refuses it when "
                                  "loading)", (name, example))
        if verdict is None and name in before and before[name][0] != shape:
            verdict = Verdict(WILL_FAIL, f"{name} was {_shape_str(before[name][0])} in the target and config.json "
                              f"builds it that way, but it would be {_shape_str(shape)}: inference will fail with "
                              "a shape mismatch (transformers refuses it when loading)", (name,))
        if verdict is None and meta.type_group == "embedding" and len(shape) == 2 and _is_token_embedding(name):
            if H and shape[1] != H:
                verdict = Verdict(WILL_FAIL, f"{name} would give {shape[1]} features but the hidden size is {H} "
                                  "(config.json): inference will fail with a shape mismatch", (name,))
            elif V and shape[0] != V:
                verdict = Verdict(WILL_FAIL, f"{name} would have {shape[0]} rows (token ids) but config.json's "
                                  f"vocab_size is {V}: loading will fail with a size mismatch", (name,))
        if verdict is None and meta.type_group == "norm" and len(shape) == 1 and H and shape[0] != H \
                and "*" in meta.specific_type_key and not others:
            verdict = Verdict(WARNING, f"{name} scales {shape[0]} features but the hidden size is {H}: fine only if "
                              "this norm sits on a narrower stream (per-head norms do)", (name,))
        verdict = verdict or _dtype_verdict(name, dtype, main)
        report.verdicts[name] = verdict or Verdict(
            OK, f"{name} {_shape_str(shape)} {dtype}: no conflict found (architecture "
            f"{cfg.get('model_type') or 'unknown'} is checked generically: against the same tensor in other layers "
            "and the config's sizes)", (name,))
    n = _int(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    stacks: dict[object, set[int]] = {}
    for meta in layout.values():
        if "*" in meta.specific_type_key:
            stacks.setdefault(meta.block, set()).add(meta.layer_index)
    if n is not None and len(stacks) == 1:
        (present,) = stacks.values()
        have = max(present) + 1
        if have != n:
            report.problems.append(Verdict(WARNING, f"config.json says {n} layers but the model has layers "
                                           f"0..{have - 1}: transformers ignores layers past {n - 1} and initialises "
                                           "missing ones with random values"))
            if present == set(range(have)):
                key = next(k for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers") if k in cfg)
                report.fixes.append({"kind": "set_config", "changes": {key: have},
                                     "reason": f"the model holds {have} consecutive layers"})


_TOKEN_EMB = re.compile(r"(?:^|\.)(?:embed_tokens|word_embeddings|wte|tok_embeddings|token_embd|embed_in|shared)"
                        r"\.weight$")
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$|^output\.weight$")


def _is_token_embedding(name: str) -> bool:
    return _TOKEN_EMB.search(name) is not None


def _vocab_fixes(report: CompatReport, cfg: Mapping, tensors: dict[str, tuple[Shape, str]], spec: _Spec | None) -> None:
    """Embedding and lm_head rows against each other and config.json's vocab_size: offer to resize
    both to config.json's size (the tokenizer copied with config.json has that many ids), and, when
    the two tensors agree with each other, to set config.json's vocab_size to theirs instead."""
    V = _int(cfg, "vocab_size", "n_vocab")
    rows = {name: shape[0] for name, (shape, _) in tensors.items()
            if len(shape) == 2 and (_TOKEN_EMB.search(name) or _HEAD.search(name))
            and (spec is None or spec.arch != "bert" or "word_embeddings" in name)}
    if not rows:
        return
    sizes = set(rows.values())
    if V is not None:
        off = sorted(name for name, r in rows.items() if r != V)
        if off:
            report.fixes.append({"kind": "resize_vocab", "vocab_size": V, "tensors": off,
                                 "reason": f"config.json's vocab_size is {V}; "
                                 + ", ".join(f"{name} has {rows[name]} rows" for name in off)})
            if len(sizes) == 1:
                (r,) = sizes
                report.fixes.append({"kind": "set_config", "changes": {"vocab_size": r},
                                     "reason": f"{_names_list(sorted(rows))} {'agree on' if len(rows) > 1 else 'has'} {r} rows (use a tokenizer "
                                     f"with {r} ids)"})
    elif len(sizes) > 1:
        target = max(sizes)
        report.fixes.append({"kind": "resize_vocab", "vocab_size": target,
                             "tensors": sorted(n for n, r in rows.items() if r != target),
                             "reason": "the embedding and the head disagree on the vocabulary size: "
                             + ", ".join(f"{n} has {r} rows" for n, r in sorted(rows.items()))})
        report.problems.append(Verdict(WILL_FAIL, "the embedding and the head disagree on the vocabulary size: "
                                       + ", ".join(f"{n} has {r} rows" for n, r in sorted(rows.items())),
                                       tuple(sorted(rows))))
