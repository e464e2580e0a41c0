"""Mask-aware GPTQ (Frantar et al. 2022): column-by-column quantization with error feedback.

For ``W [out, in]`` and the input Hessian ``H = 2 XᵀX / n`` (``X [n, in]`` calibration inputs
of the site; damped by ``percdamp`` × mean diagonal; dead inputs with ``H_jj = 0`` get
``H_jj = 1`` and their unprotected weights set to 0), let ``U`` be the upper Cholesky factor of
``H⁻¹`` (:func:`lrm_interp.compress.common.prepare_obs`, shared with SparseGPT). Columns are
quantized left to right; the error of column ``i`` divided by ``U_ii`` is pushed onto the
not-yet-quantized columns ``j > i`` with coefficients ``U_ij``. Lazy batching: inside a block
of ``blocksize`` columns updates are applied at once per column; updates to the columns after
the block are accumulated and applied when the block ends. Group parameters are fitted when a
group starts, on the group's weights including every update pushed so far (pending lazy updates
are applied first), so the result does not depend on ``blocksize`` (checked against a loop
reference in tests).

Protected weights (``mask=True``): excluded from every group fit, kept at their original
value, contribute zero error (nothing is pushed from them) and receive no update (they are
reset to their original value after each update). The error of an unprotected weight flows
only to unprotected, not-yet-quantized weights of the same row.

Hessians come from :func:`lrm_interp.compress.calibration.collect_hessians`; the model-level
run (layer by layer, :func:`lrm_interp.compress.calibration.layer_hessians`) is
:func:`lrm_interp.compress.quant.apply.quantize_model_` with ``method="gptq"``.
"""

from __future__ import annotations

import torch

from lrm_interp.checks import checked_arguments, shown_value
from lrm_interp.compress.common import prepare_obs
from lrm_interp.compress.quant.format import QuantizedTensor
from lrm_interp.compress.quant.grid import GroupParams, check_weight, fit_params


def _gptq_core(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    mask: torch.Tensor | None,
    blocksize: int,
    percdamp: float,
):
    """Returns ``(codes uint8 [out, in], scale, zero [out, n_groups], g, dequantized float32 with kept values)``."""
    check_weight(W, bits, mask)
    W0, Wq, prot, U = prepare_obs(W, H, mask, percdamp)
    out, inn = W0.shape
    g = inn if group_size is None else int(group_size)
    if g <= 0:
        raise ValueError(f"group_size must be positive or None, got {shown_value(group_size)}")
    n_groups = -(-inn // g)
    scale = torch.ones(out, n_groups, device=W0.device)
    zero = torch.zeros(out, n_groups, device=W0.device)
    codes = torch.zeros(out, inn, dtype=torch.uint8, device=W0.device)
    Q = torch.zeros_like(W0)
    maxq = 2 ** int(bits) - 1
    s: torch.Tensor  # the current group's scale and zero: set at its first column (col 0 first)
    z: torch.Tensor
    for i1 in range(0, inn, blocksize):
        i2 = min(i1 + blocksize, inn)
        W1 = Wq[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:
                end = min(col + g, inn)
                grp = W1[:, i : min(end - i1, i2 - i1)]
                if end > i2:  # the group reaches past this block: apply its pending lazy updates
                    rest = Wq[:, i2:end] - Err1[:, :i] @ U[i1 : i1 + i, i2:end]
                    rest = torch.where(prot[:, i2:end], W0[:, i2:end], rest)
                    grp = torch.cat([grp, rest], dim=1)
                p = fit_params(grp, bits, group_size=None, symmetric=symmetric, mask=prot[:, col:end])
                s, z = p.scale[:, 0], p.zero[:, 0]
                scale[:, col // g], zero[:, col // g] = s, z
            w = W1[:, i]
            qc = torch.clamp(torch.round(w / s) + z, 0, maxq)
            codes[:, col] = qc.to(torch.uint8)
            p_col = prot[:, col]
            q = torch.where(p_col, W0[:, col], (qc - z) * s)
            Q[:, col] = q
            err = torch.where(p_col, torch.zeros_like(w), (w - q) / U1[i, i])
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            W1[:, i:] = torch.where(prot[:, col:i2], W0[:, col:i2], W1[:, i:])
            Err1[:, i] = err
        Wq[:, i2:] -= Err1 @ U[i1:i2, i2:]
        Wq[:, i2:] = torch.where(prot[:, i2:], W0[:, i2:], Wq[:, i2:])
    return codes, scale, zero, g, Q


@checked_arguments
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Fake-quantized copy of ``W [out, in]`` (dtype and device kept) given ``H [in, in]``;
    ``mask=True`` entries bit-exact."""
    *_, Q = _gptq_core(W, H, bits, group_size, symmetric, mask, blocksize, percdamp)
    Q = Q.to(W.dtype)
    if mask is not None:
        Q = torch.where(mask.to(device=W.device, dtype=torch.bool), W, Q)
    return Q


@checked_arguments
def gptq_quantize_tensor(
    W: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    scale_dtype: torch.dtype = torch.float32,
    value_dtype: torch.dtype | None = None,
) -> QuantizedTensor:
    """GPTQ of ``W [out, in]`` given ``H [in, in]`` returning the uint8 codes, per-group parameters
    ``[out, n_groups]`` and the kept values (:class:`~lrm_interp.compress.quant.format.QuantizedTensor`);
    its ``dequantize()`` equals :func:`gptq_quantize` bit for bit."""
    codes, scale, zero, g, _ = _gptq_core(W, H, bits, group_size, symmetric, mask, blocksize, percdamp)
    p = GroupParams(scale, zero, 2 ** int(bits) - 1, g)
    m = None if mask is None else mask.to(device=W.device, dtype=torch.bool)
    return QuantizedTensor.from_params(W, codes, p, m, bits, scale_dtype=scale_dtype, value_dtype=value_dtype)
