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

Behaviour-span gradients (:func:`behaviour_weight_grads`, ``span_grads``; docs/protection.md):

- ``"exact"`` (default): ``G = Σ_s |∂L(s)/∂W|`` per span. By default one full-prefix
  forward+backward per span (measured fastest on CPU). With ``prefix_cache=True`` (when
  the model allows it) one forward with gradients per trace, run in chunks that end at span ends
  (a KV cache that carries gradients), then one backward per span, which reaches only the chunks
  up to the span's end: the per-span forward over the prefix is shared, the result the same to
  float32 rounding. ``prefix_cache=False``: one full-prefix forward+backward per span.
  ``reduce="signed"``: ``Σ_s ∂L(s)/∂W = ∂(Σ_s L(s))/∂W`` exactly, one backward per trace.
- ``"trace"`` (approximate): ``Σ_{trace, behaviour} |Σ_{s ∈ trace, behaviour} ∂L(s)/∂W|``, one
  forward per trace and one backward per behaviour in it (``≤`` the exact ``G`` by the triangle
  inequality; equal where the spans' gradients agree in sign, e.g. one span per behaviour and trace).
- ``"window"`` (approximate): per span the gradient of its window forward against the cached,
  constant keys/values of the prefix (:mod:`lrm_interp.model.prefix_cache`): the prefix positions'
  contribution through keys and values is left out. Exact for weights that reach the loss only at
  the window's own positions (every site of the last decoder layer except its key and value
  projections, the LM head) and for a span whose window starts at position 0.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lrm_interp.checks import checked_arguments, user_stacklevel
from lrm_interp.compress.calibration import CalibData, calibration_batches, check_calibration_context
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.data.tokens import EncodedTrace, TokenSpan
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.forward import base_and_head, hidden_states, input_device, logits_path, span_losses
from lrm_interp.model.prefix_cache import cache_support, rope_switch, trace_caches, window_cache
from lrm_interp.model.provenance import check_same_weights, weights_fingerprint, weights_record
from lrm_interp.model.sites import Site, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect.policies import module_scores, refuse_unscored_sites


class SaliencyStream:
    """An iterable of ``(site, [out, in] saliency)`` that knows its sites up front, and the model
    it scores (``model``, when known: masks built from the stream record its weights fingerprint,
    :meth:`model_record`).

    ``grid``: ``{"bits", "group_size", "symmetric", "saliency"}``, the quantization grid the
    saliency scores the error on (set by :func:`~lrm_interp.protect.registry.build_saliency` for the
    sources that depend on it); masks built from the stream carry it (``MaskSet.grid``), so
    ``save_masks`` records it and ``quantize_model_`` warns when they are applied on another grid.
    ``None``: the saliency does not depend on the grid, or it is unknown."""

    def __init__(
        self,
        sites: Sequence[Site],
        fn: Callable[[], Iterator[tuple[Site, torch.Tensor]]],
        *,
        model: torch.nn.Module | None = None,
        fingerprint: str | None = None,
        grid: Mapping[str, Any] | None = None,
    ):
        self.sites = list(sites)
        self._fn = fn
        self.model = model
        self.grid = dict(grid) if grid else None
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


@checked_arguments
def input_sq_means(
    model, sites: Sequence[Site], calib: CalibData, *, batch_size: int = 8, progress: bool = True
) -> dict[str, torch.Tensor]:
    """``mean_t x_tj²`` per site input ``[in]`` (float32, CPU) over calibration tokens.

    ``calib``: input ids ``[b, s]`` / ``[s]`` or a tokenizer output dict (padding excluded).
    ``progress``: a bar over the calibration batches.
    """
    red = MaskedSum("input", square=True, device="cpu")
    dev = input_device(model)
    check_calibration_context(model, calib)  # rows past the model's context: refused (H10-CLX)
    batches = list(calibration_batches(calib, batch_size))  # views of calib
    with torch.no_grad(), Capture(model, list(sites), [red]):
        for ids, att in tqdm(batches, desc="calibration", unit="batch", leave=False, disable=not progress):
            red.set_weights(torch.ones(ids.shape, dtype=torch.float32) if att is None else att.float())
            kw = {} if att is None else {"attention_mask": att.to(dev)}
            model(input_ids=ids.to(dev), use_cache=False, **kw)
    return {k: v[0] / red.counts[k][0].clamp_min(1) for k, v in red.sums.items()}


@checked_arguments
def activation(
    model, sites: Sequence[Site], calib: CalibData, *, batch_size: int = 8, progress: bool = True
) -> SaliencyStream:
    """AWQ-style ``|W_ij| · sqrt(mean x_j²)`` ``[out, in]`` (one calibration pass, then streamed)."""
    sq = input_sq_means(model, sites, calib, batch_size=batch_size, progress=progress)
    return SaliencyStream(
        sites, lambda: ((s, _w(model, s).abs() * sq[s.name].sqrt().unsqueeze(0)) for s in sites), model=model
    )


@checked_arguments
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
@checked_arguments
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
    batches = list(batches)

    def losses(m, batch) -> Iterator[torch.Tensor]:
        loss = loss_fn(m, batch)
        if loss is not None:
            yield loss

    return _accumulate(model, sites, losses, batches, len(batches), reduce=reduce, progress=progress, desc=desc)


def _accumulate(
    model,
    sites: Sequence[Site],
    losses_fn: Callable[[Any, Any], Iterable[torch.Tensor]],
    items: Sequence[Any],
    n_backward: int,
    *,
    reduce: str,
    progress: bool,
    desc: str,
) -> dict[str, torch.Tensor]:
    """Σ over ``items`` and over the losses ``losses_fn(model, item)`` yields of ``|∂loss/∂W|`` (or
    signed) per site. The losses of one item may share one graph (it is kept until the item's last
    loss); ``n_backward``: the number of losses in all, for the progress bar."""
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
        with tqdm(total=n_backward, desc=desc, unit="pass", leave=False, disable=not progress) as bar:
            for item in items:
                for loss in losses_fn(model, item):
                    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
                    for s, g, c in zip(sites, grads, conv):
                        if g is None:
                            continue
                        g = g.detach().float().cpu()
                        g = g.T if c else g
                        acc[s.name] += g.abs() if reduce == "abs" else g
                    bar.update(1)
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


SPAN_GRADS: tuple[str, ...] = ("exact", "trace", "window")
"""How :func:`behaviour_weight_grads` gets the span gradients (module docs; docs/protection.md)."""

#: chunks of the shared exact forward: at least this many tokens, at most ``_MAX_CHUNKS`` per trace
_MIN_CHUNK = 128
_MAX_CHUNKS = 16


def check_span_grads(span_grads: str) -> str:
    """``span_grads`` if it is one of :data:`SPAN_GRADS`, else a ``ValueError`` naming them."""
    if span_grads not in SPAN_GRADS:
        raise ValueError(f"span_grads must be one of {SPAN_GRADS}, got {span_grads!r}")
    return span_grads


@checked_arguments
def gradient_route(
    model, span_grads: str = "exact", reduce: str = "abs", *, prefix_cache: bool | None = None
) -> tuple[str, str]:
    """``(route, reason)``: how :func:`behaviour_weight_grads` computes span gradients on ``model``.

    Routes: ``"one_backward"`` (exact, signed: one backward per trace), ``"shared_forward"`` (exact:
    one chunked forward per trace, one backward per span), ``"full_prefix"`` (exact: a full-prefix
    forward+backward per span — the reference, and what ``prefix_cache=False`` asks for with
    either ``reduce``), ``"trace"`` and ``"window"`` (the approximations). ``reason`` says why the
    exact route is ``"full_prefix"`` (``""`` otherwise). ``prefix_cache=None`` (default): the
    cache for ``"window"`` and the signed one-backward route; ``"full_prefix"`` for exact ``|·|``
    sums, measured faster than ``"shared_forward"`` on CPU (80 s vs 139 s, 36 FOLIO spans on
    SmolLM2-135M, ``benchmarks/saliency_speed.py``; ``prefix_cache=True`` selects the shared forward).
    """
    check_span_grads(span_grads)
    if span_grads == "trace":
        return "trace", ""
    if prefix_cache is None:
        if span_grads == "exact" and reduce == "abs":
            return "full_prefix", _FULL_BY_DEFAULT
        prefix_cache = True
    if not prefix_cache:
        if span_grads == "window":
            raise ValueError("span_grads='window' needs the prefix cache (prefix_cache=True)")
        return "full_prefix", "prefix_cache=False"
    if reduce == "signed" and span_grads == "exact":
        return "one_backward", ""
    ok, reason = cache_support(model)
    if ok and span_grads == "exact":
        sw = rope_switch(model)
        if sw is not None:
            ok, reason = False, f"rotary frequencies switch with the forward's length ({sw[0]} past {sw[1]})"
        elif logits_path(model) != "split":
            ok, reason = False, "the model has no decoder/LM-head split"
    if ok:
        return ("shared_forward" if span_grads == "exact" else "window"), ""
    return "full_prefix", reason


_FULL_BY_DEFAULT = (
    "default for exact |·| sums: one full-prefix pass per span measured faster than the shared forward "
    "on CPU (benchmarks/saliency_speed.py); prefix_cache=True selects the shared forward"
)


def _trace_items(
    encoded: Sequence[EncodedTrace], behaviors: Sequence[str]
) -> list[tuple[EncodedTrace, list[TokenSpan]]]:
    """Per trace its scorable spans of ``behaviors`` (traces without one left out); a ``ValueError``
    when there is none at all."""
    _span_items(encoded, behaviors)
    out = []
    for e in encoded:
        spans = [sp for sp in e.spans if sp.behavior in behaviors and sp.scorable]
        if spans:
            out.append((e, spans))
    return out


def _chunk_ends(ends: Sequence[int]) -> list[int]:
    """Ends of the chunks of a shared exact forward over ``[0, max(ends))``: span ends, each chunk at
    least ``max(_MIN_CHUNK, total / _MAX_CHUNKS)`` tokens (the last may be shorter)."""
    total = max(ends)
    least = max(_MIN_CHUNK, -(-total // _MAX_CHUNKS))
    cuts: list[int] = []
    for e in sorted(set(ends)):
        if e - (cuts[-1] if cuts else 0) >= least:
            cuts.append(e)
    if not cuts or cuts[-1] != total:
        cuts.append(total)
    return cuts


def shared_forward_span_losses(model, ids: torch.Tensor, spans: Sequence[TokenSpan]) -> list[torch.Tensor]:
    """Every span's loss (as :func:`~lrm_interp.model.forward.span_losses`) from one forward over
    ``ids [1, ≥ max end]`` run in chunks ending at span ends (:func:`_chunk_ends`), each chunk
    continuing a KV cache that keeps its autograd graph.

    The losses share one graph; the backward of one span's loss reaches only the chunks up to the
    one holding its end, so a backward per span costs about a backward over its own prefix. Needs a
    model with a decoder/LM-head split and a plain KV cache (:func:`gradient_route`).
    """
    from transformers import DynamicCache

    parts = base_and_head(model)
    if parts is None:
        raise TypeError(f"{type(model).__name__}: no decoder/LM-head split")
    base, head = parts
    ranges = [sp.targets for sp in spans]
    pos = sorted({p - 1 for a, b in ranges for p in range(a, b)})
    cache = DynamicCache()
    rows: list[torch.Tensor] = []
    c0 = 0
    for c1 in _chunk_ends([sp.end for sp in spans]):
        h = hidden_states(base, ids[:, c0:c1], cache)
        take = [p - c0 for p in pos if c0 <= p < c1]
        if take:
            rows.append(h[0, torch.tensor(take, dtype=torch.long, device=h.device)])
        c0 = c1
    logits = head(torch.cat(rows))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    index = {p: i for i, p in enumerate(pos)}
    out = []
    for a, b in ranges:
        r = torch.tensor([index[p - 1] for p in range(a, b)], device=logits.device)
        out.append(F.cross_entropy(logits[r], ids[0, a:b].to(logits.device)))
    return out


def _route_losses(
    route: str, reduce: str
) -> Callable[[Any, tuple[EncodedTrace, list[TokenSpan]]], Iterator[torch.Tensor]]:
    """The losses one trace contributes under ``route`` (:func:`gradient_route`), one per backward."""

    def losses(model, item: tuple[EncodedTrace, list[TokenSpan]]) -> Iterator[torch.Tensor]:
        e, spans = item
        dev = input_device(model)
        end = max(sp.end for sp in spans)
        ids = e.input_ids[None, :end].to(dev)
        if route in ("one_backward", "trace"):
            per_span = span_losses(model, ids, spans)  # one forward: causal, each = its loss given its prefix
            if route == "one_backward" or reduce == "signed":
                yield per_span.sum()
            else:
                for b in dict.fromkeys(sp.behavior for sp in spans):
                    yield per_span[[k for k, sp in enumerate(spans) if sp.behavior == b]].sum()
        elif route == "shared_forward":
            yield from shared_forward_span_losses(model, ids, spans)
        elif route == "window":
            caches = trace_caches(model, ids, [sp.end for sp in spans])
            for sp in spans:
                kv = caches.for_end(sp.end)
                if kv is None:  # a rotary regime no cache reproduces: the full prefix
                    yield span_losses(model, ids[:, : sp.end], [sp])[0]
                    continue
                q0 = max(sp.start - 1, 0)
                cache = window_cache(kv, q0) if q0 > 0 else None
                yield span_losses(model, ids[:, q0 : sp.end], [sp], offset=q0, cache=cache)[0]
        else:
            for sp in spans:
                yield span_loss(model, (e, sp))

    return losses


def _n_backward(route: str, reduce: str, items: Sequence[tuple[EncodedTrace, list[TokenSpan]]]) -> int:
    if route == "one_backward" or (route == "trace" and reduce == "signed"):
        return len(items)
    if route == "trace":
        return sum(len({sp.behavior for sp in spans}) for _, spans in items)
    return sum(len(spans) for _, spans in items)


@checked_arguments
def behaviour_weight_grads(
    model,
    encoded: Sequence[EncodedTrace],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    reduce: str = "abs",
    span_grads: str = "exact",
    prefix_cache: bool | None = None,
    progress: bool = True,
    desc: str = "span gradients",
) -> dict[str, torch.Tensor]:
    """Σ over behaviour spans of ``|∂L(s)/∂W|`` (or signed) per site ``[out, in]``.

    ``L(s)``: mean CE of the span's tokens given the whole prefix, positions from
    :func:`lrm_interp.data.tokens.target_positions`. ``span_grads`` (module docs): ``"exact"``
    (default; one full-prefix forward+backward per span, or with ``prefix_cache=True`` one chunked
    forward per trace and one backward per span — same result, measured slower on CPU;
    ``reduce="signed"``: one backward per trace, also exact), ``"trace"`` (approximate:
    ``|Σ_s g_s|`` per trace and behaviour) or
    ``"window"`` (approximate: each span's window gradient against the constant cached prefix).
    A model whose cache cannot serve (:func:`gradient_route`) falls back to the full prefix per
    span (exact) with a ``UserWarning`` naming the reason when ``"window"`` was asked for.
    """
    route, reason = gradient_route(model, span_grads, reduce, prefix_cache=prefix_cache)
    if span_grads == "window" and route == "full_prefix":
        warnings.warn(
            f"span_grads='window' is not available for {type(model).__name__} ({reason}): "
            "exact full-prefix span gradients instead",
            stacklevel=user_stacklevel(),
        )
    items = _trace_items(encoded, behaviors)
    return _accumulate(
        model,
        sites,
        _route_losses(route, reduce),
        items,
        _n_backward(route, reduce, items),
        reduce=reduce,
        progress=progress,
        desc=desc,
    )


def _span_items(encoded: Sequence[EncodedTrace], behaviors: Sequence[str]) -> list[tuple[EncodedTrace, TokenSpan]]:
    """:func:`scorable_spans`, or a ``ValueError`` when there is none."""
    items = scorable_spans(encoded, behaviors)
    if not items:
        raise ValueError(f"no span of behaviours {list(behaviors)} with target tokens in {len(encoded)} traces")
    return items


@checked_arguments
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
    span_grads: str = "exact",
    prefix_cache: bool | None = None,
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
    :func:`~lrm_interp.attribution.results.site_scores`; importance that is zero everywhere is refused
    and a behaviour whose row alone is zero named, :func:`~lrm_interp.protect.policies.module_scores`);
    each module's saliency is then
    normalised to mean 1 and multiplied by its importance (0 for a site it does not name), so
    the module attribution decides how much of a global budget a module gets and the
    per-weight term which of its weights; an Attribution computed on other weights than
    ``model``'s is refused (:class:`~lrm_interp.model.provenance.WeightsMismatchError`, both
    fingerprints named). ``site_chunk``: sites per gradient pass (memory bound, see module
    docs). ``span_grads``/``prefix_cache``: how the behaviour-span gradients are computed
    (:func:`behaviour_weight_grads`: ``"exact"``, the default, or the approximations ``"trace"``
    and ``"window"``). ``progress``: a bar over the backward passes of each pass.
    Yields ``(site, [out, in] float32)``.
    """
    check_span_grads(span_grads)
    if span_grads == "window" and prefix_cache is False:
        raise ValueError("span_grads='window' needs the prefix cache (prefix_cache=True)")
    fingerprint = check_same_weights(
        module_importance,
        model,
        what="the module importance (attribution scores)",
        hint="scores of one model rank another model's modules wrongly; attribute this model first",
    )
    spans = loss_fn is None
    if spans:
        if encoded is None or behaviors is None:
            raise ValueError("attribution needs (encoded, behaviors) or (loss_fn, batches)")
        encoded, behaviors = list(encoded), list(behaviors)
        _span_items(encoded, behaviors)  # none at all: refused now, not when iterated
    elif batches is None:
        raise ValueError("loss_fn needs batches")
    else:
        batches = list(batches)
    # all-zero importance would zero every saliency: refused (module_scores)
    imp = None if module_importance is None else module_scores(module_importance, purpose="weigh the modules")
    sites = list(sites)
    if imp is not None:  # a site it does not score: its saliency weighed to 0 (H33-MBSKEYS)
        refuse_unscored_sites(imp, sites, "module_importance")
    chunk = len(sites) if not site_chunk else int(site_chunk)

    def gen():
        for c0 in range(0, len(sites), chunk):
            part = sites[c0 : c0 + chunk]
            desc = "span gradients" if spans else "gradients"
            if chunk < len(sites):
                desc += f", sites {c0 + 1}-{c0 + len(part)}"
            if spans:
                G = behaviour_weight_grads(
                    model,
                    cast(Sequence[EncodedTrace], encoded),
                    part,
                    cast(Sequence[str], behaviors),
                    reduce=reduce,
                    span_grads=span_grads,
                    prefix_cache=prefix_cache,
                    progress=progress,
                    desc=desc,
                )
            else:
                G = weight_grads(
                    model,
                    part,
                    cast(Callable, loss_fn),
                    cast(list, batches),
                    reduce=reduce,
                    progress=progress,
                    desc=desc,
                )
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
                    if not bool(torch.isfinite(sal).all()):  # named the saliency, not its cause (H34-MIHUGE)
                        raise ValueError(
                            f"module_importance of {s.name} ({imp.get(s.name)!r}) overflows its saliency (weighed "
                            "saliencies are not finite): give relative importances (e.g. res.site_ri(), summing to 1)"
                        )
                yield s, sal

    return SaliencyStream(sites, gen, model=model, fingerprint=fingerprint)
