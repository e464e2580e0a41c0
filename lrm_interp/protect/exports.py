"""Masks → configurations of real quantization toolchains.

Mainstream tools keep whole modules in 16 bits, not single weights, so module-level
exports take the sites whose mask is *full* (``granularity="full"``, e.g. from
``modules_by_score`` or ``final_mlp``); element-level masks go to the library's own
sidecar (:func:`save_sidecar`).

- llm-compressor: ``ignore=[...]`` of a modifier (module names; ``re:`` prefix = regex).
- GPTQModel: ``dynamic={"-:<regex>": {}}`` (``-:`` = skip the matching modules).
- transformers: ``modules_to_not_convert`` / ``llm_int8_skip_modules`` (name list).

Sidecar format (safetensors, :func:`save_sidecar`): per site ``<site>.rowptr`` int64
``[out+1]``, ``<site>.cols`` int16/int32 and ``<site>.values`` float16 — the CSR of the
protected weights' original values, in the ``[out, in]`` layout; metadata ``format =
lrm_interp.sidecar/1``. Apply with :func:`apply_sidecar_` after loading a quantized model.

Quantized copies (:func:`save_quantized`): per site the dense uint8 codes, per-group scale
and zero, the sorted flat ids of the kept weights and their values (``lrm_interp.quantized/1``).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from lrm_interp.protect.masks import ProtectionMask
from lrm_interp._io import atomic_write_bytes

if TYPE_CHECKING:
    from lrm_interp.compress.quant.rtn import QuantizedTensor

SIDECAR_FORMAT = "lrm_interp.sidecar/1"


def full_modules(masks: Mapping[str, ProtectionMask], *, warn: bool = True) -> list[str]:
    """Names of the sites protected entirely, in the masks' order.

    Sites with a partial (element/row/column) mask cannot be expressed by module-level
    tools: they are left out, and a ``UserWarning`` says how many (``warn=False`` to silence).
    """
    full = [n for n, m in masks.items() if m.is_full]
    partial = partial_modules(masks)
    if partial and warn:
        n = sum(masks[k].n_protected for k in partial)
        warnings.warn(f"{len(partial)} sites with partial masks ({n} protected weights, e.g. {partial[0]}) are not "
                      "expressible as module exclusions and are not exported; use save_sidecar", stacklevel=3)
    return full


def partial_modules(masks: Mapping[str, ProtectionMask]) -> list[str]:
    """Sites with some but not all weights protected."""
    return [n for n, m in masks.items() if m.n_protected and not m.is_full]


def llmcompressor_ignore(masks: Mapping[str, ProtectionMask], *, keep_lm_head: bool = True) -> list[str]:
    """llm-compressor ``ignore`` list: exact module names (``lm_head`` first, as its examples do)."""
    return (["lm_head"] if keep_lm_head else []) + full_modules(masks)


def llmcompressor_recipe_dict(masks: Mapping[str, ProtectionMask], *, scheme: str = "W4A16",
                              modifier: str = "GPTQModifier", targets: str = "Linear",
                              keep_lm_head: bool = True) -> dict:
    """The recipe as a dict ``{"quant_stage": {"quant_modifiers": {modifier: {...}}}}``."""
    return {"quant_stage": {"quant_modifiers": {modifier: {
        "targets": [targets], "scheme": scheme, "ignore": llmcompressor_ignore(masks, keep_lm_head=keep_lm_head)}}}}


def llmcompressor_recipe(masks: Mapping[str, ProtectionMask], *, scheme: str = "W4A16",
                         modifier: str = "GPTQModifier", targets: str = "Linear", keep_lm_head: bool = True) -> str:
    """A YAML recipe for llm-compressor's ``oneshot(recipe=...)`` with the protected modules ignored.

    Names are JSON-quoted (valid YAML scalars).
    """
    ignore = llmcompressor_ignore(masks, keep_lm_head=keep_lm_head)
    lines = ["quant_stage:", "  quant_modifiers:", f"    {modifier}:", f"      targets: [{json.dumps(targets)}]",
             f"      scheme: {scheme}", "      ignore:"]
    lines += [f"        - {json.dumps(n)}" for n in ignore]
    return "\n".join(lines) + "\n"


def gptqmodel_dynamic(masks: Mapping[str, ProtectionMask]) -> dict[str, dict]:
    """GPTQModel ``QuantizeConfig(dynamic=...)`` entries: ``"-:<regex>"`` skips matching modules.

    Each regex is the escaped, anchored full module name (``^model\\.layers\\.1\\.mlp\\.up_proj$``).
    """
    return {f"-:^{re.escape(n)}$": {} for n in full_modules(masks)}


def modules_to_not_convert(masks: Mapping[str, ProtectionMask], *, keep_lm_head: bool = True) -> list[str]:
    """For transformers quantization configs (``modules_to_not_convert``, bitsandbytes
    ``llm_int8_skip_modules``). transformers matches these as substrings / name prefixes of
    module paths: full dotted paths are exact for HF decoder names."""
    return (["lm_head"] if keep_lm_head else []) + full_modules(masks)


def save_sidecar(model: torch.nn.Module, masks: Mapping[str, ProtectionMask], path: str | Path, *,
                 value_dtype: torch.dtype = torch.float16) -> Path:
    """Store the original values (FP16 by default) of the protected weights, read from ``model``.

    Format ``lrm_interp.sidecar/1`` (see module docs): per site ``<site>.rowptr`` int64
    ``[out+1]``, ``<site>.cols`` int16 (``in ≤ 32767``) or int32, ``<site>.values``; JSON
    metadata ``sites = {site: [out, in]}`` and ``value_dtype``. Atomic write, no pickle.
    """
    from safetensors.torch import save

    from lrm_interp.model.weights import weight_matrix
    from lrm_interp.model.sites import get_module

    tensors, info = {}, {}
    for name, m in masks.items():
        W = weight_matrix(get_module(model, name)).detach().cpu()
        if tuple(W.shape) != tuple(m.shape):
            raise ValueError(f"mask of {name} has shape {tuple(m.shape)}, weight {tuple(W.shape)}")
        out, inn = m.shape
        flat = m.flat_indices()
        rows, cols = flat // inn, flat % inn
        rowptr = torch.zeros(out + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(torch.bincount(rows, minlength=out), 0)
        tensors[f"{name}.rowptr"] = rowptr
        tensors[f"{name}.cols"] = cols.to(torch.int16 if inn <= 32767 else torch.int32).contiguous()
        tensors[f"{name}.values"] = W.flatten()[flat].to(value_dtype).contiguous()
        info[name] = [out, inn]
    meta = {"format": SIDECAR_FORMAT, "sites": json.dumps(info), "value_dtype": str(value_dtype).replace("torch.", "")}
    atomic_write_bytes(Path(path), save(tensors, metadata=meta))
    return Path(path)


def apply_sidecar_(model: torch.nn.Module, path: str | Path) -> int:
    """Write the sidecar's values back into ``model``'s weights; returns how many."""
    from safetensors import safe_open

    from lrm_interp.model.weights import set_weight_matrix, weight_matrix
    from lrm_interp.model.sites import get_module

    n = 0
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{path}: not an lrm_interp sidecar (format {meta.get('format')!r})")
        for name, (out, inn) in json.loads(meta["sites"]).items():
            rowptr, cols = f.get_tensor(f"{name}.rowptr"), f.get_tensor(f"{name}.cols").long()
            vals = f.get_tensor(f"{name}.values")
            if rowptr.numel() != out + 1 or int(rowptr[-1]) != cols.numel() or cols.numel() != vals.numel():
                raise ValueError(f"{path}: corrupt sidecar entry for {name}")
            rows = torch.repeat_interleave(torch.arange(out), rowptr[1:] - rowptr[:-1])
            mod = get_module(model, name)
            W = weight_matrix(mod).clone()
            if tuple(W.shape) != (out, inn):
                raise ValueError(f"{path}: {name} is [{out}, {inn}] in the sidecar but {tuple(W.shape)} in the model")
            W[rows.to(W.device), cols.to(W.device)] = vals.to(device=W.device, dtype=W.dtype)
            set_weight_matrix(mod, W)
            n += vals.numel()
    return n


QUANTIZED_FORMAT = "lrm_interp.quantized/1"


def save_quantized(tensors: Mapping[str, "QuantizedTensor"], path: str | Path, *, metadata: dict | None = None) -> Path:
    """Store :class:`~lrm_interp.compress.quant.QuantizedTensor` s (codes uint8, scale, zero, kept ids and
    values) per site as ``<site>::<part>``; JSON metadata per site: bits, group_size, dtype."""
    from safetensors.torch import save

    out, info = {}, {}
    for name, q in tensors.items():
        out.update(q.to_tensors(f"{name}::"))
        info[name] = {"bits": q.bits, "group_size": q.group_size, "dtype": str(q.dtype).replace("torch.", "")}
    meta = {"format": QUANTIZED_FORMAT, "sites": json.dumps(info), "extra": json.dumps(metadata or {})}
    atomic_write_bytes(Path(path), save(out, metadata=meta))
    return Path(path)


def load_quantized(path: str | Path) -> tuple[dict[str, "QuantizedTensor"], dict]:
    """Inverse of :func:`save_quantized`: ``({site: QuantizedTensor}, extra metadata)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lrm_interp.compress.quant.rtn import QuantizedTensor

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != QUANTIZED_FORMAT:
        raise ValueError(f"{path}: not an lrm_interp quantized file (format {meta.get('format')!r})")
    flat = load_file(str(path))
    out = {}
    for name, d in json.loads(meta["sites"]).items():
        out[name] = QuantizedTensor.from_tensors(flat, bits=d["bits"], group_size=d["group_size"],
                                                 dtype=getattr(torch, d["dtype"]), prefix=f"{name}::")
    return out, json.loads(meta.get("extra", "{}"))
