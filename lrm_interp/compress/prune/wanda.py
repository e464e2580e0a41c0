"""Wanda (Sun et al. 2024): prune by ``|W_ij| · ‖X_j‖₂`` within each output row, no weight update.

``‖X_j‖₂`` is the norm of input feature ``j`` over the calibration tokens; with the Hessians of
:mod:`lrm_interp.compress.calibration` (``H = 2 XᵀX / n``) it is ``sqrt(n · H_jj / 2)``, a
per-site constant times ``sqrt(H_jj)``, so ranking by ``|W_ij| · sqrt(H_jj)`` within a row is
Wanda's ranking (:func:`input_norms_from_hessian`). Per row the ``floor(sparsity · n_free)``
smallest scores are zeroed (Wanda's per-output comparison group); N:M: the N smallest of every
M consecutive inputs per row. Protected weights (``mask=True``) are never pruned and do not
count in the budget. :func:`wanda_prune_reference` is a row-by-row loop for tests.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from lrm_interp.compress.common import check_pattern


def input_norms_from_hessian(H: torch.Tensor) -> torch.Tensor:
    """``sqrt(diag(H))`` ``[in]``: proportional to ``‖X_j‖₂`` for ``H = 2 XᵀX / n``."""
    return torch.sqrt(torch.clamp(torch.diag(H).float(), min=0))


@torch.no_grad()
def wanda_scores(W: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``|W| · norms[None, :]`` ``[out, in]`` (float32)."""
    return W.detach().float().abs() * norms.to(W.device).float().reshape(1, -1)


@torch.no_grad()
def wanda_prune(
    W: torch.Tensor,
    norms: torch.Tensor,
    sparsity: float | None = None,
    *,
    prunen: int = 0,
    prunem: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pruned copy of ``W [out, in]`` given input norms ``[in]`` (module docs)."""
    check_pattern(sparsity, prunen, prunem)
    out, inn = W.shape
    if norms.numel() != inn:
        raise ValueError(f"{norms.numel()} input norms for a weight with {inn} inputs")
    prot = torch.zeros(out, inn, dtype=torch.bool, device=W.device) if mask is None else mask.to(W.device).bool()
    score = wanda_scores(W, norms).masked_fill(prot, float("inf"))
    pruned = torch.zeros_like(prot)
    if prunem:
        for j in range(0, inn, prunem):
            g = score[:, j : j + prunem]
            idx = torch.argsort(g, dim=1, stable=True)[:, :prunen]
            pruned[:, j : j + prunem].scatter_(1, idx, True)
        pruned &= ~prot
    else:
        k = torch.floor(cast(float, sparsity) * (~prot).sum(dim=1).double()).long()  # per row; set (check_pattern)
        order = torch.argsort(score, dim=1, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(inn, device=W.device).expand(out, inn))
        pruned = ranks < k.unsqueeze(1)
    return torch.where(pruned, torch.zeros_like(W), W)


@torch.no_grad()
def wanda_prune_reference(
    W: torch.Tensor,
    norms: torch.Tensor,
    sparsity: float | None = None,
    *,
    prunen: int = 0,
    prunem: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-by-row Python loop of :func:`wanda_prune` (ties broken by column index)."""
    check_pattern(sparsity, prunen, prunem)
    out, inn = W.shape
    Wn = W.detach().clone()
    nl = norms.tolist()
    for r in range(out):
        row = [(abs(float(W[r, j])) * nl[j], j) for j in range(inn) if mask is None or not bool(mask[r, j])]
        if prunem:
            for g0 in range(0, inn, prunem):
                grp = sorted(x for x in row if g0 <= x[1] < g0 + prunem)
                for _, j in grp[:prunen]:
                    Wn[r, j] = 0
        else:
            for _, j in sorted(row)[: math.floor(cast(float, sparsity) * len(row))]:  # set (check_pattern)
                Wn[r, j] = 0
    return Wn


__all__ = ["wanda_prune", "wanda_prune_reference", "wanda_scores", "input_norms_from_hessian"]
