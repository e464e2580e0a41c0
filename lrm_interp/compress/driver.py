"""The one compression driver, for quantizers and pruners alike, and its method registry.

A :class:`CompressionMethod` names an algorithm and says how to build its per-site kernel
``kernel(W [out, in], mask bool [out, in] | None, H [in, in] | None)`` returning the new weight
(a tensor) or a quantized tensor (anything with ``dequantize(dtype)``, e.g.
:class:`~lrm_interp.compress.quant.format.QuantizedTensor`). Methods register themselves by
name (:func:`register_method`: RTN and GPTQ in :mod:`lrm_interp.compress.quant.apply`;
magnitude, SparseGPT and Wanda in :mod:`lrm_interp.compress.prune.apply`);
:func:`get_method` looks them up (model-level front ends, compression specs).

:func:`compress_model_` runs one method over a model's linear sites, in place:

1. options checked against the method's (and, for calibrated methods, the Hessian driver's
   ``sequential`` / ``batch_size``); sites resolved; masks checked (:func:`check_masks`): they
   must name compressed sites with the sites' shapes, and masks that record the model they were
   computed for (a :class:`~lrm_interp.protect.masks.MaskSet`) must record this model's weights;
2. calibration: methods with ``calibrated=True`` get the Hessians of
   :func:`lrm_interp.compress.calibration.layer_hessians` decoder layer by decoder layer (each
   layer sees inputs computed by the already compressed earlier layers), optionally passed
   through ``hessian_transform(site, H)``; the others get all sites in one group, no Hessians;
3. :func:`compress_sites_`, the per-site loop: module lookup, weight in the ``[out, in]``
   layout (GPT-2 ``Conv1D`` included), the site's mask densified, its Hessian popped, the
   kernel, the weight written back; counts of weights, protected and newly zeroed weights;
4. provenance: the front end's report (``report(run)``) is appended to the model's record
   (:func:`lrm_interp.model.provenance.record_compression`) under the method's ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import torch
from tqdm.auto import tqdm

from lrm_interp.checks import check_bool, checked_arguments
from lrm_interp.compress.calibration import HessianCalib, layer_hessians
from lrm_interp.model.provenance import (
    NonFiniteError,
    check_not_quantized,
    check_same_weights,
    first_non_finite,
    model_record,
    non_finite_count,
    record_compression,
)
from lrm_interp.model.sites import Site, get_module, resolve_sites
from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix

#: ``kernel(W [out, in], mask bool [out, in] | None, H [in, in] | None) -> new W or quantized tensor``
SiteKernel = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], Any]
KINDS = ("quantization", "pruning")
#: options of the Hessian driver (:func:`lrm_interp.compress.calibration.layer_hessians`)
CALIBRATION_OPTIONS = ("sequential", "batch_size")
_DONE = {"quantization": "quantized", "pruning": "pruned"}


@checked_arguments
@dataclass(frozen=True)
class CompressionMethod:
    """A registered algorithm.

    Attributes:
        name: the registry key (``"gptq"``), as in specs and ``method=`` arguments.
        kind: ``"quantization"`` or ``"pruning"`` (the provenance step it records).
        build: ``build(**settings, **options) -> SiteKernel``; settings are the front end's
            (quantizers: ``bits``, ``group_size``, ``symmetric``; pruners: ``sparsity``,
            ``prunen``, ``prunem``), options the user's keyword options.
        label: name in messages and progress bars (``"GPTQ"``).
        calibrated: needs calibration Hessians.
        options: keyword options the kernel accepts (``blocksize``, ``percdamp``).
        nm: pruners: supports N:M patterns.
    """

    name: str
    kind: str
    build: Callable[..., SiteKernel]
    label: str = ""
    calibrated: bool = False
    options: tuple[str, ...] = ()
    nm: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def allowed_options(self) -> tuple[str, ...]:
        """The kernel's options, then the Hessian driver's for calibrated methods."""
        return self.options + (CALIBRATION_OPTIONS if self.calibrated else ())


_REGISTRY: dict[str, CompressionMethod] = {}


def register_method(method: CompressionMethod) -> CompressionMethod:
    """Add ``method`` to the registry (a name may be registered once) and return it."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"compression method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


@checked_arguments
def method_names(kind: str | None = None, *, calibrated: bool | None = None, nm: bool | None = None) -> tuple[str, ...]:
    """Registered names (quantizers first, then pruners; each in registration order), filtered."""
    return tuple(
        m.name
        for k in KINDS
        for m in _REGISTRY.values()
        if m.kind == k and kind in (None, k) and calibrated in (None, m.calibrated) and nm in (None, m.nm)
    )


def get_method(method: str | CompressionMethod, kind: str | None = None) -> CompressionMethod:
    """The registered method of that name (of ``kind`` if given); ``ValueError`` listing the choices."""
    m: CompressionMethod | None
    if isinstance(method, CompressionMethod):
        m = method
    else:
        m = _REGISTRY.get(str(method))
    if m is None or kind not in (None, m.kind):
        raise ValueError(f"method must be one of {method_names(kind)}, got {method!r}")
    return m


@dataclass(frozen=True)
class CompressionRun:
    """What :func:`compress_model_` did: ``weights`` weights in ``sites``, ``protected`` of them
    under a mask (in ``masked_sites`` sites), ``zeroed`` weights that were nonzero before and are 0 now."""

    method: CompressionMethod
    sites: tuple[Site, ...]
    weights: int
    protected: int
    zeroed: int
    masked_sites: int


class Report(Protocol):
    def provenance(self) -> dict: ...


R = TypeVar("R", bound=Report)


def compress_sites_(
    model: torch.nn.Module,
    groups: Iterable[tuple[Sequence[Site], MutableMapping[str, torch.Tensor] | None]],
    kernel: SiteKernel,
    *,
    masks: Mapping[str, Any] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    bar: Any = None,
) -> tuple[int, int, int]:
    """Compress the sites of each ``(sites, hessians)`` group in place, group after group.

    ``groups`` may be lazy (the next group is requested only after the previous one is
    written back, as :func:`~lrm_interp.compress.calibration.layer_hessians` needs);
    ``hessians`` ``{site: H [in, in]}`` or ``None`` (entries are popped as they are used).
    ``masks``: ``{site: bool [out, in] or ProtectionMask}``. ``kernel(W, mask, H)`` returns the
    new ``[out, in]`` weight or an object with ``dequantize(dtype)`` (written back as such; kept
    weights bit-exact). ``on_result(site, result)`` receives each kernel result after it is
    written back; ``bar`` (a tqdm) is advanced once per site.
    Returns ``(weights, protected weights, newly zeroed weights)`` over the sites.
    """
    label = _masks_label(masks)
    masks = masks or {}
    n_w = n_p = n_z = 0
    for sites, hessians in groups:
        for s in sites:
            mod = get_module(model, s.name)
            W = weight_matrix(mod)
            try:
                m = dense_mask(masks.get(s.name), cast("tuple[int, int]", tuple(W.shape)))  # [out, in]
            except ValueError as e:
                raise ValueError(f"{label}: site {s.name}: {e}") from None
            m = None if m is None else m.to(W.device)
            H = None if hessians is None else hessians.pop(s.name)
            zeros = int((W == 0).sum())
            out = kernel(W, m, H)
            new = out if isinstance(out, torch.Tensor) else out.dequantize(W.dtype)
            set_weight_matrix(mod, new)
            if on_result is not None:
                on_result(s.name, out)
            n_w += W.numel()
            n_p += int(m.sum()) if m is not None else 0
            n_z += int((new == 0).sum()) - zeros
            if bar is not None:
                bar.update(1)
    return n_w, n_p, n_z


def _masks_label(masks: Any) -> str:
    """How errors name a set of masks: its file (``masks.source``), else "the masks"."""
    src = getattr(masks, "source", None)
    return f"masks file {src}" if src else "the masks"


def _mask_shape(mask: Any) -> tuple[int, ...] | None:
    """``(out, in)`` of a mask object (``.shape``) or bool tensor; ``None`` for ``None``."""
    if mask is None:
        return None
    shape = getattr(mask, "shape", None)
    return tuple(int(x) for x in (shape if shape is not None else torch.as_tensor(mask).shape))


def check_masks(
    model: torch.nn.Module, masks: Mapping[str, Any] | None, sites: Sequence[Site], done: str = "compressed"
) -> None:
    """Refuse masks that do not belong to ``model``, before any weight is changed.

    ``masks`` may record the model it was computed for (duck-typed, as a
    :class:`~lrm_interp.protect.masks.MaskSet` does: ``masks.model = {"name",
    "weights_fingerprint"}``, ``masks.source`` = its file): another fingerprint is a
    :class:`~lrm_interp.model.provenance.WeightsMismatchError` naming the file and both
    fingerprints. Masks naming sites outside ``sites`` (``KeyError``) or of another shape than
    the site's ``[out, in]`` weight (``ValueError``) are named with the file and the site.
    """
    if not masks:
        return
    label = _masks_label(masks)
    unknown = set(masks) - {s.name for s in sites}
    if unknown:
        raise KeyError(f"{label} name sites that are not {done} here: {sorted(unknown)[:5]}")
    by_name = {s.name: s for s in sites}
    for name, mask in masks.items():
        s, shape = by_name[name], _mask_shape(mask)
        if shape is not None and shape != (s.out_features, s.in_features):
            raise ValueError(
                f"{label}: the mask of site {name} has shape {list(shape)} but the site's weight is "
                f"[{s.out_features}, {s.in_features}] in this model (masks of another model?)"
            )
    check_same_weights(
        masks,
        model,
        what=label,
        hint="masks chosen on one model's weights protect the wrong weights of another; build "
        "them on this model (lrm-interp protect --model ...)",
    )


def _check_sites_given(sites: Any, done: str) -> Any:
    """``sites`` (a one-shot iterable read into a list), refused when it is an empty collection:
    ``sites=[]`` (e.g. a comprehension whose filter named no kind, ``s.kind == "gate_proj"``)
    compressed nothing and recorded the step all the same ("3-bit RTN" on unchanged weights, a next
    quantization refused as "already quantized"; H15-QSE / H15-PSE). ``None`` stays "all sites"."""
    if sites is None or isinstance(sites, (str, bytes, Mapping)) or not isinstance(sites, Iterable):
        return sites  # resolve_sites says what is wrong with anything but a collection
    sites = list(sites)
    if not sites:
        raise ValueError(
            f"sites is empty: nothing would be {done} (pass sites=None for every linear site, a regex, or a "
            "list naming at least one site; find_sites(model) lists them)"
        )
    return sites


def check_finite_weights(model: torch.nn.Module, sites: Sequence[Site], kind: str) -> None:
    """:class:`~lrm_interp.model.provenance.NonFiniteError` naming the first tensor of ``model``
    holding a NaN or an infinity, before any weight changes: quantizing a site spread the NaN over
    its groups and ``quantize`` wrote the broken model with exit 0 (a ``toy train`` that diverged,
    H29-NANMODEL); a norm or the embedding leaves the compressed copy as broken (H30-NANQUANT).

    One pass over the weights (an 8B model is read once): every parameter, named by its site when
    it is one of ``sites``' weights, plus the weights of ``sites`` that are not parameters.
    """
    site_weight: dict[int, str] = {}
    others: list[tuple[str, torch.Tensor]] = []  # a site whose weight is a buffer, not a parameter
    params = {id(p) for p in model.parameters()}
    for s in sites:
        w = getattr(get_module(model, s.name), "weight", None)
        if isinstance(w, torch.Tensor) and id(w) in params:
            site_weight[id(w)] = s.name
        else:
            others.append((s.name, weight_matrix(get_module(model, s.name))))
    bad = first_non_finite(model, names=site_weight)
    for name, W in others if bad is None else ():
        n = non_finite_count(W)
        if n:
            bad = (name, n)
            break
    if bad is None:
        return
    name, n = bad
    is_site = name in site_weight.values() or name in dict(others)
    values = f"{n} NaN or infinite value{'s' if n > 1 else ''}"
    if is_site:
        raise NonFiniteError(
            f"{name}: its weights hold {values}: the {kind} would spread them over the site; the model is broken "
            "(a training that diverged?); nothing was changed"
        )
    raise NonFiniteError(
        f"parameter {name} holds {values}: the model is broken (a training that diverged?); its {kind} would be "
        "too; nothing was changed"
    )


@checked_arguments
def compress_model_(
    model: torch.nn.Module,
    method: str | CompressionMethod,
    settings: Mapping[str, Any],
    *,
    report: Callable[[CompressionRun], R],
    kind: str | None = None,
    sites: Sequence[Site | str] | str | None = None,
    masks: Mapping[str, Any] | None = None,
    calib: HessianCalib | None = None,
    options: Mapping[str, Any] | None = None,
    hessian_transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    desc: str | None = None,
    progress: bool = True,
    requantize: bool = False,
) -> R:
    """Run ``method`` over the sites of ``model`` in place and record it (module docs).

    Args:
        settings: passed to ``method.build`` (e.g. ``bits``, ``group_size``, ``symmetric``).
        report: builds the front end's report from the :class:`CompressionRun`; its
            ``provenance()`` dict is recorded (plus ``hessian_transform``'s name if one is given).
        kind: the method must be of this kind (``ValueError`` otherwise).
        masks: ``{site: bool [out, in] or ProtectionMask}``; protected weights are kept. Checked
            by :func:`check_masks` before any weight changes (another model's masks are refused).
        calib: calibration data for calibrated methods (ignored by the others).
        options: the user's keyword options (``TypeError`` for one the method does not take).
        hessian_transform: calibrated methods only: ``(site, H) -> H'`` before use.
        sites: ``None`` (every linear site in the decoder layers), a regex or site names / Sites;
            an empty list is refused (``ValueError``, before anything changes or is recorded).
        on_result: ``(site, kernel result)`` per site (e.g. to keep quantized tensors).
        requantize: quantize a model whose record already holds a quantization step. By default
            that is refused (:class:`~lrm_interp.model.provenance.AlreadyQuantizedError`, before
            any weight changes): the second grid sits on the first, so the weights hold the first
            grid's values while the report and record name the second's bits (H12-QQ). Only the
            steps since the last ``model.load_state_dict`` count (a restore of the full-precision
            weights is quantized again; H13-RST), and a model without a record (loaded with
            ``from_pretrained``) is judged by the folder it was loaded from (H13-FPQ):
            :func:`~lrm_interp.model.provenance.check_not_quantized`.
    """
    m = get_method(method, kind)
    check_bool("requantize", requantize)
    sites = _check_sites_given(sites, _DONE[m.kind])
    model_record(model)  # notes an in-place restore since the last step before the weights change (H14-RCP)
    if m.kind == "quantization" and not requantize:
        check_not_quantized(
            model,
            "quantizing it again puts a second grid on the first (the weights keep the first grid's values "
            "while the report names the new bits); start from the original model, or pass requantize=True "
            "to stack them on purpose",
        )
    options = dict(options or {})
    bad = set(options) - set(m.allowed_options)
    if bad:
        raise TypeError(f"unexpected arguments for {m.label}: {sorted(bad)} (allowed: {list(m.allowed_options)})")
    site_list = resolve_sites(model, sites)
    check_masks(model, masks, site_list, _DONE[m.kind])
    check_finite_weights(model, site_list, m.kind)
    masks = dict(masks or {})
    if hessian_transform is not None and not m.calibrated:
        calibrated = " or ".join(repr(n) for n in method_names(m.kind, calibrated=True))
        raise ValueError(f"hessian_transform= needs method={calibrated}")
    kernel = m.build(**settings, **{k: v for k, v in options.items() if k in m.options})
    if m.calibrated:
        if calib is None:
            raise ValueError(
                f"{m.label} needs calibration data: calib=input_ids [b, s] (or tokenizer output / callable)"
            )
        groups: Iterable = layer_hessians(
            model, site_list, calib, progress=progress, **{k: v for k, v in options.items() if k in CALIBRATION_OPTIONS}
        )
        if hessian_transform is not None:
            groups = ((grp, {n: hessian_transform(n, H) for n, H in hs.items()}) for grp, hs in groups)
    else:
        groups = [(site_list, None)]
    with tqdm(total=len(site_list), desc=desc or m.label, unit="site", disable=not progress) as bar:
        n_w, n_p, n_z = compress_sites_(model, groups, kernel, masks=masks, on_result=on_result, bar=bar)
    rep = report(CompressionRun(m, tuple(site_list), n_w, n_p, n_z, len(masks)))
    extra = (
        {}
        if hessian_transform is None
        else {"hessian_transform": getattr(hessian_transform, "__qualname__", type(hessian_transform).__name__)}
    )
    record_compression(model, m.kind, **rep.provenance(), **extra)
    return rep


__all__ = [
    "CompressionMethod",
    "CompressionRun",
    "SiteKernel",
    "register_method",
    "get_method",
    "method_names",
    "compress_sites_",
    "compress_model_",
    "check_masks",
    "KINDS",
    "CALIBRATION_OPTIONS",
]
