"""LoRA edits on the running model, through PEFT.

Two edits are built exactly as low-rank weight deltas (lora_alpha = r, so PEFT's scaling is 1 and
delta W = B @ A):

- neurons: scale input features S of a linear layer by `factor` (for an MLP's down projection the
  inputs are its neurons: 0 ablates them, 2 doubles them): delta W = (factor - 1) W[:, S] E_S^T,
  rank |S| (zero-padded up to r);
- direction: remove (strength 1) or damp a direction v from a layer's output, W' = (I - s v v^T) W,
  or from its input, W' = W (I - s u u^T): rank 1 (zero-padded up to r). v may be given as numbers
  or as a token, whose embedding row is used.

Adapters can also be imported from a PEFT folder, toggled on and off (several may be active),
exported as a PEFT folder that `PeftModel.from_pretrained` loads, and merged into the weights as
staged bytes.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidRequest, SurgeryError
from .folder import LiveUnavailable
from .runtime import LiveModel

MIN_RANK, MAX_RANK = 4, 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class AdapterNotFound(SurgeryError):
    code = "adapter_not_found"
    http_status = 404


@dataclass
class AdapterInfo:
    name: str
    kind: str  # neurons | direction | imported
    modules: list[str]
    rank: int
    description: str
    enabled: bool = True
    spec: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


class Adapters:
    def __init__(self, live: LiveModel) -> None:
        self.live = live
        self.peft = None  # the PeftModel wrapping live.hf_model, made on the first adapter
        self.infos: dict[str, AdapterInfo] = {}

    # -- building ------------------------------------------------------------------------------

    def linear_modules(self) -> list[dict]:
        out = []
        base = self.live.hf_model
        for name, mod in base.named_modules():
            if isinstance(mod, torch.nn.Linear) and name:
                out.append({"name": name, "in_features": mod.in_features, "out_features": mod.out_features})
        return out

    def _linear(self, module: str) -> torch.nn.Linear:
        mod = dict(self.live.hf_model.named_modules()).get(module)
        if mod is None:
            for prefix in ("base_model.model.",):
                mod = dict(self.live.hf_model.named_modules()).get(prefix + module)
        if not isinstance(mod, torch.nn.Linear):
            # once wrapped by PEFT, a target is a LoraLayer holding the Linear as base_layer
            base = getattr(mod, "base_layer", None)
            if isinstance(base, torch.nn.Linear):
                return base
            raise InvalidRequest(f"{module!r} is not a linear layer of the running model", field="module")
        return mod

    def build(self, name: str, kind: str, module: str, rank: int, *, neurons=None, factor=None,
              direction=None, token=None, side: str = "output", strength: float = 1.0) -> AdapterInfo:
        self._check_name(name)
        if not MIN_RANK <= rank <= MAX_RANK:
            raise InvalidRequest(f"rank must be between {MIN_RANK} and {MAX_RANK}", field="rank")
        lin = self._linear(module)
        w = lin.weight.detach().float().cpu()  # out x in
        out_f, in_f = w.shape
        b = torch.zeros(out_f, rank)
        a = torch.zeros(rank, in_f)
        if kind == "neurons":
            idx = _int_list(neurons, "neurons")
            if not idx or len(idx) > rank or len(set(idx)) != len(idx) or not all(0 <= i < in_f for i in idx):
                raise InvalidRequest(
                    f"neurons must list 1 to {rank} distinct input features of {module} (0..{in_f - 1})", field="neurons")
            if factor is None:
                raise InvalidRequest("neurons needs a factor (0 ablates, 2 doubles)", field="factor")
            for k, i in enumerate(idx):
                b[:, k] = (float(factor) - 1.0) * w[:, i]
                a[k, i] = 1.0
            desc = f"scale neurons {idx} of {module} ×{float(factor):g} (rank {rank})"
            spec = {"neurons": idx, "factor": float(factor)}
        elif kind == "direction":
            if side not in ("output", "input"):
                raise InvalidRequest("side must be output or input", field="side")
            dim = out_f if side == "output" else in_f
            v = self._direction(direction, token, dim)
            s = float(strength)
            if side == "output":
                b[:, 0] = -s * v
                a[0, :] = v @ w
            else:
                b[:, 0] = -s * (w @ v)
                a[0, :] = v
            what = f"token {token!r}" if token is not None else "a given direction"
            desc = f"remove {what} from the {side} of {module} (strength {s:g}, rank {rank})"
            spec = {"side": side, "strength": s, "token": token, "direction_norm": 1.0}
        else:
            raise InvalidRequest("kind must be neurons or direction", field="kind")
        self._add(name, [module], rank)
        layer = self._lora_layer(module)
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(a.to(layer.lora_A[name].weight.dtype))
            layer.lora_B[name].weight.copy_(b.to(layer.lora_B[name].weight.dtype))
        info = AdapterInfo(name, kind, [module], rank, desc, True, {"module": module, **spec})
        self.infos[name] = info
        return info

    def _direction(self, direction, token, dim) -> torch.Tensor:
        if token is not None:
            tok = self.live.tokenizer
            ids = tok(token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise InvalidRequest(f"{token!r} is {len(ids)} tokens; give a single token", field="token")
            emb = self.live.hf_model.get_input_embeddings().weight[ids[0]].detach().float().cpu()
            if emb.numel() != dim:
                raise InvalidRequest(f"the embedding has {emb.numel()} dimensions, the layer side {dim}", field="token")
            v = emb
        else:
            vals = direction if isinstance(direction, list) else None
            if not vals or len(vals) != dim or not all(isinstance(x, (int, float)) for x in vals):
                raise InvalidRequest(f"direction must be {dim} numbers (or give a token)", field="direction")
            v = torch.tensor(vals, dtype=torch.float32)
        n = float(v.norm())
        if not n > 0:
            raise InvalidRequest("the direction is zero", field="direction")
        return v / n

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequest("adapter name: 1-64 letters, digits, '_' or '-'", field="name")
        if name in "lora_":  # PEFT finds its parameters by that prefix: such a name can reset weights on loading
            raise InvalidRequest(f"adapter name {name!r} is part of PEFT's 'lora_' prefix; choose another", field="name")
        if name in self.infos:
            raise InvalidRequest(f"an adapter named {name!r} exists; delete it or choose another name", field="name")

    def _add(self, name: str, modules: list[str], rank: int) -> None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=modules, lora_dropout=0.0, bias="none",
                            init_lora_weights=False)
        if self.peft is None:
            self.peft = get_peft_model(self.live.hf_model, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        self.peft.eval()

    def _lora_layer(self, module: str):
        for n, m in self.peft.named_modules():
            if n.endswith(module) and hasattr(m, "lora_A"):
                return m
        raise LiveUnavailable(f"PEFT did not wrap {module!r}")

    # -- import / export / merge ----------------------------------------------------------------

    def import_folder(self, folder: Path, name: str) -> AdapterInfo:
        from peft import PeftModel

        self._check_name(name)
        cfg_path = folder / "adapter_config.json"
        if not cfg_path.is_file() or not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise InvalidRequest(f"{folder} is not a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)",
                                 field="path")
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise InvalidRequest(f"{cfg_path}: not JSON: {e}", field="path") from None
        if cfg.get("peft_type", "LORA") != "LORA":
            raise InvalidRequest(f"{folder}: only LoRA adapters can be imported (this is {cfg.get('peft_type')})", field="path")
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.live.hf_model, str(folder), adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        except Exception as e:  # PEFT raises plain exceptions for mismatched shapes or modules
            raise InvalidRequest(f"PEFT cannot load {folder} onto this model: {e}", field="path") from None
        self.peft.eval()
        modules = sorted({n.split("base_model.model.", 1)[-1] for n, m in self.peft.named_modules()
                          if hasattr(m, "lora_A") and name in m.lora_A})
        info = AdapterInfo(name, "imported", modules, int(cfg.get("r", 0)), f"imported from {folder.name}", True,
                           {"path": str(folder)})
        self.infos[name] = info
        return info

    def export(self, name: str, out: Path) -> dict:
        self.get(name)
        out = Path(out)
        if out.exists():
            raise InvalidRequest(f"{out} already exists; choose a new folder", field="out")
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
            self.peft.save_pretrained(tmp, selected_adapters=[name])
            src = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
            cfg = json.loads((src / "adapter_config.json").read_text())
            cfg["base_model_name_or_path"] = str(Path(self.live.store_model.path).parent)
            (src / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, out)
        return {"path": str(out), "files": sorted(p.name for p in out.iterdir())}

    def deltas(self, name: str) -> dict[str, torch.Tensor]:
        """Checkpoint weight name -> the delta this adapter adds to it: B @ A * scaling, in float64 for a
        plain LoRA linear layer (so W + delta is rounded once, when cast back), else PEFT's own."""
        from peft.tuners.lora import Linear as LoraLinear

        self.get(name)
        out = {}
        for n, m in self.peft.named_modules():
            if hasattr(m, "lora_A") and name in m.lora_A:
                module = n.split("base_model.model.", 1)[-1]
                if isinstance(m, LoraLinear) and m.lora_variant.get(name) is None:
                    d = m.lora_B[name].weight.detach().cpu().double() @ m.lora_A[name].weight.detach().cpu().double()
                    d = (d.T if m.fan_in_fan_out else d) * m.scaling[name]
                else:  # DoRA and other variants: their merge is not B @ A
                    d = m.get_delta_weight(name).detach().cpu().double()
                out[f"{module}.weight"] = d
        return out

    # -- state ----------------------------------------------------------------------------------

    def get(self, name: str) -> AdapterInfo:
        if name not in self.infos:
            raise AdapterNotFound(f"no adapter named {name!r}", name=name)
        return self.infos[name]

    def set_enabled(self, name: str, enabled: bool) -> AdapterInfo:
        info = self.get(name)
        info.enabled = bool(enabled)
        return info

    def delete(self, name: str) -> None:
        self.get(name)
        del self.infos[name]
        if self.infos:
            self.peft.delete_adapter(name)
        else:  # the last one: take PEFT off (its wrappers give back the same parameters), run bare
            self.peft.unload()
            self.peft = None

    def active(self) -> list[str]:
        return sorted(n for n, i in self.infos.items() if i.enabled)

    def forward_model(self, active: list[str] | None = None):
        """(model to call, context manager) with exactly `active` adapters on (default: the enabled)."""
        import contextlib

        if self.peft is None:
            return self.live.hf_model, contextlib.nullcontext()
        active = self.active() if active is None else active
        if not active:
            return self.peft, self.peft.disable_adapter()
        self.peft.base_model.set_adapter(active)
        return self.peft, contextlib.nullcontext()

    def list(self) -> list[dict]:
        return [i.to_json() for i in self.infos.values()]


def _int_list(v, field_name: str) -> list[int]:
    if not isinstance(v, list) or not all(type(x) is int for x in v):
        raise InvalidRequest(f"{field_name} must be a list of integers", field=field_name)
    return v
