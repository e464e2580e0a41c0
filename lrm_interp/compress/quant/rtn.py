"""Mask-aware round-to-nearest (RTN) weight quantization and the quantized-tensor container.

Weights ``W [out, in]`` are quantized in groups of ``group_size`` consecutive input columns
(``None`` = one group per output row, i.e. per-channel). Protected weights (``mask=True``)
are (1) left out of the fit of scale and zero-point and (2) returned bit-exact.

Asymmetric: over the unprotected weights of a group, ``lo = min(min w, 0)``,
``hi = max(max w, 0)``, ``scale = (hi − lo) / (2^b − 1)``, ``zero = round(−lo / scale)``.
Symmetric: ``scale = 2·max|w| / (2^b − 1)``, ``zero = 2^(b−1)``. Codes
``q = clamp(round(w / scale) + zero, 0, 2^b − 1)``; ``ŵ = (q − zero) · scale``. A group with
no unprotected weight (or all zeros) gets ``scale = 1``. Arithmetic is float32 on the
weight's device (CPU or GPU); the result is cast back to the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupParams:
    """Per-group quantization parameters: ``scale``, ``zero`` ``[out, n_groups]`` (float32) and ``maxq``."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int
    group_size: int


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    out, inn = x.shape
    pad = (-inn) % g
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(out, -1, g)


def _check(W: torch.Tensor, bits: int, mask: torch.Tensor | None) -> None:
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if W.dim() != 2:
        raise ValueError(f"weight must be [out, in], got shape {tuple(W.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(W.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(W.shape)}")


def fit_params(W: torch.Tensor, bits: int, *, group_size: int | None = 128, symmetric: bool = False,
               mask: torch.Tensor | None = None) -> GroupParams:
    """Fit scale/zero per group of ``W [out, in]`` on its unprotected weights only."""
    _check(W, bits, mask)
    out, inn = W.shape
    g = inn if group_size is None else int(group_size)
    if g <= 0:
        raise ValueError(f"group_size must be positive or None, got {group_size}")
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
    """Integer codes ``[out, in]`` (uint8) of ``W`` under parameters ``p``."""
    out, inn = W.shape
    w = _grouped(W.float(), p.group_size)
    q = torch.clamp(torch.round(w / p.scale[..., None]) + p.zero[..., None], 0, p.maxq)
    return q.reshape(out, -1)[:, :inn].to(torch.uint8)


def dequantize_with(q: torch.Tensor, p: GroupParams) -> torch.Tensor:
    """Float32 ``(q − zero) · scale`` ``[out, in]``."""
    out, inn = q.shape
    qg = _grouped(q.float(), p.group_size)
    return ((qg - p.zero[..., None]) * p.scale[..., None]).reshape(out, -1)[:, :inn]


def rtn_quantize(W: torch.Tensor, bits: int, *, group_size: int | None = 128, symmetric: bool = False,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantized copy of ``W [out, in]`` (same dtype and device); ``mask=True`` entries bit-exact."""
    p = fit_params(W, bits, group_size=group_size, symmetric=symmetric, mask=mask)
    deq = dequantize_with(quantize_with(W, p), p).to(W.dtype)
    if mask is not None:
        deq = torch.where(mask.to(device=W.device, dtype=torch.bool), W, deq)
    return deq


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized weight: dense low-bit codes + per-group scale/zero + a sparse sidecar.

    Attributes:
        codes: uint8 ``[out, in]`` integer codes in ``0 .. 2^bits − 1`` (protected slots hold
            the code of their quantized value; it is never used).
        scale, zero: ``[out, n_groups]`` (``scale_dtype``; zero float32 holding integers).
        bits, group_size: the grid (``group_size`` = ``in`` for per-channel).
        protected: int64 sorted flat ids ``r·in + c`` of the kept weights ``[n_p]``.
        values: their original values ``[n_p]`` (the weight's dtype by default, see :meth:`from_params`).
        dtype: dtype of the original weight (the one :meth:`dequantize` returns by default).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    protected: torch.Tensor
    values: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @classmethod
    def from_params(cls, W: torch.Tensor, codes: torch.Tensor, p: GroupParams, mask: torch.Tensor | None, bits: int,
                    *, scale_dtype: torch.dtype = torch.float32,
                    value_dtype: torch.dtype | None = None) -> "QuantizedTensor":
        """Build from codes and parameters. ``value_dtype=None`` keeps the weight's own dtype
        (bit-exact; FP16/BF16 for real checkpoints); pass ``torch.float16`` to force an FP16 sidecar."""
        value_dtype = value_dtype or W.dtype
        flat = (mask.flatten().nonzero().flatten() if mask is not None
                else torch.zeros(0, dtype=torch.long, device=W.device))
        return cls(codes.to(torch.uint8), p.scale.to(scale_dtype), p.zero.float(), int(bits), p.group_size,
                   flat.long(), W.flatten()[flat].to(value_dtype), W.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``[out, in]`` weight: ``(q − zero) · scale`` with the kept values written back."""
        p = GroupParams(self.scale.float(), self.zero.float(), 2 ** self.bits - 1, self.group_size)
        w = dequantize_with(self.codes, p).to(dtype or self.dtype)
        w = w.contiguous()
        w.view(-1)[self.protected.to(w.device)] = self.values.to(device=w.device, dtype=w.dtype)
        return w

    def storage_bits(self, *, param_bits: int = 16, symmetric: bool = False, index_bits_per_value: int = 32) -> int:
        """Bits of a packed deployment layout: codes + FP16 scale (+zero) + values + flat32 index."""
        per_group = param_bits * (1 if symmetric else 2)
        n_p = int(self.protected.numel())
        return (self.bits * self.codes.numel() + per_group * self.scale.numel()
                + self.values.element_size() * 8 * n_p + index_bits_per_value * n_p)

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors (``prefix`` + codes/scale/zero/protected/values)."""
        return {f"{prefix}codes": self.codes.contiguous().cpu(), f"{prefix}scale": self.scale.contiguous().cpu(),
                f"{prefix}zero": self.zero.contiguous().cpu(), f"{prefix}protected": self.protected.contiguous().cpu(),
                f"{prefix}values": self.values.contiguous().cpu()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], *, bits: int, group_size: int, dtype: torch.dtype,
                     prefix: str = "") -> "QuantizedTensor":
        return cls(t[f"{prefix}codes"], t[f"{prefix}scale"], t[f"{prefix}zero"], bits, group_size,
                   t[f"{prefix}protected"], t[f"{prefix}values"], dtype)


def rtn_quantize_tensor(W: torch.Tensor, bits: int, *, group_size: int | None = 128, symmetric: bool = False,
                        mask: torch.Tensor | None = None, scale_dtype: torch.dtype = torch.float32,
                        value_dtype: torch.dtype | None = None) -> QuantizedTensor:
    """Like :func:`rtn_quantize` but returns the codes, parameters and sidecar (:class:`QuantizedTensor`)."""
    p = fit_params(W, bits, group_size=group_size, symmetric=symmetric, mask=mask)
    m = None if mask is None else mask.to(device=W.device, dtype=torch.bool)
    return QuantizedTensor.from_params(W, quantize_with(W, p), p, m, bits, scale_dtype=scale_dtype,
                                       value_dtype=value_dtype)
