"""Reading and writing a linear site's weight as ``[out, in]``, whatever the module stores.

GPT-2's ``Conv1D`` keeps its weight as ``[in, out]``; every other linear (``nn.Linear`` and
the quantized layers lrm_interp writes into) as ``[out, in]``. Masks, saliencies,
quantizers and pruning all work in the ``[out, in]`` layout through these helpers.
"""

from __future__ import annotations

from typing import Any, cast

import torch


def _transposed(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The module's weight as ``[out, in]`` (a view of the stored data, no copy)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no dense `weight` tensor (a packed quantized layer?)")
    return w.data.T if _transposed(module) else w.data


def set_weight_matrix(module: torch.nn.Module, w: torch.Tensor) -> None:
    """Copy ``w [out, in]`` into the module's weight, in place (dtype and device of the module kept)."""
    cast(torch.Tensor, module.weight).data.copy_(w.T if _transposed(module) else w)  # a dense linear weight


def dense_mask(mask: Any, shape: tuple[int, int]) -> torch.Tensor | None:
    """A bool ``[out, in]`` tensor from a bool tensor or a mask object with ``.dense()`` (``None`` stays ``None``)."""
    if mask is None:
        return None
    m = mask.dense() if hasattr(mask, "dense") else torch.as_tensor(mask)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"mask shape {tuple(m.shape)} != weight shape {tuple(shape)}")
    return m.to(torch.bool)


__all__ = ["weight_matrix", "set_weight_matrix", "dense_mask"]
