"""The quantized-weight container and its file format.

:class:`QuantizedTensor`: one site's dense low-bit codes, per-group scale/zero and the kept
(protected) weights as sorted flat ids + original values, in the ``[out, in]`` layout.

File (:func:`save_quantized`, format ``lrm_interp.quantized/1``, safetensors, no pickle): per
site the tensors ``<site>::codes`` uint8 ``[out, in]``, ``<site>::scale`` / ``<site>::zero``
``[out, n_groups]``, ``<site>::protected`` int64 ``[n_p]`` and ``<site>::values`` ``[n_p]``;
JSON metadata ``format``, ``sites = {site: {"bits", "group_size", "dtype"}}`` (insertion
order kept) and ``extra``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lrm_interp._io import dtype_to_str, read_safetensors, refuse_result_file, str_to_dtype, write_safetensors
from lrm_interp.checks import checked_arguments
from lrm_interp.compress.quant.grid import GroupParams, dequantize_with

QUANTIZED_FORMAT = "lrm_interp.quantized/1"


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
        return tuple(self.codes.shape)  # type: ignore[return-value]  # codes are [out, in]

    @classmethod
    def from_params(
        cls,
        W: torch.Tensor,
        codes: torch.Tensor,
        p: GroupParams,
        mask: torch.Tensor | None,
        bits: int,
        *,
        scale_dtype: torch.dtype = torch.float32,
        value_dtype: torch.dtype | None = None,
    ) -> QuantizedTensor:
        """Build from ``W [out, in]``, its ``codes [out, in]``, parameters ``p`` and the bool
        ``mask [out, in]`` of kept weights. ``value_dtype=None`` keeps the weight's own dtype
        (bit-exact; FP16/BF16 for real checkpoints); pass ``torch.float16`` to force an FP16 sidecar."""
        value_dtype = value_dtype or W.dtype
        flat = (
            mask.flatten().nonzero().flatten()
            if mask is not None
            else torch.zeros(0, dtype=torch.long, device=W.device)
        )
        return cls(
            codes.to(torch.uint8),
            p.scale.to(scale_dtype),
            p.zero.float(),
            int(bits),
            p.group_size,
            flat.long(),
            W.flatten()[flat].to(value_dtype),
            W.dtype,
        )

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``[out, in]`` weight: ``(q − zero) · scale`` with the kept values written back."""
        p = GroupParams(self.scale.float(), self.zero.float(), 2**self.bits - 1, self.group_size)
        w = dequantize_with(self.codes, p).to(dtype or self.dtype)
        w = w.contiguous()
        w.view(-1)[self.protected.to(w.device)] = self.values.to(device=w.device, dtype=w.dtype)
        return w

    @checked_arguments
    def storage_bits(self, *, param_bits: int = 16, symmetric: bool = False, index_bits_per_value: int = 32) -> int:
        """Bits of a packed deployment layout: codes + FP16 scale (+zero) + values + flat32 index."""
        per_group = param_bits * (1 if symmetric else 2)
        n_p = int(self.protected.numel())
        return (
            self.bits * self.codes.numel()
            + per_group * self.scale.numel()
            + self.values.element_size() * 8 * n_p
            + index_bits_per_value * n_p
        )

    def to_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat CPU tensors for safetensors (``prefix`` + codes/scale/zero/protected/values)."""
        return {
            f"{prefix}codes": self.codes.contiguous().cpu(),
            f"{prefix}scale": self.scale.contiguous().cpu(),
            f"{prefix}zero": self.zero.contiguous().cpu(),
            f"{prefix}protected": self.protected.contiguous().cpu(),
            f"{prefix}values": self.values.contiguous().cpu(),
        }

    @classmethod
    def from_tensors(
        cls, t: Mapping[str, torch.Tensor], *, bits: int, group_size: int, dtype: torch.dtype, prefix: str = ""
    ) -> QuantizedTensor:
        """Inverse of :meth:`to_tensors`."""
        return cls(
            t[f"{prefix}codes"],
            t[f"{prefix}scale"],
            t[f"{prefix}zero"],
            bits,
            group_size,
            t[f"{prefix}protected"],
            t[f"{prefix}values"],
            dtype,
        )


@checked_arguments
def save_quantized(
    tensors: Mapping[str, QuantizedTensor],
    path: str | Path,
    *,
    metadata: dict | None = None,
    replace: bool = True,
    own: str | None = None,
) -> Path:
    """Store ``{site: QuantizedTensor}`` in one safetensors file (format in the module docs; atomic).

    ``tensors``: the mapping ``quantize_model_(model, ..., keep_tensors=True).tensors`` holds, or
    the ``(tensors, extra)`` pair :func:`load_quantized` returns (its ``extra`` kept as
    ``metadata`` unless given); anything else (a model, a path) is a ``TypeError`` naming it, and
    an empty mapping (a report made without ``keep_tensors=True``) a ``ValueError``, nothing written.
    ``replace=False``: an existing ``path`` is never replaced (``FileExistsError`` naming it, also
    for a file created there while this ran), as for the other writers (``save_masks``,
    :func:`lrm_interp._io.write_safetensors`). Whatever ``replace`` says, a ``path`` that is one of
    the files of a finished result of an ``lrm-interp`` command (``Q/model.safetensors`` of a
    ``quantize`` folder, ``A/attribution.safetensors``), or lies inside one, is refused first, before
    any work (:class:`~lrm_interp._io.OtherResultError` naming it, H9-PYW); ``own``: the kind of
    result whose own file this is (a library writer writing into its own result folder)."""
    if (
        isinstance(tensors, tuple)
        and len(tensors) == 2
        and isinstance(tensors[0], Mapping)
        and isinstance(tensors[1], Mapping)
    ):  # what load_quantized returns: a round trip saves both
        tensors, extra = tensors
        metadata = dict(extra) if metadata is None else metadata
    if not isinstance(tensors, Mapping):
        raise TypeError(
            "tensors must be a mapping of site name → QuantizedTensor (from quantize_model_(..., "
            f"keep_tensors=True).tensors, or load_quantized(path)[0]), got {type(tensors).__name__}"
        )
    if not tensors:  # a report made without keep_tensors=True: a file of 0 tensors (H15-SQE)
        raise ValueError(
            f"tensors is empty: nothing to save to {path} (report.tensors holds the quantized sites only when "
            "quantizing with quantize_model_(..., keep_tensors=True))"
        )
    refuse_result_file(path, own=own)  # never a file of another command's result
    out, info = {}, {}
    for name, q in tensors.items():
        if not isinstance(name, str) or not isinstance(q, QuantizedTensor):
            what = f"key {name!r} ({type(name).__name__})" if not isinstance(name, str) else f"{name!r}"
            raise TypeError(
                f"tensors must be a mapping of site name → QuantizedTensor (from quantize_model_(..., "
                f"keep_tensors=True).tensors); {what} maps to {type(q).__name__}"
            )
        out.update(q.to_tensors(f"{name}::"))
        info[name] = {"bits": q.bits, "group_size": q.group_size, "dtype": dtype_to_str(q.dtype)}
    return write_safetensors(
        path,
        out,
        {"format": QUANTIZED_FORMAT, "sites": json.dumps(info), "extra": json.dumps(metadata or {})},
        replace=replace,
    )


@checked_arguments
def load_quantized(path: str | Path) -> tuple[dict[str, QuantizedTensor], dict]:
    """Inverse of :func:`save_quantized`: ``({site: QuantizedTensor}, extra metadata)``."""
    flat, meta = read_safetensors(path, (QUANTIZED_FORMAT,), "quantized file")
    out = {}
    for name, d in json.loads(meta["sites"]).items():
        out[name] = QuantizedTensor.from_tensors(
            flat, bits=d["bits"], group_size=d["group_size"], dtype=str_to_dtype(d["dtype"]), prefix=f"{name}::"
        )
    return out, json.loads(meta.get("extra", "{}"))
