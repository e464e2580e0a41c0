"""Quantize the linear sites of a model in place (fake quantization), honouring masks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.model.sites import Site, get_module, resolve_sites
from lrm_interp.model.provenance import record_compression
from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix


@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_model_` did (also attached to the model for provenance)."""

    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    n_sites: int
    n_weights: int
    n_protected: int
    sites: tuple[str, ...] = field(repr=False, default=())
    tensors: dict = field(repr=False, default_factory=dict, compare=False)

    @property
    def protected_fraction(self) -> float:
        return self.n_protected / max(self.n_weights, 1)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tensors"}
        d["sites"] = list(self.sites)
        d["protected_fraction"] = self.protected_fraction
        return d


def quantize_model_(model: torch.nn.Module, *, bits: int, group_size: int | None = 128, method: str = "rtn",
                    symmetric: bool = False, masks: Mapping[str, Any] | None = None,
                    sites: Sequence[Site | str] | str | None = None,
                    calib: Callable[[torch.nn.Module], None] | torch.Tensor | None = None,
                    progress: bool = True, keep_tensors: bool = False, **gptq_kw) -> QuantReport:
    """Fake-quantize every linear site of ``model`` in place.

    Args:
        bits, group_size, symmetric: the quantization grid (``group_size=None``: per channel).
        method: ``"rtn"`` or ``"gptq"`` (needs ``calib``: input ids ``[b, s]`` or a callable
            running calibration forwards).
        masks: ``{site name: bool [out, in] tensor or ProtectionMask}``; protected weights
            are excluded from the scale fit and kept bit-exact.
        sites: which sites (default: all linear sites in the decoder layers).
        keep_tensors: also return the codes/scales/kept values of every site as
            ``report.tensors = {site: QuantizedTensor}`` (the quantized copy).
        gptq_kw: ``blocksize``, ``percdamp``, ``sequential``, ``batch_size`` (see
            :func:`lrm_interp.compress.quant.gptq.gptq_quantize_model_`).

    GPT-2 ``Conv1D`` weights (stored ``[in, out]``) are handled as ``[out, in]``; masks and
    :class:`QuantizedTensor` always use the ``[out, in]`` layout.
    """
    from lrm_interp.compress.quant.rtn import rtn_quantize, rtn_quantize_tensor

    site_list = resolve_sites(model, sites)
    masks = dict(masks or {})
    unknown = set(masks) - {s.name for s in site_list}
    if unknown:
        raise KeyError(f"masks name sites that are not quantized here: {sorted(unknown)[:5]}")
    if not 2 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    tensors: dict = {}
    n_w = n_p = 0
    if method == "rtn":
        if gptq_kw:
            raise TypeError(f"unexpected arguments for RTN: {sorted(gptq_kw)}")
        for s in tqdm(site_list, desc=f"RTN {bits}-bit", disable=not progress, unit="site"):
            mod = get_module(model, s.name)
            W = weight_matrix(mod)
            m = dense_mask(masks.get(s.name), tuple(W.shape))
            m = None if m is None else m.to(W.device)
            if keep_tensors:
                qt = rtn_quantize_tensor(W, bits, group_size=group_size, symmetric=symmetric, mask=m)
                tensors[s.name] = qt
                Wq = qt.dequantize(W.dtype) if m is None else torch.where(m, W, qt.dequantize(W.dtype))
            else:
                Wq = rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric, mask=m)
            set_weight_matrix(mod, Wq)
            n_w += W.numel()
            n_p += int(m.sum()) if m is not None else 0
    elif method == "gptq":
        from lrm_interp.compress.quant.gptq import gptq_quantize_model_

        n_w, n_p = gptq_quantize_model_(model, site_list, bits=bits, group_size=group_size, symmetric=symmetric,
                                        masks=masks, calib=calib, progress=progress,
                                        on_tensor=tensors.__setitem__ if keep_tensors else None, **gptq_kw)
    else:
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    rep = QuantReport(method, bits, group_size, symmetric, len(site_list), n_w, n_p,
                      tuple(s.name for s in site_list), tensors)
    record_compression(model, "quantization", **{k: v for k, v in rep.to_dict().items() if k != "sites"})
    return rep
