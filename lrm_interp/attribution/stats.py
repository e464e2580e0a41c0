"""Small statistics used to validate and compare attributions."""

from __future__ import annotations

import torch


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (float64)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    vals, inv = torch.unique(x, return_inverse=True)
    sums = torch.zeros(vals.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
    cnts = torch.zeros(vals.numel(), dtype=torch.float64).index_add_(0, inv, torch.ones_like(ranks))
    return (sums / cnts)[inv]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally long 1-D tensors (NaN if either is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.numel() != rb.numel():
        raise ValueError(f"lengths differ: {ra.numel()} vs {rb.numel()}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = ra.norm() * rb.norm()
    return float((ra @ rb) / den) if den > 0 else float("nan")
