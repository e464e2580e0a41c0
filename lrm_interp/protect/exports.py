"""Masks → configurations of real quantization toolchains.

Mainstream tools keep whole modules in 16 bits, not single weights, so module-level
exports take the sites whose mask is *full* (``granularity="full"``, e.g. from
``modules_by_score`` or ``final_mlp``); element-level masks go to the library's own
sidecar (:func:`save_sidecar`).

- llm-compressor: ``ignore=[...]`` of a modifier (module names; ``re:`` prefix = regex).
- GPTQModel: ``dynamic={"-:<regex>": {}}`` (``-:`` = skip the matching modules).
- transformers: ``modules_to_not_convert`` / ``llm_int8_skip_modules`` (name list).
- module-level mixed precision (:mod:`lrm_interp.protect.bit_allocation`): GPTQModel ``dynamic``
  ``"+:<regex>": {"bits": b, "group_size": g, "sym": s}`` for every module
  (:func:`gptqmodel_dynamic_bits`; the ``QuantizeConfig`` it assumes:
  :func:`gptqmodel_quantize_config`) and llm-compressor
  ``config_groups`` with one group per bit width (:func:`llmcompressor_config_groups`).

Sidecar format (safetensors, :func:`save_sidecar`, ``lrm_interp.sidecar/2``): the masks'
index tensors exactly as in the masks file (:func:`lrm_interp.protect.encoding.mask_tensors`:
``<site>::<part>`` per the site's index encoding) plus ``<site>::values`` — the original
values of the protected weights (FP16 by default) in sorted flat-id order ``r·in + c`` of
the ``[out, in]`` layout; JSON metadata ``format``, ``sites = {site: {"shape",
"granularity", "encoding"}}`` and ``value_dtype``. Apply with :func:`apply_sidecar_` after
loading a quantized model. (Packed quantized copies: :mod:`lrm_interp.compress.quant.format`.)
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from lrm_interp._io import dtype_to_str, read_safetensors, refuse_result_file, write_safetensors
from lrm_interp.checks import check_int, checked_arguments, user_stacklevel
from lrm_interp.model.sites import get_module
from lrm_interp.model.weights import set_weight_matrix, weight_matrix
from lrm_interp.protect.encoding import SEP, mask_tensors, masks_from_tensors
from lrm_interp.protect.masks import ProtectionMask

SIDECAR_FORMAT = "lrm_interp.sidecar/2"


@checked_arguments
def full_modules(masks: Mapping[str, ProtectionMask], *, warn: bool = True) -> list[str]:
    """Names of the sites protected entirely, in the masks' order.

    Sites with a partial (element/row/column) mask cannot be expressed by module-level
    tools: they are left out, and a ``UserWarning`` says how many (``warn=False`` to silence).
    """
    full = [n for n, m in masks.items() if m.is_full]
    partial = partial_modules(masks)
    if partial and warn:
        n = sum(masks[k].n_protected for k in partial)
        warnings.warn(
            f"{len(partial)} sites with partial masks ({n} protected weights, e.g. {partial[0]}) are not "
            "expressible as module exclusions and are not exported; use save_sidecar",
            stacklevel=user_stacklevel(),
        )
    return full


def partial_modules(masks: Mapping[str, ProtectionMask]) -> list[str]:
    """Sites with some but not all weights protected."""
    return [n for n, m in masks.items() if m.n_protected and not m.is_full]


@checked_arguments
def llmcompressor_ignore(masks: Mapping[str, ProtectionMask], *, keep_lm_head: bool = True) -> list[str]:
    """llm-compressor ``ignore`` list: exact module names (``lm_head`` first, as its examples do)."""
    return (["lm_head"] if keep_lm_head else []) + full_modules(masks)


@checked_arguments
def llmcompressor_recipe_dict(
    masks: Mapping[str, ProtectionMask],
    *,
    scheme: str = "W4A16",
    modifier: str = "GPTQModifier",
    targets: str = "Linear",
    keep_lm_head: bool = True,
) -> dict:
    """The recipe as a dict ``{"quant_stage": {"quant_modifiers": {modifier: {...}}}}``."""
    return {
        "quant_stage": {
            "quant_modifiers": {
                modifier: {
                    "targets": [targets],
                    "scheme": scheme,
                    "ignore": llmcompressor_ignore(masks, keep_lm_head=keep_lm_head),
                }
            }
        }
    }


@checked_arguments
def llmcompressor_recipe(
    masks: Mapping[str, ProtectionMask],
    *,
    scheme: str = "W4A16",
    modifier: str = "GPTQModifier",
    targets: str = "Linear",
    keep_lm_head: bool = True,
) -> str:
    """A YAML recipe for llm-compressor's ``oneshot(recipe=...)`` with the protected modules ignored.

    Names are JSON-quoted (valid YAML scalars).
    """
    ignore = llmcompressor_ignore(masks, keep_lm_head=keep_lm_head)
    lines = [
        "quant_stage:",
        "  quant_modifiers:",
        f"    {modifier}:",
        f"      targets: [{json.dumps(targets)}]",
        f"      scheme: {scheme}",
        "      ignore:",
    ]
    lines += [f"        - {json.dumps(n)}" for n in ignore]
    return "\n".join(lines) + "\n"


def gptqmodel_dynamic(masks: Mapping[str, ProtectionMask]) -> dict[str, dict]:
    """GPTQModel ``QuantizeConfig(dynamic=...)`` entries: ``"-:<regex>"`` skips matching modules.

    Each regex is the escaped, anchored full module name (``^model\\.layers\\.1\\.mlp\\.up_proj$``).
    """
    return {f"-:^{re.escape(n)}$": {} for n in full_modules(masks)}


def gptqmodel_quantize_config(alloc, *, default_bits: int) -> dict[str, int | bool]:
    """The GPTQModel ``QuantizeConfig`` arguments the allocation's grid assumes: ``{"bits":
    default_bits, "group_size": g, "sym": s}`` (``group_size`` ``-1`` = per channel, GPTQModel's
    spelling of the allocation's ``None``; ``sym``: its ``symmetric``). ``bits --gptqmodel`` prints
    it; the :func:`gptqmodel_dynamic_bits` entries name the same grid for every module, so a
    ``QuantizeConfig`` built otherwise still quantizes each module on the grid the allocation's
    errors and bits per weight were computed for. ``default_bits``: an integer in 2..8 (else
    ``ValueError``)."""
    check_int("default_bits", default_bits, min=2, max=8)
    return {"bits": int(default_bits), "group_size": _gptqmodel_group_size(alloc), "sym": bool(alloc.symmetric)}


def _gptqmodel_group_size(alloc) -> int:
    """GPTQModel's ``group_size`` of the allocation's grid (``-1``: per channel, ``group_size`` ``None``)."""
    return int(alloc.group_size) if alloc.group_size else -1


def gptqmodel_dynamic_bits(alloc, *, default_bits: int) -> dict[str, dict]:
    """GPTQModel ``QuantizeConfig(dynamic=...)`` for a module-level
    :class:`~lrm_interp.protect.bit_allocation.BitAllocation`: ``"+:^<name>$": {"bits": b,
    "group_size": g, "sym": s}`` for every quantized module (those at ``default_bits`` too: the
    grid, ``group_size`` ``-1`` = per channel and ``sym``, is the allocation's whatever the
    ``QuantizeConfig``; only the modules off ``default_bits`` were written, without ``sym``, so the
    others took the config's grid, H13-GQS), ``"-:^<name>$": {}`` for modules kept in FP16.
    ``default_bits``: the ``QuantizeConfig``'s own ``bits`` (:func:`gptqmodel_quantize_config`),
    an integer in 2..8 (else ``ValueError``)."""
    grid = gptqmodel_quantize_config(alloc, default_bits=default_bits)
    out: dict[str, dict] = {}
    for name, b in alloc.bits.items():
        key = f"^{re.escape(name)}$"
        if b == 16:
            out[f"-:{key}"] = {}
        else:
            out[f"+:{key}"] = {"bits": int(b), "group_size": grid["group_size"], "sym": grid["sym"]}
    return out


@checked_arguments
def llmcompressor_config_groups(alloc, *, keep_lm_head: bool = True) -> dict:
    """llm-compressor ``QuantizationModifier``/``GPTQModifier`` arguments for a module-level
    :class:`~lrm_interp.protect.bit_allocation.BitAllocation`: ``{"config_groups": {"w<b>": {"targets":
    ["re:^<name>$", ...], "weights": {...}}}, "ignore": [...]}`` — one weight-only integer group per
    bit width (group strategy, or channel when ``group_size`` is ``None``), FP16 modules and
    ``lm_head`` ignored."""
    groups: dict[str, dict] = {}
    for name, b in alloc.bits.items():
        if b == 16:
            continue
        g = groups.setdefault(
            f"w{b}",
            {
                "targets": [],
                "weights": {
                    "num_bits": int(b),
                    "type": "int",
                    "symmetric": bool(alloc.symmetric),
                    "strategy": "group" if alloc.group_size else "channel",
                    **({"group_size": int(alloc.group_size)} if alloc.group_size else {}),
                },
            },
        )
        g["targets"].append(f"re:^{re.escape(name)}$")
    ignore = (["lm_head"] if keep_lm_head else []) + [n for n, b in alloc.bits.items() if b == 16]
    return {"config_groups": dict(sorted(groups.items())), "ignore": ignore}


@checked_arguments
def modules_to_not_convert(masks: Mapping[str, ProtectionMask], *, keep_lm_head: bool = True) -> list[str]:
    """For transformers quantization configs (``modules_to_not_convert``, bitsandbytes
    ``llm_int8_skip_modules``). transformers matches these as substrings / name prefixes of
    module paths: full dotted paths are exact for HF decoder names."""
    return (["lm_head"] if keep_lm_head else []) + full_modules(masks)


@checked_arguments
def save_sidecar(
    model: torch.nn.Module,
    masks: Mapping[str, ProtectionMask],
    path: str | Path,
    *,
    value_dtype: torch.dtype = torch.float16,
    encoding: str = "auto",
    own: str | None = None,
) -> Path:
    """Store the original values (FP16 by default) of the protected weights, read from ``model``.

    Format ``lrm_interp.sidecar/2`` (module docs): the masks' index tensors (``encoding`` as in
    :func:`~lrm_interp.protect.encoding.save_masks`) and ``<site>::values [n_protected]``.
    Atomic write, no pickle. A ``path`` that is a file of another command's finished
    result is refused first (:func:`lrm_interp._io.refuse_result_file`, H9-PYW); ``own``: the kind
    of result whose own file this is.
    """
    refuse_result_file(path, own=own)
    tensors, info = mask_tensors(masks, encoding=encoding)
    for name, m in masks.items():
        W = weight_matrix(get_module(model, name)).detach()
        if tuple(W.shape) != tuple(m.shape):
            raise ValueError(f"mask of {name} has shape {tuple(m.shape)}, weight {tuple(W.shape)}")
        flat = m.flat_indices().to(W.device)
        inn = m.shape[1]
        tensors[f"{name}{SEP}values"] = W[flat // inn, flat % inn].to(value_dtype).cpu().contiguous()
    meta = {"format": SIDECAR_FORMAT, "sites": json.dumps(info), "value_dtype": dtype_to_str(value_dtype)}
    path = Path(path)
    write_safetensors(path, tensors, meta)
    return path


@checked_arguments
def apply_sidecar_(model: torch.nn.Module, path: str | Path) -> int:
    """Write the sidecar's values back into ``model``'s weights (any dtype/device); returns how many."""
    tensors, meta = read_safetensors(path, (SIDECAR_FORMAT,), "sidecar")
    masks = masks_from_tensors(tensors, json.loads(meta["sites"]), source=str(path))
    n = 0
    for name, m in masks.items():
        vals = tensors.get(f"{name}{SEP}values")
        if vals is None or vals.numel() != m.n_protected:
            raise ValueError(
                f"{path}: corrupt sidecar entry for {name} "
                f"({m.n_protected} protected weights, {None if vals is None else vals.numel()} values)"
            )
        mod = get_module(model, name)
        W = weight_matrix(mod).clone()
        if tuple(W.shape) != m.shape:
            raise ValueError(f"{path}: {name} is {list(m.shape)} in the sidecar but {list(W.shape)} in the model")
        flat = m.flat_indices().to(W.device)
        W[flat // m.shape[1], flat % m.shape[1]] = vals.to(device=W.device, dtype=W.dtype)
        set_weight_matrix(mod, W)
        n += vals.numel()
    return n
