"""What the quantizers and pruners share below the model level.

- :func:`prepare_obs`: the common start of GPTQ (:mod:`lrm_interp.compress.quant.gptq`) and
  SparseGPT (:mod:`lrm_interp.compress.prune.sparsegpt`), both optimal-brain-surgeon updates
  driven by the input Hessian ``H = 2 XᵀX / n``: dead inputs (``H_jj = 0``) get ``H_jj = 1``
  and their unprotected weights set to 0; ``H`` is damped by ``percdamp`` × its mean diagonal;
  ``U`` is the upper Cholesky factor of ``H⁻¹`` (:func:`damped_inverse_cholesky`).
- :func:`check_nm` — the one N:M check (``0 < N < M``) — with :func:`parse_pattern`
  (``"2:4"`` → ``(2, 4)``) and :func:`check_pattern` (a kernel's sparsity or N:M arguments).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lrm_interp.checks import shown_value


class ObsProblem(NamedTuple):
    """The float32 inputs of an OBS update of ``W [out, in]`` (all on ``W``'s device)."""

    # the field comments are aligned as a table
    # fmt: off
    W0: torch.Tensor    #: the original weights
    W: torch.Tensor     #: a working copy with dead, unprotected inputs zeroed
    prot: torch.Tensor  #: bool ``[out, in]``, ``True`` = protected
    U: torch.Tensor     #: upper Cholesky factor of the damped ``H⁻¹`` ``[in, in]``
    # fmt: on


def damped_inverse_cholesky(H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: ``U`` the upper Cholesky factor of ``(H' + percdamp · mean diag(H') · I)⁻¹``
    where ``H'`` is ``H`` (float32, not modified) with ``H'_jj = 1`` on the dead inputs
    ``dead = diag(H) == 0`` (bool ``[in]``)."""
    H = H.to(dtype=torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    return U, dead


def prepare_obs(W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor | None, percdamp: float) -> ObsProblem:
    """Check shapes and set up an OBS update of ``W [out, in]`` with ``H [in, in]`` (module docs);
    ``mask``: bool ``[out, in]``, ``True`` = protected (kept as is, even on dead inputs)."""
    W0 = W.detach().float().clone()
    out, inn = W0.shape
    if tuple(H.shape) != (inn, inn):
        raise ValueError(f"Hessian shape {tuple(H.shape)} != [{inn}, {inn}]")
    prot = torch.zeros_like(W0, dtype=torch.bool) if mask is None else mask.to(device=W0.device, dtype=torch.bool)
    if tuple(prot.shape) != (out, inn):
        raise ValueError(f"mask shape {tuple(prot.shape)} != weight shape {(out, inn)}")
    U, dead = damped_inverse_cholesky(H.to(device=W0.device), percdamp)
    Wc = W0.clone()
    Wc[:, dead] = torch.where(prot[:, dead], Wc[:, dead], torch.zeros_like(Wc[:, dead]))
    return ObsProblem(W0, Wc, prot, U)


def check_nm(n: int, m: int) -> None:
    """``ValueError`` unless ``0 < n < m`` (an N:M pattern: n of every m consecutive inputs zeroed)."""
    if not 0 < n < m:
        raise ValueError(f"N:M pattern needs 0 < N < M, got {n}:{m}")


def parse_pattern(pattern: str | None) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; ``None`` / ``""`` / ``"unstructured"`` → ``(0, 0)``."""
    if pattern in (None, "", "unstructured"):
        return 0, 0
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError as e:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' like '2:4', got {pattern!r}") from e
    check_nm(n, m)
    return n, m


def check_pattern(sparsity: float | None, prunen: int, prunem: int) -> None:
    """A pruning kernel's target: an N:M pattern (``prunen:prunem``, :func:`check_nm`) or, when
    both are 0, an unstructured ``sparsity`` in ``[0, 1)``."""
    if prunen or prunem:
        check_nm(prunen, prunem)
    elif sparsity is None or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {shown_value(sparsity)}")


__all__ = ["ObsProblem", "damped_inverse_cholesky", "prepare_obs", "check_nm", "parse_pattern", "check_pattern"]
