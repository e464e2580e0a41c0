"""Scale-aware saliency: the gain of keeping a weight in FP16 *including the re-fit of its
group's scale and zero-point*.

The per-weight terms of :mod:`lrm_interp.protect.saliency` (``|G| · |W − Q(W)|``) assume the
grid does not move when a weight is protected. It does: the grid of a group is fitted on its
unprotected weights (:func:`lrm_interp.compress.quant.grid.fit_params`), so protecting a
group's extreme weight shrinks the step for all the others — which magnitude picks by
construction and the per-weight terms ignore (docs/protection.md).

Cost of a group ``w [g]`` with protected set ``P`` and per-weight importance ``a = |G|``::

    C(P) = Σ_{j ∉ P} a_j · |w_j − Q_P(w_j)|          (Q_P: RTN on the grid fitted without P)

Only the weights that fix the grid change it when removed: ``max |w|`` (symmetric) or the
current min / max (asymmetric). For each group a *chain* of up to ``chain`` such weights is
built greedily — at each step the extreme whose removal gives the lower cost (symmetric: the
largest ``|w|``) — with exact marginal gains ``b_t = C(P_{t−1}) − C(P_t)``, every re-fit
computed. A chain can only be taken in order, so its gains are replaced by their
non-increasing isotonic fit (:func:`decreasing_isotonic`: chains whose later steps gain more
are pooled at their average rate); a global top-k over the result then takes a prefix of
each chain. Every other weight keeps its plain ``a_j · |w_j − Q_∅(w_j)|``.
"""

from __future__ import annotations

from typing import cast

import torch

from lrm_interp.checks import checked_arguments, shown_value
from lrm_interp.compress.quant.grid import check_weight, dequantize_with, fit_params, quantize_with

ROWS_PER_CHUNK = 1 << 16
"""Groups processed at once (memory: a few ``[rows, group]`` float32 tensors)."""


@checked_arguments
def group_costs(
    w: torch.Tensor, a: torch.Tensor, protected: torch.Tensor, bits: int, *, symmetric: bool
) -> torch.Tensor:
    """``C(P)`` ``[R]`` of each row of ``w``, ``a``, ``protected`` ``[R, g]`` (one group per row):
    ``Σ_{j∉P} a_j |w_j − Q_P(w_j)|`` with the grid fitted on the unprotected weights."""
    p = fit_params(w, bits, group_size=w.shape[1], symmetric=symmetric, mask=protected)
    err = (w - dequantize_with(quantize_with(w, p), p)).abs()
    return (a * err * ~protected).sum(-1)


def decreasing_isotonic(b: torch.Tensor) -> torch.Tensor:
    """Least-squares non-increasing fit ``[R, K]`` of each row of ``b [R, K]`` (equal weights):
    ``x_t = min_{i ≤ t} max_{j ≥ t} mean(b_i..b_j)`` (the min–max formula of isotonic
    regression; tested against pool-adjacent-violators)."""
    R, K = b.shape
    B = torch.cat([torch.zeros(R, 1, dtype=b.dtype, device=b.device), b.cumsum(-1)], -1)  # B[:, t] = Σ_{<t}
    out = torch.empty_like(b)
    for t in range(K):
        best: torch.Tensor | None = None
        for i in range(t + 1):
            inner = torch.stack([(B[:, j + 1] - B[:, i]) / (j - i + 1) for j in range(t, K)], -1).amax(-1)
            best = inner if best is None else torch.minimum(best, inner)
        out[:, t] = cast(torch.Tensor, best)  # range(t + 1) is never empty
    return out


def _chain_rows(
    w: torch.Tensor, a: torch.Tensor, pad: torch.Tensor, bits: int, symmetric: bool, chain: int
) -> torch.Tensor:
    """Saliency ``[R, g]`` of rows-as-groups ``w``, ``a`` (``pad`` marks padding, never chosen)."""
    p0 = fit_params(w, bits, group_size=w.shape[1], symmetric=symmetric, mask=pad)
    sal = a * (w - dequantize_with(quantize_with(w, p0), p0)).abs()
    sal = torch.where(pad, torch.zeros_like(sal), sal)
    prot = pad.clone()
    cost = group_costs(w, a, prot, bits, symmetric=symmetric)
    big = torch.finfo(torch.float32).max
    rows = torch.arange(w.shape[0], device=w.device)
    gains, picks, alive = [], [], []
    for _ in range(chain):
        live = (~prot).any(-1)
        if symmetric:
            cands = [torch.where(prot, torch.full_like(w, -1.0), w.abs()).argmax(-1)]
        else:
            cands = [
                torch.where(prot, torch.full_like(w, -big), w).argmax(-1),
                torch.where(prot, torch.full_like(w, big), w).argmin(-1),
            ]
        best_cost: torch.Tensor | None = None
        best_idx: torch.Tensor | None = None
        for idx in cands:
            trial = prot.clone()
            trial[rows, idx] = True
            c = group_costs(w, a, trial, bits, symmetric=symmetric)
            if best_cost is None or best_idx is None:  # the first candidate (both are set together)
                best_cost, best_idx = c, idx
            else:
                better = c < best_cost
                best_cost, best_idx = torch.where(better, c, best_cost), torch.where(better, idx, best_idx)
        assert best_cost is not None and best_idx is not None  # cands is never empty
        gains.append(torch.where(live, cost - best_cost, torch.zeros_like(cost)))
        picks.append(best_idx)
        alive.append(live)
        prot[rows[live], best_idx[live]] = True
        cost = torch.where(live, best_cost, cost)
    if not gains:
        return sal
    smooth = decreasing_isotonic(torch.stack(gains, -1))
    for t in range(len(gains) - 1, -1, -1):  # later picks first, so a repeated index keeps its first step
        live = alive[t]
        sal[rows[live], picks[t][live]] = smooth[live, t]
    return sal


@checked_arguments
def scale_aware_saliency(
    W: torch.Tensor,
    G: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    chain: int = 4,
) -> torch.Tensor:
    """Scale-aware saliency ``[out, in]`` (float32) of ``W [out, in]`` with importance ``|G| [out, in]``
    (module docs): plain ``|G|·|W − Q(W)|`` except the first ``chain`` grid-fixing weights of each
    group, which get their (isotonic) exact gain including the re-fit of the group's grid."""
    check_weight(W, bits)
    if tuple(G.shape) != tuple(W.shape):
        raise ValueError(f"gradient shape {tuple(G.shape)} != weight shape {tuple(W.shape)}")
    if chain < 0:
        raise ValueError(f"chain must be >= 0, got {shown_value(chain)}")
    out, inn = W.shape
    g = inn if group_size is None else int(group_size)
    if g <= 0:
        raise ValueError(f"group_size must be positive or None, got {shown_value(group_size)}")
    padn = (-inn) % g
    w = torch.nn.functional.pad(W.float(), (0, padn)).reshape(-1, g)
    a = torch.nn.functional.pad(G.float().abs(), (0, padn)).reshape(-1, g)
    pad = torch.nn.functional.pad(
        torch.zeros(out, inn, dtype=torch.bool, device=W.device), (0, padn), value=True
    ).reshape(-1, g)
    parts = [
        _chain_rows(
            w[r : r + ROWS_PER_CHUNK], a[r : r + ROWS_PER_CHUNK], pad[r : r + ROWS_PER_CHUNK], bits, symmetric, chain
        )
        for r in range(0, w.shape[0], ROWS_PER_CHUNK)
    ]
    return torch.cat(parts).reshape(out, -1)[:, :inn].contiguous()
