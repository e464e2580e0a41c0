"""The quantization grid shared by every quantizer: argument checks, per-group parameter fit,
codes and dequantization.

Weights ``W [out, in]`` are quantized in groups of ``group_size`` consecutive input columns
(``None`` = one group per output row, i.e. per channel). Protected weights (``mask=True``)
are left out of the fit of scale and zero-point.

Asymmetric: over the unprotected weights of a group, ``lo = min(min w, 0)``,
``hi = max(max w, 0)``, ``scale = (hi − lo) / (2^b − 1)``, ``zero = round(−lo / scale)``.
Symmetric: ``scale = 2·max|w| / (2^b − 1)``, ``zero = 2^(b−1)``. Codes
``q = clamp(round(w / scale) + zero, 0, 2^b − 1)``; ``ŵ = (q − zero) · scale``. A group with
no unprotected weight (or all zeros) gets ``scale = 1``. Arithmetic is float32 on the
weight's device (CPU or GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch

from lrm_interp.checks import checked_arguments, shown_value

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class GroupParams:
    """Per-group quantization parameters: ``scale``, ``zero`` ``[out, n_groups]`` (float32),
    ``maxq = 2^bits − 1`` and ``group_size`` (``in`` for per channel)."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int
    group_size: int


def _whole(x: object) -> int | None:
    """``int(x)`` if ``x`` is a whole number (``3`` or ``3.0``; not a bool, NaN, inf or ``2.5``), else ``None``."""
    if isinstance(x, bool):
        return None
    try:
        n = int(x)  # type: ignore[call-overload]  # any object: a failed conversion is caught below
    except (TypeError, ValueError, OverflowError):
        return None
    return n if n == x else None


def check_bits(bits: int) -> int:
    """``int(bits)`` if it is a supported code width (2..8: codes are stored as uint8), else ``ValueError``."""
    n = _whole(bits)
    if n is None or not MIN_BITS <= n <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {shown_value(bits)}")
    return n


@overload
def check_group_size(group_size: int) -> int: ...
@overload
def check_group_size(group_size: None) -> None: ...
@overload
def check_group_size(group_size: int | None) -> int | None: ...
def check_group_size(group_size: int | None) -> int | None:
    """``group_size`` as an ``int`` if it is a positive whole number, ``None`` (per channel) as is;
    else ``ValueError``."""
    if group_size is None:
        return None
    n = _whole(group_size)
    if n is None or n <= 0:
        raise ValueError(f"group_size must be positive or None, got {shown_value(group_size)}")
    return n


def check_weight(W: torch.Tensor, bits: int, mask: torch.Tensor | None = None) -> None:
    """Validate a quantizer's arguments: ``bits`` (:func:`check_bits`), ``W`` 2-d ``[out, in]``
    and ``mask`` (bool ``[out, in]``) of the same shape; ``ValueError`` naming the offending shape."""
    check_bits(bits)
    if W.dim() != 2:
        raise ValueError(f"weight must be [out, in], got shape {tuple(W.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(W.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(W.shape)}")


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    """``[out, in]`` → ``[out, n_groups, g]`` (the last group zero-padded)."""
    out, inn = x.shape
    pad = (-inn) % g
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(out, -1, g)


@checked_arguments
def fit_params(
    W: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    mask: torch.Tensor | None = None,
) -> GroupParams:
    """Fit scale/zero ``[out, n_groups]`` per group of ``W [out, in]`` on its unprotected weights only
    (``mask`` bool ``[out, in]``, ``True`` = protected). A ``group_size`` of ``in`` or more is one
    group per row, as ``None`` (the parameters' ``group_size`` is then ``in``)."""
    check_weight(W, bits, mask)
    out, inn = W.shape
    # a group wider than the row is the row (per channel): padding it to ``group_size`` columns gave the
    # same numbers and made ``--group-size 100000`` run for minutes (H26-GSHUGE)
    g = inn if group_size is None else min(check_group_size(group_size), inn)
    w = _grouped(W.float(), g)
    valid = _grouped(torch.ones(out, inn, dtype=torch.bool, device=W.device), g)
    if mask is not None:
        valid = valid & ~_grouped(mask.to(device=W.device, dtype=torch.bool), g)
    big = torch.finfo(torch.float32).max
    wmin = torch.where(valid, w, torch.full_like(w, big)).amin(-1).clamp_max(0)
    wmax = torch.where(valid, w, torch.full_like(w, -big)).amax(-1).clamp_min(0)
    empty = ~valid.any(-1)
    wmin = torch.where(empty, torch.zeros_like(wmin), wmin)
    wmax = torch.where(empty, torch.zeros_like(wmax), wmax)
    maxq = 2 ** int(bits) - 1
    if symmetric:
        scale = 2 * torch.maximum(wmax, -wmin) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        scale = (wmax - wmin) / maxq
        zero = torch.round(-wmin / scale.clamp_min(1e-30))
    ok = scale > 0
    scale = torch.where(ok, scale, torch.ones_like(scale))
    if not symmetric:
        zero = torch.where(ok, zero, torch.zeros_like(zero))
    return GroupParams(scale, zero, maxq, g)


def quantize_with(W: torch.Tensor, p: GroupParams) -> torch.Tensor:
    """Integer codes ``[out, in]`` (uint8) of ``W [out, in]`` under parameters ``p``."""
    out, inn = W.shape
    w = _grouped(W.float(), p.group_size)
    q = torch.clamp(torch.round(w / p.scale[..., None]) + p.zero[..., None], 0, p.maxq)
    return q.reshape(out, -1)[:, :inn].to(torch.uint8)


def dequantize_with(q: torch.Tensor, p: GroupParams) -> torch.Tensor:
    """Float32 ``(q − zero) · scale`` ``[out, in]`` of codes ``q [out, in]``."""
    out, inn = q.shape
    qg = _grouped(q.float(), p.group_size)
    return ((qg - p.zero[..., None]) * p.scale[..., None]).reshape(out, -1)[:, :inn]
