"""Quantize the linear sites of a model in place (fake quantization), honouring masks.

The quantizers are registered methods of the compression driver
(:mod:`lrm_interp.compress.driver`): ``rtn`` (all sites in one group, no Hessians) and ``gptq``
(calibration Hessians of :func:`lrm_interp.compress.calibration.layer_hessians`, decoder layer
by decoder layer). Their per-site kernels ``(W, mask, H) -> QuantizedTensor`` run in the
driver's per-site loop, which reads the weight in the ``[out, in]`` layout (GPT-2 ``Conv1D``
included), densifies the site's mask and writes the dequantized weight back;
:func:`quantize_sites_` is that loop for any quantizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lrm_interp.checks import check_bool, checked_arguments, user_stacklevel
from lrm_interp.compress.calibration import HessianCalib, calibration_size
from lrm_interp.compress.driver import (
    CompressionMethod,
    CompressionRun,
    compress_model_,
    compress_sites_,
    method_names,
    register_method,
)
from lrm_interp.compress.quant.format import QuantizedTensor
from lrm_interp.compress.quant.gptq import gptq_quantize_tensor
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.compress.quant.rtn import rtn_quantize_tensor
from lrm_interp.model.sites import Site

#: ``quantize(W [out, in], mask bool [out, in] | None, H [in, in] | None) -> QuantizedTensor``
SiteQuantizer = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], QuantizedTensor]


def _rtn(*, bits: int, group_size: int | None, symmetric: bool) -> SiteQuantizer:
    def quantize(W, m, H):
        return rtn_quantize_tensor(W, bits, group_size=group_size, symmetric=symmetric, mask=m)

    return quantize


def _gptq(*, bits: int, group_size: int | None, symmetric: bool, **options) -> SiteQuantizer:
    def quantize(W, m, H):
        return gptq_quantize_tensor(W, H, bits, group_size=group_size, symmetric=symmetric, mask=m, **options)

    return quantize


RTN = register_method(CompressionMethod("rtn", "quantization", _rtn, label="RTN"))
GPTQ = register_method(
    CompressionMethod("gptq", "quantization", _gptq, label="GPTQ", calibrated=True, options=("blocksize", "percdamp"))
)
METHODS = method_names("quantization")
GPTQ_OPTIONS = GPTQ.allowed_options


@checked_arguments
@dataclass(frozen=True)
class QuantReport:
    """What :func:`quantize_model_` did (also attached to the model for provenance).

    ``calibration``: ``{"rows", "tokens"}`` of a calibrated method's calibration data
    (:func:`~lrm_interp.compress.calibration.calibration_size`; ``None`` for RTN or a callable
    ``calib``): the size GPTQ was computed from, for a caller's record (it was recorded nowhere,
    H11-CAL1). :meth:`to_dict` and :meth:`provenance` leave it out: their keys are those of the
    older reports (``tests/test_compress_driver.py`` compares them to the old driver's)."""

    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    n_sites: int
    n_weights: int
    n_protected: int
    sites: tuple[str, ...] = field(repr=False, default=())
    tensors: dict = field(repr=False, default_factory=dict, compare=False)
    calibration: dict | None = None

    @property
    def protected_fraction(self) -> float:
        return self.n_protected / max(self.n_weights, 1)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("tensors", "calibration")}
        d["sites"] = list(self.sites)
        d["protected_fraction"] = self.protected_fraction
        return d

    def provenance(self) -> dict:
        """The step recorded in the model's provenance: :meth:`to_dict` without the site list."""
        return {k: v for k, v in self.to_dict().items() if k != "sites"}


def quantize_sites_(
    model: torch.nn.Module,
    groups: Iterable[tuple[Sequence[Site], MutableMapping[str, torch.Tensor] | None]],
    quantize: SiteQuantizer,
    *,
    masks: Mapping[str, Any] | None = None,
    on_tensor: Callable[[str, QuantizedTensor], None] | None = None,
    bar: Any = None,
) -> tuple[int, int]:
    """Quantize the sites of each ``(sites, hessians)`` group in place, group after group.

    ``groups`` may be lazy (the next group is requested only after the previous one is
    written back, as :func:`~lrm_interp.compress.calibration.layer_hessians` needs);
    ``hessians`` ``{site: H [in, in]}`` or ``None`` (entries are popped as they are used).
    ``masks``: ``{site: bool [out, in] or ProtectionMask}``. ``on_tensor(site, qt)`` receives
    each :class:`QuantizedTensor`; ``bar`` (a tqdm) is advanced once per site.
    Returns ``(weights, protected weights)`` over the quantized sites.
    """
    n_w, n_p, _ = compress_sites_(model, groups, quantize, masks=masks, on_result=on_tensor, bar=bar)
    return n_w, n_p


#: saliencies whose per-weight scores do not depend on the quantization grid (``|W|``, ``|W|·‖x‖``,
#: noise), and masks chosen per module (no saliency): such masks fit any grid; every other saliency
#: scores ``W − Q(W)`` on the grid the masks record
GRID_FREE_SALIENCIES = frozenset({"magnitude", "activation", "random"})

#: the entries of a masks file's metadata (``extra`` of ``lrm_interp.protect.load_masks``) that record
#: the grid the masks were chosen on (``lrm-interp protect`` writes them; ``save_masks(grid=...)`` too)
GRID_KEYS = ("bits", "group_size", "symmetric", "saliency")


class MaskGridWarning(UserWarning):
    """Masks chosen on one quantization grid applied on another (:func:`grid_mismatch`'s words)."""


def _grid_text(bits: Any, group_size: Any, symmetric: Any) -> str:
    sym = "?" if symmetric is None else ("symmetric" if symmetric else "asymmetric")
    group = f"group {group_size}" if group_size else "per channel"
    return f"{bits}-bit {group} {sym}"


def recorded_grid(extra: Any) -> dict[str, Any] | None:
    """The grid entries (:data:`GRID_KEYS`) that ``extra`` (a masks file's metadata, or a grid
    mapping) holds, absent ones left out; ``None`` when it records no ``bits`` (masks saved without
    a grid, or not a mapping)."""
    if not isinstance(extra, Mapping) or "bits" not in extra:
        return None
    return {k: extra[k] for k in GRID_KEYS if k in extra}


def masks_grid(extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"bits", "group_size", "symmetric", "saliency"}`` the masks' metadata (``extra`` of
    ``load_masks``) records (an absent entry: ``None``), or ``None`` when it records no grid (masks
    saved by the API without one)."""
    rec = recorded_grid(extra)
    return None if rec is None else {k: rec.get(k) for k in GRID_KEYS}


@checked_arguments
def grid_mismatch(extra: Mapping[str, Any], bits: int, group_size: int | None, symmetric: bool) -> str | None:
    """A one-line warning when the grid recorded in the masks' metadata (``extra`` of
    ``load_masks``, as ``lrm-interp protect`` writes it) is not ``bits``/``group_size``/
    ``symmetric``, else ``None`` (also when the masks record no grid). A recorded entry that is
    absent is not compared. The warning says whether the masks' saliency depends on the grid."""
    rec = masks_grid(extra)
    if rec is None:
        return None
    mine = {"bits": bits, "group_size": group_size or None, "symmetric": bool(symmetric)}
    theirs = {"bits": rec["bits"], "group_size": rec["group_size"] or None, "symmetric": rec["symmetric"]}
    diff = [k for k in mine if k in extra and theirs[k] != mine[k]]
    if not diff:
        return None
    sal = rec.get("saliency")
    if sal is None or sal in GRID_FREE_SALIENCIES:
        why = (
            f"their saliency ({sal}) does not depend on the grid, so they still pick the same weights"
            if sal is not None
            else "they were chosen per module (no per-weight saliency), so the grid does not change them"
        )
    else:
        why = (
            f"their saliency {sal!r} scores the quantization error on the grid it was computed for, "
            "so other weights may be the ones that matter on this grid (run protect again with this grid)"
        )
    return (
        f"the masks were computed for a {_grid_text(theirs['bits'], theirs['group_size'], theirs['symmetric'])} "
        f"grid but are applied on a {_grid_text(bits, group_size, symmetric)} grid ({', '.join(diff)} differ): {why}"
    )


def masks_grid_record(masks: Any) -> dict[str, Any] | None:
    """The grid ``masks`` (as :func:`quantize_model_` takes them) record: the metadata of the
    ``(masks, extra)`` pair ``load_masks`` returns, else a ``grid`` attribute of the mapping (a
    :class:`~lrm_interp.protect.masks.MaskSet` read by ``load_masks``); ``None`` when neither
    records one (:func:`recorded_grid`)."""
    if isinstance(masks, tuple) and len(masks) == 2 and isinstance(masks[0], Mapping):
        return recorded_grid(masks[1]) or recorded_grid(getattr(masks[0], "grid", None))
    return recorded_grid(getattr(masks, "grid", None))


@checked_arguments
def warn_grid_mismatch(masks: Any, bits: int, group_size: int | None, symmetric: bool) -> None:
    """Warn (:class:`MaskGridWarning`) when ``masks`` record a grid (:func:`masks_grid_record`) that
    is not ``bits``/``group_size``/``symmetric`` (:func:`grid_mismatch`'s words, naming the masks
    file when known). Masks that record no grid are applied without a word: nothing to compare."""
    rec = masks_grid_record(masks)
    msg = None if rec is None else grid_mismatch(rec, bits, group_size, symmetric)
    if msg:
        src = getattr(masks[0] if isinstance(masks, tuple) else masks, "source", None)
        warnings.warn(f"masks{f' {src}' if src else ''}: {msg}", MaskGridWarning, stacklevel=user_stacklevel())


def masks_argument(masks: Any) -> Mapping[str, Any] | None:
    """``masks`` as a ``{site: mask}`` mapping: the ``(masks, extra)`` pair ``load_masks`` returns is
    taken apart; a path, or anything else that is not a mapping, raises ``TypeError`` saying how to
    load it (a path string was read as a mapping of its characters, H7-API5)."""
    import os

    if masks is None:
        return None
    if isinstance(masks, (str, os.PathLike)):  # the masks format is protect's, a later stage
        raise TypeError(
            f"masks is a path ({str(masks)!r}): load it first, masks=lrm_interp.protect.load_masks(path)[0] "
            "(or pass the pair load_masks returns)"
        )
    if isinstance(masks, tuple) and len(masks) == 2 and isinstance(masks[0], Mapping):
        masks = masks[0]
    if not isinstance(masks, Mapping):
        raise TypeError(
            "masks must be a {site name: mask} mapping (load_masks(path)[0], build_masks(...)) or the pair "
            f"load_masks returns, got {type(masks).__name__}"
        )
    for name, m in masks.items():  # a saliency dict protected every non-zero weight: nothing quantized (H35-FLOATMASK)
        if isinstance(m, torch.Tensor) and m.dtype != torch.bool:
            raise TypeError(
                f"masks[{name!r}] is a {str(m.dtype).replace('torch.', '')} tensor: a mask is a bool tensor (True: "
                "kept in full precision) or a ProtectionMask; a saliency becomes masks through "
                "build_masks(sites, policy, budget, saliency=...)"
            )
    return masks


@checked_arguments
def quantize_model_(
    model: torch.nn.Module,
    *,
    bits: int,
    group_size: int | None = 128,
    method: str = "rtn",
    symmetric: bool = False,
    masks: Mapping[str, Any] | None = None,
    sites: Sequence[Site | str] | str | None = None,
    calib: HessianCalib | None = None,
    hessian_transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    keep_tensors: bool = False,
    requantize: bool = False,
    **gptq_kw,
) -> QuantReport:
    """Fake-quantize every linear site of ``model`` in place.

    Args:
        bits, group_size, symmetric: the quantization grid (``group_size=None``: per channel).
        method: ``"rtn"`` or ``"gptq"`` (needs ``calib``: input ids ``[b, s]``, a tokenizer
            output dict, or a callable running calibration forwards; see
            :mod:`lrm_interp.compress.calibration`).
        masks: ``{site name: bool [out, in] tensor or ProtectionMask}``; protected weights
            are excluded from the scale fit and kept bit-exact. Checked before any weight
            changes (:func:`lrm_interp.compress.driver.check_masks`): a mask of another shape
            than its site is refused naming the file and site, and masks that record the model
            they were computed for (``load_masks`` / ``build_masks``) are refused on a model with
            other weights, naming both fingerprints. Masks that record the grid they were
            chosen on (the pair ``load_masks`` returns, or its ``MaskSet``: ``lrm-interp
            protect`` and ``save_masks(grid=...)`` record it) are applied on another grid with a
            :class:`MaskGridWarning` (:func:`grid_mismatch`: a grid-dependent saliency may pick
            other weights on this grid).
        sites: which sites (default: all linear sites in the decoder layers).
        hessian_transform: GPTQ only: ``(site, H [in, in]) -> H'`` applied to each calibration
            Hessian before use (e.g. the loss-guided mix of :mod:`lrm_interp.compress.quant.guided`).
        keep_tensors: also return the codes/scales/kept values of every site as
            ``report.tensors = {site: QuantizedTensor}`` (the quantized copy).
        requantize: quantize a model that is already quantized (its provenance record holds a
            quantization step: a checkpoint written by ``lrm-interp quantize``, or this function
            run on it before, e.g. a notebook cell run twice). Refused by default
            (:class:`~lrm_interp.model.provenance.AlreadyQuantizedError`, nothing changed): the
            weights would keep the first grid's values while the report names these bits.
        gptq_kw: ``blocksize`` (128), ``percdamp`` (0.01), ``sequential`` (True),
            ``batch_size`` (8) — see :mod:`lrm_interp.compress.quant.gptq` and
            :func:`lrm_interp.compress.calibration.layer_hessians`.

    GPT-2 ``Conv1D`` weights (stored ``[in, out]``) are handled as ``[out, in]``; masks and
    :class:`QuantizedTensor` always use the ``[out, in]`` layout. The step is appended to the
    model's provenance record (:func:`lrm_interp.model.provenance.record_compression`).
    """
    bits = check_bits(bits)
    group_size = check_group_size(group_size)
    symmetric = check_bool("symmetric", symmetric)
    grid_of_masks = masks
    masks = masks_argument(masks)
    warn_grid_mismatch(grid_of_masks, bits, group_size, symmetric)  # masks chosen on another grid (H14-MGP)
    tensors: dict[str, QuantizedTensor] = {}

    def report(run: CompressionRun) -> QuantReport:
        return QuantReport(
            run.method.name,
            bits,
            group_size,
            symmetric,
            len(run.sites),
            run.weights,
            run.protected,
            tuple(s.name for s in run.sites),
            tensors,
            calibration_size(calib) if run.method.calibrated and calib is not None else None,
        )

    return compress_model_(
        model,
        method,
        dict(bits=bits, group_size=group_size, symmetric=symmetric),
        report=report,
        kind="quantization",
        sites=sites,
        masks=masks,
        calib=calib,
        options=gptq_kw,
        hessian_transform=hessian_transform,
        on_result=tensors.__setitem__ if keep_tensors else None,
        desc=f"{str(method).upper()} {bits}-bit",
        progress=progress,
        requantize=requantize,
    )


__all__ = [
    "QuantReport",
    "quantize_model_",
    "quantize_sites_",
    "SiteQuantizer",
    "METHODS",
    "RTN",
    "GPTQ",
    "MaskGridWarning",
    "grid_mismatch",
    "masks_grid",
]
