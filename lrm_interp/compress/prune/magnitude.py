"""Unstructured magnitude pruning of linear sites (per module: the smallest |W| are zeroed)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from lrm_interp.model.provenance import record_compression
from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix
from lrm_interp.model.sites import Site, get_module, resolve_sites


def prune_magnitude_(model: torch.nn.Module, sparsity: float, *, sites: Sequence[Site | str] | str | None = None,
                     masks: Mapping[str, object] | None = None) -> dict:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of every site, in place.

    Protected weights (``masks``: bool ``[out, in]`` or ProtectionMask per site) are never
    pruned and do not count towards the budget. Returns ``{"pruned": n, "weights": N}``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = dict(masks or {})
    n_pruned = n_total = 0
    for s in resolve_sites(model, sites):
        mod = get_module(model, s.name)
        W = weight_matrix(mod)
        prot = dense_mask(masks.get(s.name), tuple(W.shape))
        free = W.abs().flatten().float()
        if prot is not None:
            free = free.masked_fill(prot.flatten(), float("inf"))
        k = int(round(sparsity * (W.numel() - (int(prot.sum()) if prot is not None else 0))))
        if k > 0:
            idx = torch.argsort(free, stable=True)[:k]
            flat = W.flatten().clone()
            flat[idx] = 0
            set_weight_matrix(mod, flat.view_as(W))
        n_pruned += k
        n_total += W.numel()
    record_compression(model, "pruning", method="magnitude", sparsity=sparsity, pruned=n_pruned, weights=n_total,
                       protected_sites=len(masks))
    return {"pruned": n_pruned, "weights": n_total}
