"""Unstructured magnitude pruning of one weight: the smallest ``|W|`` of the whole matrix are zeroed.

The model-level runs are :func:`lrm_interp.compress.prune.prune_model_` (``method="magnitude"``)
and its shorthand :func:`lrm_interp.compress.prune.prune_magnitude_`.
"""

from __future__ import annotations

import torch

from lrm_interp.compress.common import check_pattern


@torch.no_grad()
def magnitude_prune(W: torch.Tensor, sparsity: float, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pruned copy of ``W [out, in]``: the ``round(sparsity · n_free)`` smallest-magnitude
    unprotected weights zeroed (ties: the first in row-major order). Protected weights (``mask``
    bool ``[out, in]``, ``True`` = protected) are never pruned and do not count in the budget."""
    check_pattern(sparsity, 0, 0)
    prot = None if mask is None else mask.to(device=W.device, dtype=torch.bool)
    free = W.abs().flatten().float()
    if prot is not None:
        free = free.masked_fill(prot.flatten(), float("inf"))
    k = int(round(sparsity * (W.numel() - (int(prot.sum()) if prot is not None else 0))))
    flat = W.flatten().clone()
    if k > 0:
        flat[torch.argsort(free, stable=True)[:k]] = 0
    return flat.view_as(W)


__all__ = ["magnitude_prune"]
