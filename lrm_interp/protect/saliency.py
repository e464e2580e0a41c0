"""Per-weight saliency inside each linear site, streamed one module at a time, and the
registry of saliency sources.

Every source returns a :class:`SaliencyStream`: iterating it yields
``(site, saliency [out, in] float32 CPU)`` one module at a time, and ``.sites`` tells a
policy (:func:`lrm_interp.protect.policies.global_top`) the total weight count up front, so no
policy ever holds a whole model's saliency. Larger = more worth keeping in FP16.

===================  ==============================================================
``magnitude``        ``|W_ij|``
``random``           uniform noise, seeded per (seed, site name) — the control
``activation``       ``|W_ij| · ‖x_j‖`` (AWQ-style), ``‖x_j‖ = sqrt(mean_t x_tj²)`` over
                     calibration tokens (``capture.MaskedSum(stage="input", square=True)``)
``hessian``          ``(W_ij − Q(W)_ij)² · H_jj``, ``H_jj = 2·mean_t x_tj²`` — the
                     diagonal-Hessian increase of the layer's output error when weight
                     ij is quantized (SpQR/OWQ-style), ``Q`` = RTN on the same grid
``attribution``      ``|G_ij| · |W_ij − Q(W)_ij|`` with ``G`` the loss gradient
                     accumulated over *reasoning-behaviour spans* (TaCQ-style, but
                     conditioned on behaviours)
``attribution_ri``   ``attribution`` rescaled per module by a module importance (e.g. the
                     mean relative importance of an AtP :class:`~lrm_interp.attribution.results.Attribution`)
===================  ==============================================================

The registry of every source by name (these, the scale-aware and the GPTQ-based ones) is
:mod:`lrm_interp.protect.registry`. Calibration data (``calib``) is normalised by
:func:`lrm_interp.compress.calibration.calibration_batches` (ids, or a tokenizer output
dict whose padding is excluded).

Gradient accumulation (:func:`weight_grads`): ``reduce="abs"`` sums ``|∂L_b/∂W|`` over
batches/spans (TaCQ: a weight matters if it matters for any sample); ``reduce="signed"``
sums the signed gradients first (first-order change of the *total* loss). Memory: one
float32 ``[out, in]`` accumulator per site in the current group plus the autograd graph;
``site_chunk=k`` processes ``k`` sites at a time (one extra forward/backward over the
data per chunk) so a big model never holds all weight gradients at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from lrm_interp.attribution.results import site_scores
from lrm_interp.compress.calibration import CalibData, calibration_batches
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.data.tokens import EncodedTrace, TokenSpan
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.forward import input_device, span_losses
from lrm_interp.model.provenance import check_same_weights, weights_fingerprint, weights_record
from lrm_interp.model.sites import Site, get_module
from lrm_interp.model.weights import weight_matrix


class SaliencyStream:
    """An iterable of ``(site, [out, in] saliency)`` that knows its sites up front, and the model
    it scores (``model``, when known: masks built from the stream record its weights fingerprint,
    :meth:`model_record`)."""

    def __init__(
        self,
        sites: Sequence[Site],
        fn: Callable[[], Iterator[tuple[Site, torch.Tensor]]],
        *,
        model: torch.nn.Module | None = None,
        fingerprint: str | None = None,
    ):
        self.sites = list(sites)
        self._fn = fn
        self.model = model
        self._fingerprint = fingerprint  # the model's weights fingerprint, when already computed

    def model_record(self) -> dict[str, str] | None:
        """``{"name", "weights_fingerprint"}`` of the scored model (fingerprinted once), ``None`` if unknown."""
        if self.model is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return weights_record(self.model, self._fingerprint)

    def __iter__(self) -> Iterator[tuple[Site, torch.Tensor]]:
        return self._fn()

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def n_weights(self) -> int:
        return sum(s.n_weights for s in self.sites)


def _w(model, s: Site) -> torch.Tensor:
    return weight_matrix(get_module(model, s.name)).detach().float().cpu()


def magnitude(model, sites: Sequence[Site]) -> SaliencyStream:
    """``|W|``."""
    return SaliencyStream(sites, lambda: ((s, _w(model, s).abs()) for s in sites), model=model)


def random_saliency(model, sites: Sequence[Site], seed: int = 0) -> SaliencyStream:
    """Uniform ``[0, 1)`` noise; a site's values depend only on ``(seed, site name)``."""

    def gen():
        for s in sites:
            g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(s.name.encode())) % 2**63)
            yield s, torch.rand(s.out_features, s.in_features, generator=g)

    return SaliencyStream(sites, gen, model=model)


def input_sq_means(
    model, sites: Sequence[Site], calib: CalibData, *, batch_size: int = 8, progress: bool = True
) -> dict[str, torch.Tensor]:
    """``mean_t x_tj²`` per site input ``[in]`` (float32, CPU) over calibration tokens.

    ``calib``: input ids ``[b, s]`` / ``[s]`` or a tokenizer output dict (padding excluded).
    ``progress``: a bar over the calibration batches.
    """
    red = MaskedSum("input", square=True, device="cpu")
    dev = input_device(model)
    batches = list(calibration_batches(calib, batch_size))  # views of calib
    with torch.no_grad(), Capture(model, list(sites), [red]):
        for ids, att in tqdm(batches, desc="calibration", unit="batch", leave=False, disable=not progress):
            red.set_weights(torch.ones(ids.shape, dtype=torch.float32) if att is None else att.float())
            kw = {} if att is None else {"attention_mask": att.to(dev)}
            model(input_ids=ids.to(dev), use_cache=False, **kw)
    return {k: v[0] / red.counts[k][0].clamp_min(1) for k, v in red.sums.items()}


def activation(
    model, sites: Sequence[Site], calib: CalibData, *, batch_size: int = 8, progress: bool = True
) -> SaliencyStream:
    """AWQ-style ``|W_ij| · sqrt(mean x_j²)`` ``[out, in]`` (one calibration pass, then streamed)."""
    sq = input_sq_means(model, sites, calib, batch_size=batch_size, progress=progress)
    return SaliencyStream(
        sites, lambda: ((s, _w(model, s).abs() * sq[s.name].sqrt().unsqueeze(0)) for s in sites), model=model
    )


def hessian(
    model,
    sites: Sequence[Site],
    calib: CalibData,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    symmetric: bool = False,
    batch_size: int = 8,
    progress: bool = True,
) -> SaliencyStream:
    """SpQR/OWQ-style ``(W − Q(W))² · H_jj`` ``[out, in]`` with ``H_jj = 2·mean x_j²`` and RTN ``Q``."""
    sq = input_sq_means(model, sites, calib, batch_size=batch_size, progress=progress)

    def gen():
        for s in sites:
            W = _w(model, s)
            dW = W - rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric)
            yield s, dW.pow(2) * (2 * sq[s.name]).unsqueeze(0)

    return SaliencyStream(sites, gen, model=model)


# ---------------------------------------------------------------------------- gradients
def weight_grads(
    model,
    sites: Sequence[Site],
    loss_fn: Callable[[Any, Any], torch.Tensor | None],
    batches: Iterable[Any],
    *,
    reduce: str = "abs",
    progress: bool = True,
    desc: str = "weight gradients",
) -> dict[str, torch.Tensor]:
    """Accumulated ``∂L/∂W`` ``[out, in]`` (float32, CPU) of ``sites`` over ``batches``.

    ``loss_fn(model, batch)`` returns a scalar loss (or ``None`` to skip the batch). Only
    the sites' weights require grad during the call; every ``requires_grad`` flag is
    restored. ``reduce``: ``"abs"`` (Σ|g|) or ``"signed"`` (Σg). ``progress``: a bar over
    the backward passes (one per batch).
    """
    if reduce not in ("abs", "signed"):
        raise ValueError(f"reduce must be 'abs' or 'signed', got {reduce!r}")
    mods = [get_module(model, s.name) for s in sites]
    conv = [type(m).__name__ == "Conv1D" for m in mods]
    params = [cast(torch.Tensor, m.weight) for m in mods]  # linear sites: a weight tensor
    flags = [(p, p.requires_grad) for p in model.parameters()]
    acc = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        total = len(batches) if isinstance(batches, Sized) else None
        for batch in tqdm(batches, desc=desc, total=total, unit="pass", leave=False, disable=not progress):
            loss = loss_fn(model, batch)
            if loss is None:
                continue
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for s, g, c in zip(sites, grads, conv):
                if g is None:
                    continue
                g = g.detach().float().cpu()
                g = g.T if c else g
                acc[s.name] += g.abs() if reduce == "abs" else g
    finally:
        for p, f in flags:
            p.requires_grad_(f)
    return acc


def scorable_spans(encoded: Sequence[EncodedTrace], behaviors: Sequence[str]) -> list[tuple[EncodedTrace, TokenSpan]]:
    """The ``(trace, span)`` pairs of the given behaviours that have at least one predictable token."""
    return [(e, sp) for e in encoded for sp in e.spans if sp.behavior in behaviors and sp.scorable]


def span_loss(model, item: tuple[EncodedTrace, TokenSpan]) -> torch.Tensor:
    """Mean cross-entropy of a span's tokens given the whole prefix (input cut after the span;
    :func:`lrm_interp.model.forward.span_losses`)."""
    e, sp = item
    ids = e.input_ids[None, : sp.end].to(input_device(model))
    return span_losses(model, ids, [sp])[0]


def behaviour_weight_grads(
    model,
    encoded: Sequence[EncodedTrace],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    reduce: str = "abs",
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Σ over behaviour spans of ``|∂L(s)/∂W|`` (or signed) per site ``[out, in]``.

    One backward per span (:func:`span_loss`: mean CE of the span's tokens given the whole
    prefix, positions from :func:`lrm_interp.data.tokens.target_positions`).
    """
    return weight_grads(
        model,
        sites,
        span_loss,
        _span_items(encoded, behaviors),
        reduce=reduce,
        progress=progress,
        desc="span gradients",
    )


def _span_items(encoded: Sequence[EncodedTrace], behaviors: Sequence[str]) -> list[tuple[EncodedTrace, TokenSpan]]:
    """:func:`scorable_spans`, or a ``ValueError`` when there is none."""
    items = scorable_spans(encoded, behaviors)
    if not items:
        raise ValueError(f"no span of behaviours {list(behaviors)} with target tokens in {len(encoded)} traces")
    return items


def attribution(
    model,
    sites: Sequence[Site],
    encoded: Sequence[EncodedTrace] | None = None,
    behaviors: Sequence[str] | None = None,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    symmetric: bool = False,
    module_importance: Mapping[str, float] | Any | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor | None] | None = None,
    batches: Iterable[Any] | None = None,
    reduce: str = "abs",
    site_chunk: int | None = None,
    quantizer: Callable[[Site, torch.Tensor], torch.Tensor] | None = None,
    weigh: Callable[[Site, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> SaliencyStream:
    """Behaviour-conditioned TaCQ-style saliency ``|G| ⊙ |W − Q(W)|``.

    Gradients ``G`` come from behaviour-span losses on ``encoded`` traces (``behaviors``), or
    from any ``loss_fn(model, batch)`` over ``batches``. ``Q``: RTN on the target grid, or
    ``quantizer(site, W) -> Q(W)`` (e.g. GPTQ). ``weigh(site, W, |G|) -> [out, in]`` replaces the
    whole per-weight formula (e.g. :func:`lrm_interp.protect.scale_aware.scale_aware_saliency`);
    ``quantizer`` is then unused. ``module_importance``: ``{site: score}`` or an
    :class:`~lrm_interp.attribution.results.Attribution` (its mean RI over behaviours,
    :func:`~lrm_interp.attribution.results.site_scores`); each module's saliency is then
    normalised to mean 1 and multiplied by its importance (0 for a site it does not name), so
    the module attribution decides how much of a global budget a module gets and the
    per-weight term which of its weights; an Attribution computed on other weights than
    ``model``'s is refused (:class:`~lrm_interp.model.provenance.WeightsMismatchError`, both
    fingerprints named). ``site_chunk``: sites per gradient pass (memory bound, see module
    docs). ``progress``: a bar over the backward passes of each pass.
    Yields ``(site, [out, in] float32)``.
    """
    fingerprint = check_same_weights(
        module_importance,
        model,
        what="the module importance (attribution scores)",
        hint="scores of one model rank another model's modules wrongly; attribute this model first",
    )
    if loss_fn is None:
        if encoded is None or behaviors is None:
            raise ValueError("attribution needs (encoded, behaviors) or (loss_fn, batches)")
        loss_fn, batches = span_loss, _span_items(encoded, behaviors)
    elif batches is None:
        raise ValueError("loss_fn needs batches")
    batches = list(batches)
    imp = None if module_importance is None else site_scores(module_importance)
    sites = list(sites)
    chunk = len(sites) if not site_chunk else int(site_chunk)

    def gen():
        for c0 in range(0, len(sites), chunk):
            part = sites[c0 : c0 + chunk]
            desc = "span gradients" if loss_fn is span_loss else "gradients"
            if chunk < len(sites):
                desc += f", sites {c0 + 1}-{c0 + len(part)}"
            G = weight_grads(model, part, loss_fn, batches, reduce=reduce, progress=progress, desc=desc)
            for s in part:
                W = _w(model, s)
                if weigh is not None:
                    sal = weigh(s, W, G.pop(s.name).abs()).float().cpu()
                else:
                    Q = (
                        quantizer(s, W)
                        if quantizer is not None
                        else rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric)
                    )
                    sal = G.pop(s.name).abs() * (W - Q.float().cpu()).abs()
                if imp is not None:
                    sal = sal / sal.mean().clamp_min(1e-30) * float(imp.get(s.name, 0.0))
                yield s, sal

    return SaliencyStream(sites, gen, model=model, fingerprint=fingerprint)
