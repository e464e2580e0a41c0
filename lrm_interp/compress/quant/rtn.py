"""Mask-aware round-to-nearest (RTN) weight quantization on the grid of :mod:`.grid`.

Each group's scale and zero-point are fitted on its unprotected weights
(:func:`~lrm_interp.compress.quant.grid.fit_params`); every weight is rounded to the nearest
code; protected weights (``mask=True``) are returned bit-exact. The result is cast back to
the weight's dtype.
"""

from __future__ import annotations

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.compress.quant.format import QuantizedTensor
from lrm_interp.compress.quant.grid import dequantize_with, fit_params, quantize_with


@checked_arguments
def rtn_quantize(
    W: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantized copy of ``W [out, in]`` (same dtype and device); ``mask=True`` entries
    (bool ``[out, in]``) bit-exact."""
    p = fit_params(W, bits, group_size=group_size, symmetric=symmetric, mask=mask)
    deq = dequantize_with(quantize_with(W, p), p).to(W.dtype)
    if mask is not None:
        deq = torch.where(mask.to(device=W.device, dtype=torch.bool), W, deq)
    return deq


@checked_arguments
def rtn_quantize_tensor(
    W: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
    scale_dtype: torch.dtype = torch.float32,
    value_dtype: torch.dtype | None = None,
) -> QuantizedTensor:
    """Like :func:`rtn_quantize` but returns the codes, parameters and kept values
    (:class:`~lrm_interp.compress.quant.format.QuantizedTensor`); its ``dequantize()`` equals
    :func:`rtn_quantize` bit for bit."""
    p = fit_params(W, bits, group_size=group_size, symmetric=symmetric, mask=mask)
    m = None if mask is None else mask.to(device=W.device, dtype=torch.bool)
    return QuantizedTensor.from_params(
        W, quantize_with(W, p), p, m, bits, scale_dtype=scale_dtype, value_dtype=value_dtype
    )
