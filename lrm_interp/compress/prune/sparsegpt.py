"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with OBS error feedback.

For ``W [out, in]`` and the input Hessian ``H = 2 XᵀX / n`` (the same Hessians as GPTQ,
:mod:`lrm_interp.compress.calibration`; damped by ``percdamp`` × mean diagonal; dead inputs
with ``H_jj = 0`` get ``H_jj = 1`` and their weights set to 0), let ``U`` be the upper Cholesky
factor of ``H⁻¹`` (:func:`lrm_interp.compress.common.prepare_obs`, shared with GPTQ). Columns
are processed left to right in blocks of ``blocksize``:

- mask selection: *unstructured* — at the start of each block, the ``round(sparsity · n)``
  weights of the block (all rows together, ``n`` = its unprotected weights) with the smallest
  ``w² / U_jj²`` are chosen; *N:M* — at every M-th column, the N smallest ``w² / U_jj²`` of the
  next M columns, per row;
- column ``i``: its pruned weights are set to 0 and the error ``(w − q) / U_ii`` is pushed onto the
  later columns ``j > i`` with coefficients ``U_ij`` (lazy batching: at once inside the block,
  accumulated for the columns after it) — exactly GPTQ's update with pruning for rounding.

Protected weights (``mask=True``) are never pruned, do not count in the budget, keep their
original value and receive no update. :func:`sparsegpt_prune_reference` is the same algorithm
without lazy batching (tests compare the two).
"""

from __future__ import annotations

from typing import cast

import torch

from lrm_interp.compress.common import check_pattern, prepare_obs


def _block_mask(W1: torch.Tensor, d: torch.Tensor, prot: torch.Tensor, sparsity: float) -> torch.Tensor:
    score = (W1**2 / d.reshape(1, -1) ** 2).masked_fill(prot, float("inf"))
    k = int(round(sparsity * int((~prot).sum())))
    m = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)  # contiguous: W1 may be a transposed copy
    if k > 0:
        idx = torch.argsort(score.flatten(), stable=True)[:k]
        m.view(-1)[idx] = True
    return m


def _nm_mask(Wg: torch.Tensor, d: torch.Tensor, prot: torch.Tensor, prunen: int) -> torch.Tensor:
    score = (Wg**2 / d.reshape(1, -1) ** 2).masked_fill(prot, float("inf"))
    idx = torch.argsort(score, dim=1, stable=True)[:, :prunen]
    m = torch.zeros_like(Wg, dtype=torch.bool).scatter_(1, idx, True)
    return m & ~prot  # rows with fewer than N free weights keep their protected ones


@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    *,
    prunen: int = 0,
    prunem: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pruned copy of ``W [out, in]`` (dtype and device kept) given ``H [in, in]``: unstructured
    at ``sparsity``, or N:M with ``prunen:prunem`` (e.g. 2:4); module docs."""
    check_pattern(sparsity, prunen, prunem)
    if prunem and blocksize % prunem:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M = {prunem}")
    W0, Wc, prot, U = prepare_obs(W, H, mask, percdamp)
    inn = W0.shape[1]
    for i1 in range(0, inn, blocksize):
        i2 = min(i1 + blocksize, inn)
        W1 = Wc[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        P1 = prot[:, i1:i2]
        # without an N:M pattern check_pattern made sure of a sparsity
        pm = (
            torch.zeros_like(W1, dtype=torch.bool)
            if prunem
            else _block_mask(W1, torch.diag(U1), P1, cast(float, sparsity))
        )
        for i in range(i2 - i1):
            if prunem and i % prunem == 0:
                j = min(i + prunem, i2 - i1)
                pm[:, i:j] = _nm_mask(W1[:, i:j], torch.diag(U1)[i:j], P1[:, i:j], prunen)
            w = W1[:, i]
            q = torch.where(pm[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i:] = torch.where(P1[:, i:], W0[:, i1 + i : i2], W1[:, i:])
            Err1[:, i] = err
        Wc[:, i1:i2] = Q1
        Wc[:, i2:] -= Err1 @ U[i1:i2, i2:]
        Wc[:, i2:] = torch.where(prot[:, i2:], W0[:, i2:], Wc[:, i2:])
    out = torch.where(prot, W0, Wc).to(W.dtype)
    return out


@torch.no_grad()
def sparsegpt_prune_reference(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    *,
    prunen: int = 0,
    prunem: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Slow reference of :func:`sparsegpt_prune`: the same selection, every update applied to all
    later columns immediately (no lazy batching), element by element in float64."""
    check_pattern(sparsity, prunen, prunem)
    W0, Wc, prot, U = prepare_obs(W, H, mask, percdamp)
    W0, Wc, U = W0.double(), Wc.double(), U.double()
    out, inn = Wc.shape
    pruned = torch.zeros_like(prot)
    for i in range(inn):
        if not prunem and i % blocksize == 0:
            i2 = min(i + blocksize, inn)
            frac = cast(float, sparsity)  # set without an N:M pattern (check_pattern)
            pruned[:, i:i2] = _block_mask(Wc[:, i:i2].float(), torch.diag(U)[i:i2].float(), prot[:, i:i2], frac)
        if prunem and i % prunem == 0:
            j = min(i + prunem, inn)
            pruned[:, i:j] = _nm_mask(Wc[:, i:j].float(), torch.diag(U)[i:j].float(), prot[:, i:j], prunen)
        for r in range(out):
            if not pruned[r, i]:
                continue
            e = Wc[r, i] / U[i, i]
            Wc[r, i] = 0.0
            for j in range(i + 1, inn):
                if not prot[r, j]:
                    Wc[r, j] -= e * U[i, j]
    return torch.where(prot, W0, Wc).to(W.dtype)


__all__ = ["sparsegpt_prune", "sparsegpt_prune_reference"]
