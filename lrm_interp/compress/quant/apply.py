"""Quantize the linear sites of a model in place (fake quantization), honouring masks.

One per-site loop (:func:`quantize_sites_`) serves every quantizer: for each site it reads
the weight in the ``[out, in]`` layout (GPT-2 ``Conv1D`` included), densifies the site's
mask, calls the quantizer ``(W, mask, H) -> QuantizedTensor`` and writes the dequantized
weight back. RTN gets all sites in one group without Hessians; GPTQ gets the groups of
:func:`lrm_interp.compress.calibration.layer_hessians` (decoder layer by layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.compress.calibration import HessianCalib, layer_hessians
from lrm_interp.compress.quant.format import QuantizedTensor
from lrm_interp.compress.quant.gptq import gptq_quantize_tensor
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.compress.quant.rtn import rtn_quantize_tensor
from lrm_interp.model.provenance import record_compression
from lrm_interp.model.sites import Site, get_module, resolve_sites
from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix

#: ``quantize(W [out, in], mask bool [out, in] | None, H [in, in] | None) -> QuantizedTensor``
SiteQuantizer = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], QuantizedTensor]
METHODS = ("rtn", "gptq")
GPTQ_OPTIONS = ("blocksize", "percdamp", "sequential", "batch_size")


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


def quantize_sites_(model: torch.nn.Module,
                    groups: Iterable[tuple[Sequence[Site], Mapping[str, torch.Tensor] | None]],
                    quantize: SiteQuantizer, *, masks: Mapping[str, Any] | None = None,
                    on_tensor: Callable[[str, QuantizedTensor], None] | None = None,
                    bar: Any = None) -> tuple[int, int]:
    """Quantize the sites of each ``(sites, hessians)`` group in place, group after group.

    ``groups`` may be lazy (the next group is requested only after the previous one is
    written back, as :func:`~lrm_interp.compress.calibration.layer_hessians` needs);
    ``hessians`` ``{site: H [in, in]}`` or ``None`` (entries are popped as they are used).
    ``masks``: ``{site: bool [out, in] or ProtectionMask}``. ``on_tensor(site, qt)`` receives
    each :class:`QuantizedTensor`; ``bar`` (a tqdm) is advanced once per site.
    Returns ``(weights, protected weights)`` over the quantized sites.
    """
    masks = masks or {}
    n_w = n_p = 0
    for sites, hessians in groups:
        for s in sites:
            mod = get_module(model, s.name)
            W = weight_matrix(mod)
            m = dense_mask(masks.get(s.name), tuple(W.shape))
            m = None if m is None else m.to(W.device)
            H = None if hessians is None else hessians.pop(s.name)
            qt = quantize(W, m, H)
            set_weight_matrix(mod, qt.dequantize(W.dtype))  # kept weights are written back bit-exact
            if on_tensor is not None:
                on_tensor(s.name, qt)
            n_w += W.numel()
            n_p += int(m.sum()) if m is not None else 0
            if bar is not None:
                bar.update(1)
    return n_w, n_p


def quantize_model_(model: torch.nn.Module, *, bits: int, group_size: int | None = 128, method: str = "rtn",
                    symmetric: bool = False, masks: Mapping[str, Any] | None = None,
                    sites: Sequence[Site | str] | str | None = None,
                    calib: HessianCalib | None = None,
                    hessian_transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                    progress: bool = True, keep_tensors: bool = False, **gptq_kw) -> QuantReport:
    """Fake-quantize every linear site of ``model`` in place.

    Args:
        bits, group_size, symmetric: the quantization grid (``group_size=None``: per channel).
        method: ``"rtn"`` or ``"gptq"`` (needs ``calib``: input ids ``[b, s]``, a tokenizer
            output dict, or a callable running calibration forwards; see
            :mod:`lrm_interp.compress.calibration`).
        masks: ``{site name: bool [out, in] tensor or ProtectionMask}``; protected weights
            are excluded from the scale fit and kept bit-exact.
        sites: which sites (default: all linear sites in the decoder layers).
        hessian_transform: GPTQ only: ``(site, H [in, in]) -> H'`` applied to each calibration
            Hessian before use (e.g. the loss-guided mix of :mod:`lrm_interp.compress.quant.guided`).
        keep_tensors: also return the codes/scales/kept values of every site as
            ``report.tensors = {site: QuantizedTensor}`` (the quantized copy).
        gptq_kw: ``blocksize`` (128), ``percdamp`` (0.01), ``sequential`` (True),
            ``batch_size`` (8) — see :mod:`lrm_interp.compress.quant.gptq` and
            :func:`lrm_interp.compress.calibration.layer_hessians`.

    GPT-2 ``Conv1D`` weights (stored ``[in, out]``) are handled as ``[out, in]``; masks and
    :class:`QuantizedTensor` always use the ``[out, in]`` layout. The step is appended to the
    model's provenance record (:func:`lrm_interp.model.provenance.record_compression`).
    """
    bits = check_bits(bits)
    group_size = check_group_size(group_size)
    if method not in METHODS:
        raise ValueError(f"method must be 'rtn' or 'gptq', got {method!r}")
    site_list = resolve_sites(model, sites)
    masks = dict(masks or {})
    unknown = set(masks) - {s.name for s in site_list}
    if unknown:
        raise KeyError(f"masks name sites that are not quantized here: {sorted(unknown)[:5]}")
    if hessian_transform is not None and method != "gptq":
        raise ValueError("hessian_transform= needs method='gptq'")
    if method == "rtn":
        if gptq_kw:
            raise TypeError(f"unexpected arguments for RTN: {sorted(gptq_kw)}")
        groups: Iterable = [(site_list, None)]

        def quantize(W, m, H):
            return rtn_quantize_tensor(W, bits, group_size=group_size, symmetric=symmetric, mask=m)
    else:
        bad = set(gptq_kw) - set(GPTQ_OPTIONS)
        if bad:
            raise TypeError(f"unexpected arguments for GPTQ: {sorted(bad)} (allowed: {list(GPTQ_OPTIONS)})")
        blocksize, percdamp = gptq_kw.get("blocksize", 128), gptq_kw.get("percdamp", 0.01)
        groups = layer_hessians(model, site_list, calib, sequential=gptq_kw.get("sequential", True),
                                batch_size=gptq_kw.get("batch_size", 8), progress=progress)
        if hessian_transform is not None:
            groups = ((grp, {n: hessian_transform(n, H) for n, H in hs.items()}) for grp, hs in groups)

        def quantize(W, m, H):
            return gptq_quantize_tensor(W, H, bits, group_size=group_size, symmetric=symmetric, mask=m,
                                        blocksize=blocksize, percdamp=percdamp)
    tensors: dict[str, QuantizedTensor] = {}
    with tqdm(total=len(site_list), desc=f"{method.upper()} {bits}-bit", disable=not progress, unit="site") as bar:
        n_w, n_p = quantize_sites_(model, groups, quantize, masks=masks,
                                   on_tensor=tensors.__setitem__ if keep_tensors else None, bar=bar)
    rep = QuantReport(method, bits, group_size, symmetric, len(site_list), n_w, n_p,
                      tuple(s.name for s in site_list), tensors)
    extra = {} if hessian_transform is None else {"hessian_transform": getattr(hessian_transform, "__qualname__",
                                                                           type(hessian_transform).__name__)}
    record_compression(model, "quantization", **{k: v for k, v in rep.to_dict().items() if k != "sites"}, **extra)
    return rep
