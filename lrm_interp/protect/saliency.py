"""Per-weight saliency inside each linear site, streamed one module at a time.

Every function returns a :class:`SaliencyStream`: iterating it yields
``(site, saliency [out, in] float32 CPU)`` one module at a time, and ``.sites`` tells a
policy (:func:`lrm_interp.protect.masks.global_top`) the total weight count up front, so no policy
ever holds a whole model's saliency. Larger = more worth keeping in FP16.

========================  ==============================================================
``magnitude``             ``|W_ij|``
``random``                uniform noise, seeded per (seed, site name) — the control
``activation``            ``|W_ij| · ‖x_j‖`` (AWQ-style), ``‖x_j‖ = sqrt(mean_t x_tj²)`` over
                          calibration tokens (``capture.MaskedSum(stage="input", square=True)``)
``hessian``               ``(W_ij − Q(W)_ij)² · H_jj``, ``H_jj = 2·mean_t x_tj²`` — the
                          diagonal-Hessian increase of the layer's output error when weight
                          ij is quantized (SpQR/OWQ-style), ``Q`` = RTN on the same grid
``attribution``           ``|G_ij| · |W_ij − Q(W)_ij|`` with ``G`` the loss gradient
                          accumulated over *reasoning-behaviour spans* (TaCQ-style, but
                          conditioned on behaviours), optionally rescaled per module by a
                          module importance (e.g. mean relative importance from AtP)
========================  ==============================================================

Gradient accumulation (:func:`weight_grads`): ``reduce="abs"`` sums ``|∂L_b/∂W|`` over
batches/spans (TaCQ: a weight matters if it matters for any sample); ``reduce="signed"``
sums the signed gradients first (first-order change of the *total* loss). Memory: one
float32 ``[out, in]`` accumulator per site in the current group plus the autograd graph;
``site_chunk=k`` processes ``k`` sites at a time (one extra forward/backward over the
data per chunk) so a big model never holds all weight gradients at once.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.weights import weight_matrix
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.model.sites import Site, get_module
from lrm_interp.data.tokens import EncodedTrace, TokenSpan
from lrm_interp.model.forward import input_device, span_losses


class SaliencyStream:
    """An iterable of ``(site, [out, in] saliency)`` that knows its sites up front."""

    def __init__(self, sites: Sequence[Site], fn: Callable[[], Iterator[tuple[Site, torch.Tensor]]]):
        self.sites = list(sites)
        self._fn = fn

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
    return SaliencyStream(sites, lambda: ((s, _w(model, s).abs()) for s in sites))


def random_saliency(model, sites: Sequence[Site], seed: int = 0) -> SaliencyStream:
    """Uniform ``[0, 1)`` noise; a site's values depend only on ``(seed, site name)``."""
    def gen():
        for s in sites:
            g = torch.Generator().manual_seed((int(seed) * 1_000_003 + zlib.crc32(s.name.encode())) % 2 ** 63)
            yield s, torch.rand(s.out_features, s.in_features, generator=g)
    return SaliencyStream(sites, gen)


def _calib_batches(calib: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(calib, Mapping):
        ids, att = calib["input_ids"], calib.get("attention_mask")
    else:
        ids, att = torch.as_tensor(calib), None
        if ids.dim() == 1:
            ids = ids[None]
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size], None if att is None else att[i:i + batch_size]


def input_sq_means(model, sites: Sequence[Site], calib: Any, *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``mean_t x_tj²`` per site input ``[in]`` (float32, CPU) over calibration tokens.

    ``calib``: input ids ``[b, s]`` or a tokenizer output dict (padding excluded).
    """
    red = MaskedSum("input", square=True, device="cpu")
    dev = input_device(model)
    with torch.no_grad(), Capture(model, list(sites), [red]):
        for ids, att in _calib_batches(calib, batch_size):
            red.set_weights(torch.ones(ids.shape, dtype=torch.float32) if att is None else att.float())
            kw = {} if att is None else {"attention_mask": att.to(dev)}
            model(input_ids=ids.to(dev), use_cache=False, **kw)
    return {k: v[0] / red.counts[k][0].clamp_min(1) for k, v in red.sums.items()}


def activation(model, sites: Sequence[Site], calib: Any, *, batch_size: int = 8) -> SaliencyStream:
    """AWQ-style ``|W_ij| · sqrt(mean x_j²)`` (one calibration pass, then streamed)."""
    sq = input_sq_means(model, sites, calib, batch_size=batch_size)
    return SaliencyStream(sites, lambda: ((s, _w(model, s).abs() * sq[s.name].sqrt().unsqueeze(0)) for s in sites))


def hessian(model, sites: Sequence[Site], calib: Any, *, bits: int = 3, group_size: int | None = 128,
            symmetric: bool = False, batch_size: int = 8) -> SaliencyStream:
    """SpQR/OWQ-style ``(W − Q(W))² · H_jj`` with ``H_jj = 2·mean x_j²`` and RTN ``Q``."""
    sq = input_sq_means(model, sites, calib, batch_size=batch_size)

    def gen():
        for s in sites:
            W = _w(model, s)
            dW = W - rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric)
            yield s, dW.pow(2) * (2 * sq[s.name]).unsqueeze(0)
    return SaliencyStream(sites, gen)


# ---------------------------------------------------------------------------- gradients
def weight_grads(model, sites: Sequence[Site], loss_fn: Callable[[Any, Any], torch.Tensor | None],
                 batches: Iterable[Any], *, reduce: str = "abs") -> dict[str, torch.Tensor]:
    """Accumulated ``∂L/∂W`` ``[out, in]`` (float32, CPU) of ``sites`` over ``batches``.

    ``loss_fn(model, batch)`` returns a scalar loss (or ``None`` to skip the batch). Only
    the sites' weights require grad during the call; every ``requires_grad`` flag is
    restored. ``reduce``: ``"abs"`` (Σ|g|) or ``"signed"`` (Σg).
    """
    if reduce not in ("abs", "signed"):
        raise ValueError(f"reduce must be 'abs' or 'signed', got {reduce!r}")
    mods = [get_module(model, s.name) for s in sites]
    conv = [type(m).__name__ == "Conv1D" for m in mods]
    params = [m.weight for m in mods]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    acc = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
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
    ids = e.input_ids[None, :sp.end].to(input_device(model))
    return span_losses(model, ids, [sp])[0]


def behaviour_weight_grads(model, encoded: Sequence[EncodedTrace], sites: Sequence[Site],
                           behaviors: Sequence[str], *, reduce: str = "abs") -> dict[str, torch.Tensor]:
    """Σ over behaviour spans of ``|∂L(s)/∂W|`` (or signed) per site ``[out, in]``.

    One backward per span (:func:`span_loss`: mean CE of the span's tokens given the whole
    prefix, positions from :func:`lrm_interp.data.tokens.target_positions`).
    """
    items = scorable_spans(encoded, behaviors)
    if not items:
        raise ValueError(f"no span of behaviours {list(behaviors)} with target tokens in {len(encoded)} traces")
    return weight_grads(model, sites, span_loss, items, reduce=reduce)


def attribution(model, sites: Sequence[Site], encoded: Sequence[EncodedTrace] | None = None,
                behaviors: Sequence[str] | None = None, *, bits: int = 3, group_size: int | None = 128,
                symmetric: bool = False, module_importance: Mapping[str, float] | Any | None = None,
                loss_fn: Callable[[Any, Any], torch.Tensor | None] | None = None, batches: Iterable[Any] | None = None,
                reduce: str = "abs", site_chunk: int | None = None,
                quantizer: Callable[[Site, torch.Tensor], torch.Tensor] | None = None) -> SaliencyStream:
    """Behaviour-conditioned TaCQ-style saliency ``|G| ⊙ |W − Q(W)|``.

    Gradients ``G`` come from behaviour-span losses on ``encoded`` traces (``behaviors``), or
    from any ``loss_fn(model, batch)`` over ``batches``. ``Q``: RTN on the target grid, or
    ``quantizer(site, W) -> Q(W)`` (e.g. GPTQ). ``module_importance``: ``{site: score}`` or an
    :class:`~lrm_interp.attribution.results.Attribution` (mean RI over its behaviours); each module's
    saliency is then normalised to mean 1 and multiplied by its importance, so the module
    attribution decides how much of a global budget a module gets and the per-weight term
    which of its weights. ``site_chunk``: sites per gradient pass (memory bound, see module docs).
    """
    if loss_fn is None:
        if encoded is None or behaviors is None:
            raise ValueError("attribution needs (encoded, behaviors) or (loss_fn, batches)")
        items = scorable_spans(encoded, behaviors)
        if not items:
            raise ValueError(f"no span of behaviours {list(behaviors)} with target tokens in {len(encoded)} traces")
        loss_fn, batches = span_loss, items
    elif batches is None:
        raise ValueError("loss_fn needs batches")
    batches = list(batches)
    imp = None
    if module_importance is not None:
        imp = module_importance if isinstance(module_importance, Mapping) else mean_ri(module_importance, sites)
    sites = list(sites)
    chunk = len(sites) if not site_chunk else int(site_chunk)

    def gen():
        for c0 in range(0, len(sites), chunk):
            part = sites[c0:c0 + chunk]
            G = weight_grads(model, part, loss_fn, batches, reduce=reduce)
            for s in part:
                W = _w(model, s)
                Q = (quantizer(s, W) if quantizer is not None
                     else rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric))
                sal = G.pop(s.name).abs() * (W - Q.float().cpu()).abs()
                if imp is not None:
                    sal = sal / sal.mean().clamp_min(1e-30) * float(imp.get(s.name, 0.0))
                yield s, sal
    return SaliencyStream(sites, gen)


def mean_ri(attr, sites: Sequence[Site], behavior: str | None = None) -> dict[str, float]:
    """Relative importance per site (mean over behaviours, or of ``behavior``) from an Attribution."""
    ri = attr.ri[attr.behaviors.index(behavior)] if behavior else attr.ri.mean(dim=0)
    idx = {n: i for i, n in enumerate(attr.site_names)}
    return {s.name: float(ri[idx[s.name]]) if s.name in idx else 0.0 for s in sites}


def comparison_sources(model, sites: Sequence[Site], encoded: Sequence[EncodedTrace], behaviors: Sequence[str],
                       calib: Any, *, bits: int, group_size: int | None = 128, symmetric: bool = False,
                       module_importance: Any = None, seed: int = 0) -> dict[str, Callable[[], SaliencyStream]]:
    """The saliencies a protection experiment compares, as lazy ``{row name: () -> stream}``.

    Attribution-guided (with and without ``module_importance``), magnitude, activation
    (AWQ-style, ``calib`` ids), Hessian (SpQR-style; it and attribution measure ``W − Q(W)`` on
    the ``bits``/``group_size``/``symmetric`` grid) and
    random (``seed``). Used by ``examples/protection_experiment.py`` and ``protection_smollm2.py``.
    """
    out: dict[str, Callable[[], SaliencyStream]] = {}
    if module_importance is not None:
        out["attribution (behaviour-span TaCQ × module RI)"] = lambda: attribution(
            model, sites, encoded, behaviors, bits=bits, group_size=group_size, symmetric=symmetric,
            module_importance=module_importance)
    out.update({
        "attribution (behaviour-span TaCQ)": lambda: attribution(model, sites, encoded, behaviors, bits=bits,
                                                                 group_size=group_size, symmetric=symmetric),
        "magnitude": lambda: magnitude(model, sites),
        "activation (AWQ-style)": lambda: activation(model, sites, calib),
        "hessian (SpQR-style)": lambda: hessian(model, sites, calib, bits=bits, group_size=group_size,
                                                symmetric=symmetric),
        "random": lambda: random_saliency(model, sites, seed=seed),
    })
    return out


def comparison_masks(sources: Mapping[str, Callable[[], SaliencyStream]], sites: Sequence[Site], budget: float = 0.02,
                     *, progress: bool = False) -> dict[str, dict]:
    """The mask rows of a protection experiment: ``{"none": {}}``, then ``"<budget> <name>"`` =
    :func:`~lrm_interp.protect.masks.global_top` of each source, then the paper's final-layer MLP."""
    from tqdm.auto import tqdm

    from lrm_interp.protect.masks import final_mlp, global_top

    rows: dict[str, dict] = {"none": {}}
    for name, fn in tqdm(sources.items(), desc="saliency", disable=not progress):
        rows[f"{budget:.0%} {name}"] = global_top(fn(), budget)
    rows["final-layer MLP (paper)"] = final_mlp(sites)
    return rows


KINDS = ("magnitude", "activation", "hessian", "random", "attribution")
