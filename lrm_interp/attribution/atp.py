"""Attribution patching (AtP): how much each linear site matters for a behaviour.

Paper Eq. 2 (method.md §3), default ``score="paper"``::

    I[c, m] = (1/|D+|) · | Σ_{spans s of c} û[c, m] · mean_{t ∈ targets(s)} ∂L(s)/∂a_t |

``score="code"`` is the released code's Σ_s |·| / #spans. L(s) is the mean cross-entropy of
the span's tokens ``[start, end)`` given the whole prefix; targets(s) are the positions whose
outputs predict them, ``[start-1, end-1)`` (:func:`lrm_interp.data.tokens.target_positions`;
``off_by_one=True`` = the released code's window ``[start, end)``). |D+| counts the traces
with at least one scored span of the behaviour.

Modes:

- ``exact``: per span, the activation gradients of L(s) alone. By default one no-grad forward
  per trace caches every prefix's keys/values and each span runs a forward+backward over its
  window ``[start − 1, end)`` against the cached prefix (:mod:`lrm_interp.model.prefix_cache`;
  exact, not an approximation); ``prefix_cache=False`` — or a model whose cache cannot be
  truncated this way — runs one full-prefix forward+backward per span, input cut right after
  the span (``ids[:end]``, exact by causality).
- ``joint``: one forward+backward per (trace, behaviour), input cut after the behaviour's
  last span, loss Σ_s L(s) over all its spans, each span's gradient read at its own target
  positions. Approximation: for a position t of span s the gradient is
  ∂L(s)/∂a_t + Σ_{s' after s} ∂L(s')/∂a_t, i.e. it adds the effect of a_t on the losses of
  the *later* spans of the same behaviour (earlier spans cannot see a_t). Cost: one backward
  per trace instead of one per span.

Memory discipline:

- parameters are frozen for the duration (their ``requires_grad`` flags are restored on
  exit) and the backward is activation-only (the capture makes the embedding output
  require grad);
- the loss needs logits only at the target positions: the model is split into its base
  (``model.base_model``) and head (``model.get_output_embeddings()``), the head is applied to
  the hidden states of those positions only. The split is verified once per model on a
  short input against the full model's logits (so models that post-process logits, e.g.
  soft-capping, are caught); if it is unavailable or does not match, ``logits_to_keep`` is
  used when the model's forward accepts it, and only then full logits (documented fallback);
- gradients are reduced inside tensor hooks to one ``[n_spans, d]`` mean per site
  (:class:`~lrm_interp.model.capture.MaskedSum` ``stage="grad"``), never ``retain_grad``;
- optional non-reentrant gradient checkpointing (switched on for the call only, dropout
  stays off) and ``compute_dtype`` autocast with float32 loss and accumulation.

Real activation patching (the intervention AtP linearises, measured) lives here too:
:func:`patching_effects` ΔL(s, m, α) of adding α·û at a span's target positions, one no-grad
prefix forward per trace and each span's window re-run per batch of (α, site) rows;
:func:`real_per_span` puts it on the scale of a dot; :func:`patching_trace_stats` is one trace's
statistics for ``method="patching"`` of :func:`lrm_interp.attribute`, aggregated by the same
:func:`aggregate_spans`. :mod:`lrm_interp.attribution.faithfulness` compares the two (and
re-exports these names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lrm_interp.attribution.config import MODES, SCORES, check_patch_alpha
from lrm_interp.attribution.dom import check_finite, dom_stats_from_sums, dom_weights
from lrm_interp.checks import check_int, checked_arguments, refuse_string
from lrm_interp.data.tokens import EncodedTrace, TokenSpan, target_positions
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.forward import (
    base_and_head,
    cache_kwarg,
    frozen_for_attribution,
    hidden_states,
    input_device,
    logits_path,
    span_losses,
)
from lrm_interp.model.patching import add_to_outputs
from lrm_interp.model.prefix_cache import (
    cache_support,
    cache_survives_checkpointing,
    trace_cache,
    trace_caches,
    window_cache,
)
from lrm_interp.model.provenance import NonFiniteError
from lrm_interp.model.sites import Site, get_module


# --------------------------------------------------------------------------- per-span pieces
def _window_weights(length: int, spans: Sequence[TokenSpan], off_by_one: bool, offset: int = 0) -> torch.Tensor:
    """``[n_spans, 1, length]``: 1/|window| on each span's gradient window (clipped to the input
    ``[offset, offset + length)``; positions relative to ``offset``)."""
    w = torch.zeros(len(spans), 1, length)
    for k, s in enumerate(spans):
        p0, p1 = target_positions(s, off_by_one=off_by_one)
        p0, p1 = max(p0, 0) - offset, min(p1 - offset, length)
        if p1 > p0:
            w[k, 0, p0:p1] = 1.0 / (p1 - p0)
    return w


def window_start(span: TokenSpan) -> int:
    """First position a span's exact forward+backward needs: the one predicting its first token."""
    return max(span.start - 1, 0)


def _backward_dots(
    model,
    ids,
    spans,
    sites,
    vecs: dict[str, torch.Tensor],
    off_by_one: bool,
    compute_dtype: torch.dtype | None,
    where: str = "",
    *,
    offset: int = 0,
    cache: object | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward of Σ_s L(s) -> (``[n_spans, n_sites]`` dots float64, ``[n_spans]`` losses).

    ``ids [1, seq]`` are the tokens at positions ``[offset, offset + seq)``; with ``offset > 0``,
    ``cache`` holds the keys/values of ``[0, offset)`` (:mod:`lrm_interp.model.prefix_cache`).

    Non-finite losses, activation gradients or steering vectors raise
    :class:`~lrm_interp.model.provenance.NonFiniteError` naming ``where`` (trace, behaviour) and the site.
    """
    grads, losses = _backward_grads(
        model, ids, spans, sites, off_by_one, compute_dtype, where, offset=offset, cache=cache
    )
    dots = torch.zeros(len(spans), len(sites), dtype=torch.float64)
    for j, s in enumerate(sites):
        g = grads[s.name]
        dots[:, j] = g.double() @ vecs[s.name].double().to(g.device)
    if not bool(torch.isfinite(dots).all()):
        j = int((~torch.isfinite(dots)).any(0).nonzero()[0])
        raise NonFiniteError(f"{where}: the steering vector of site {sites[j].name} is not finite")
    return dots, losses


def _backward_grads(
    model,
    ids,
    spans,
    sites,
    off_by_one: bool,
    compute_dtype: torch.dtype | None,
    where: str = "",
    *,
    offset: int = 0,
    cache: object | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward+backward of Σ_s L(s) -> (``site -> [n_spans, d_out]`` float32 mean of ∂L/∂a over each
    span's target positions, ``[n_spans]`` float64 losses); arguments as :func:`_backward_dots`."""
    logits_path(model)  # decide (and probe) before any hook is active
    red = MaskedSum("grad", _window_weights(ids.shape[1], spans, off_by_one, offset), device="cpu")
    ctx = (
        torch.autocast(device_type=ids.device.type, dtype=compute_dtype)
        if compute_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.enable_grad(), Capture(model, list(sites), [red]):
        with ctx:
            losses = span_losses(model, ids, spans, offset=offset, cache=cache)
        if not bool(torch.isfinite(losses).all()):
            fin = torch.isfinite(losses.detach()).tolist()
            bad = [f"[{s.start}, {s.end})" for s, ok in zip(spans, fin) if not ok]
            raise NonFiniteError(f"{where}: span loss is not finite for token span(s) {', '.join(bad)}")
        losses.sum().backward()
    check_finite(red.sums, sites, f"{where}: activation gradients")
    for s in sites:
        if s.name not in red.sums:
            raise RuntimeError(f"no gradient reached site {s.name!r}: is it on the path to the loss?")
    return red.sums, losses.detach().double().cpu()


@checked_arguments
def atp_trace_stats(
    model: torch.nn.Module,
    enc: EncodedTrace,
    sites: Sequence[Site],
    behaviors: Sequence[str],
    vectors: dict[str, dict[str, torch.Tensor]],
    *,
    mode: str = "exact",
    off_by_one: bool = False,
    gradient_checkpointing: bool = False,
    compute_dtype: torch.dtype | None = None,
    prefix_cache: bool = True,
    progress: bool = False,
    gradients: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-span AtP dot products for one trace (additive statistics, safetensors-ready).

    ``gradients``: the trace's span-gradient sums from :func:`one_pass_trace_stats` (the one-pass
    stage of :func:`lrm_interp.attribute`): no model pass runs, the statistics are their dot products
    with the steering vectors (:func:`dots_from_gradients`: ``dotsum/<b>`` instead of ``dots/<b>``).

    ``exact`` with ``prefix_cache`` (default; when :func:`~lrm_interp.model.prefix_cache.cache_support`
    allows it): one no-grad forward over the trace caches every prefix's keys/values, then each
    span runs a forward+backward over its window ``[start − 1, end)`` only (exact: module docs of
    :mod:`lrm_interp.model.prefix_cache`; a rotary encoding that switches with length gets a cache
    per regime: :func:`~lrm_interp.model.prefix_cache.trace_caches`); otherwise one full-prefix
    forward+backward per span. ``progress``: a progress bar over the trace's spans (``exact``; a long
    trace has hundreds).

    Returns, for every behaviour ``b`` (shapes with 0 rows when the trace lacks it):
        ``dots/<b>``: ``[n_spans_b, n_sites]`` float64, û[b, site] · mean over the span's
        target positions of ∂L/∂a (``L`` = L(s) in ``exact``, Σ_s L(s) in ``joint``);
        ``loss/<b>``: ``[n_spans_b]`` float64, L(s) of each span (unpatched);
        ``skipped/<b>``: ``[1]`` spans that could not be scored (no predictable token).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    missing = [b for b in behaviors if enc.spans_of(b) and b not in vectors]
    if missing:
        raise KeyError(f"trace {enc.trace_id}: no steering vectors for behaviours {missing}")
    if gradients is not None:
        return dots_from_gradients(gradients, sites, behaviors, vectors, where=f"trace {enc.trace_id}")
    dev = input_device(model)
    out: dict[str, torch.Tensor] = {}
    cached = mode == "exact" and prefix_cache and cache_support(model, gradient_checkpointing=gradient_checkpointing)[0]
    caches = None
    ends = [s.end for s in enc.spans if s.behavior in behaviors and s.scorable]
    if cached and ends:  # before checkpointing is switched on: HF models drop caches under it
        with (
            torch.autocast(device_type=dev.type, dtype=compute_dtype)
            if compute_dtype is not None
            else contextlib.nullcontext()
        ):
            caches = trace_caches(model, enc.input_ids[: max(ends)].unsqueeze(0).to(dev), ends)
    bar = tqdm(
        total=len(ends) if mode == "exact" else len(behaviors),
        desc=f"AtP {enc.trace_id} ({len(enc)} tokens)",
        unit="span" if mode == "exact" else "behaviour",
        disable=not progress,
        leave=False,
    )
    with (
        bar,
        frozen_for_attribution(model, gradient_checkpointing=gradient_checkpointing),
        cache_survives_checkpointing(model) if cached and gradient_checkpointing else contextlib.nullcontext(),
    ):
        for b in behaviors:
            allspans = enc.spans_of(b)
            spans = [s for s in allspans if s.scorable]
            dots = torch.zeros(len(spans), len(sites), dtype=torch.float64)
            losses = torch.zeros(len(spans), dtype=torch.float64)
            if spans:
                vecs = vectors[b]
                if mode == "exact":
                    for k, s in enumerate(spans):
                        kv = caches.for_end(s.end) if caches is not None else None
                        q0 = window_start(s) if kv is not None else 0
                        ids = enc.input_ids[q0 : s.end].unsqueeze(0).to(dev)
                        d, l_ = _backward_dots(
                            model,
                            ids,
                            [s],
                            sites,
                            vecs,
                            off_by_one,
                            compute_dtype,
                            f"trace {enc.trace_id}, behaviour {b}",
                            offset=q0,
                            cache=window_cache(kv, q0) if kv is not None and q0 > 0 else None,
                        )
                        dots[k], losses[k] = d[0], l_[0]
                        bar.update(1)
                else:
                    ids = enc.input_ids[: max(s.end for s in spans)].unsqueeze(0).to(dev)
                    dots, losses = _backward_dots(
                        model,
                        ids,
                        spans,
                        sites,
                        vecs,
                        off_by_one,
                        compute_dtype,
                        f"trace {enc.trace_id}, behaviour {b}",
                    )
            if mode != "exact":
                bar.update(1)
            out[f"dots/{b}"] = dots
            out[f"loss/{b}"] = losses
            out[f"skipped/{b}"] = torch.tensor([float(len(allspans) - len(spans))])
    return out


# --------------------------------------------------------------------------- one pass per trace
def decoder_holds_sites(model: torch.nn.Module, sites: Sequence[Site]) -> bool:
    """Whether every site runs in the decoder forward that builds the prefix cache (the LM head, when
    it is a site, does not: the one-pass stage cannot take its DoM sums there)."""
    parts = base_and_head(model)
    dec = parts[0] if parts is not None else model
    inside = {id(m) for m in dec.modules()}
    return all(id(get_module(model, s.name)) in inside for s in sites)


@checked_arguments
def one_pass_trace_stats(
    model: torch.nn.Module,
    enc: EncodedTrace,
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    negatives: str = "all",
    special_tokens: str = "exclude",
    off_by_one: bool = False,
    gradient_checkpointing: bool = False,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One trace's DoM sums and AtP span-gradient sums from a single read of the trace.

    AtP's score is linear in the steering vector û: ``Σ_s û · ḡ_s = û · Σ_s ḡ_s`` with ḡ_s the mean of
    ∂L(s)/∂a over span s's target positions. So the gradients need no û: one no-grad forward over the
    whole trace, with the DoM capture hooks on it, gives both the DoM sums
    (:func:`~lrm_interp.attribution.dom.dom_stats_from_sums`, the statistics of
    :func:`~lrm_interp.attribution.dom.dom_trace_stats`) and the keys/values every span window attends
    to (:func:`~lrm_interp.model.prefix_cache.trace_caches` with ``full=``); then each scorable span runs
    its exact window forward+backward (as :func:`atp_trace_stats`, ``exact`` with the prefix cache) and
    its ḡ_s is added to its behaviour's sum. The dot with û comes after the DoM reduction
    (:func:`atp_trace_stats` with ``gradients=``, i.e. :func:`dots_from_gradients`).

    Needs what the prefix-cached exact path needs (:func:`~lrm_interp.model.prefix_cache.cache_support`)
    and every site inside the decoder (:func:`decoder_holds_sites`); runs at the model's dtype (no
    autocast: the DoM forward never had one). Only ``score="paper"`` can be formed from the sums
    (``"code"`` needs |û · ḡ_s| per span).

    Returns:
        ``(dom, grads)``: ``dom`` exactly the keys of :func:`~lrm_interp.attribution.dom.dom_trace_stats`;
        ``grads`` for every behaviour ``b``: ``n_spans/<b>`` ``[1]`` scored spans, ``grad/<b>/<site>``
        ``[d_out]`` float64 Σ_s ḡ_s (only when ``n_spans > 0``), ``loss/<b>`` ``[n_spans]`` float64
        L(s), ``skipped/<b>`` ``[1]`` spans without a predictable token.
    """
    ok, why = cache_support(model, gradient_checkpointing=gradient_checkpointing)
    if not ok:
        raise ValueError(f"trace {enc.trace_id}: the one-pass stage needs the prefix cache, unavailable: {why}")
    if not decoder_holds_sites(model, sites):
        raise ValueError("the one-pass stage needs every site inside the decoder (the LM head is a site here)")
    dev = input_device(model)
    weights = dom_weights(enc, behaviors, negatives=negatives, special_tokens=special_tokens)
    red = MaskedSum("output", weights, device="cpu")
    ids = enc.input_ids.unsqueeze(0).to(dev)
    ends = [s.end for s in enc.spans if s.behavior in behaviors and s.scorable]
    # before checkpointing (HF drops caches under it); kept only up to the last scored span's end
    with torch.no_grad(), Capture(model, list(sites), [red]):
        full = trace_cache(model, ids, keep=max(ends, default=1))
    dom = dom_stats_from_sums(red.sums, weights, enc, sites, behaviors)
    del red
    caches = trace_caches(model, ids, ends, full=full) if ends else None
    del full  # what the windows need is held by ``caches`` (views of it, or its own forwards)
    grads: dict[str, torch.Tensor] = {}
    bar = tqdm(
        total=len(ends), desc=f"AtP {enc.trace_id} ({len(enc)} tokens)", unit="span", disable=not progress, leave=False
    )
    with (
        bar,
        frozen_for_attribution(model, gradient_checkpointing=gradient_checkpointing),
        cache_survives_checkpointing(model) if gradient_checkpointing else contextlib.nullcontext(),
    ):
        for b in behaviors:
            allspans = enc.spans_of(b)
            spans = [s for s in allspans if s.scorable]
            losses = torch.zeros(len(spans), dtype=torch.float64)
            acc: dict[str, torch.Tensor] = {}
            for k, s in enumerate(spans):
                kv = caches.for_end(s.end) if caches is not None else None
                q0 = window_start(s) if kv is not None else 0
                g, l_ = _backward_grads(
                    model,
                    enc.input_ids[q0 : s.end].unsqueeze(0).to(dev),
                    [s],
                    sites,
                    off_by_one,
                    None,
                    f"trace {enc.trace_id}, behaviour {b}",
                    offset=q0,
                    cache=window_cache(kv, q0) if kv is not None and q0 > 0 else None,
                )
                for site in sites:
                    x = g[site.name][0].double()
                    if site.name in acc:
                        acc[site.name] += x
                    else:
                        acc[site.name] = x
                losses[k] = l_[0]
                bar.update(1)
            grads[f"n_spans/{b}"] = torch.tensor([float(len(spans))])
            for site in sites if spans else ():
                grads[f"grad/{b}/{site.name}"] = acc[site.name]
            grads[f"loss/{b}"] = losses
            grads[f"skipped/{b}"] = torch.tensor([float(len(allspans) - len(spans))])
    return dom, grads


def dots_from_gradients(
    gradients: dict[str, torch.Tensor],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    vectors: dict[str, dict[str, torch.Tensor]],
    *,
    where: str = "",
) -> dict[str, torch.Tensor]:
    """One trace's AtP statistics from its span-gradient sums (:func:`one_pass_trace_stats`).

    Returns, for every behaviour ``b``: ``dotsum/<b>`` ``[1, n_sites]`` float64, û[b, site] · Σ_s ḡ_s =
    Σ_s dot(s) over the trace's scored spans (``[0, n_sites]`` without one: the trace is not in D+);
    ``n_spans/<b>``, ``loss/<b>``, ``skipped/<b>`` as given. :func:`atp_aggregate` (``score="paper"``)
    sums these rows as it sums per-span ``dots/<b>`` rows.
    """
    out: dict[str, torch.Tensor] = {}
    for b in behaviors:
        n = int(gradients[f"n_spans/{b}"].sum())
        row = torch.zeros(1 if n else 0, len(sites), dtype=torch.float64)
        for j, s in enumerate(sites if n else ()):
            g = gradients[f"grad/{b}/{s.name}"].double()
            row[0, j] = g @ vectors[b][s.name].double().to(g.device)
        if not bool(torch.isfinite(row).all()):
            j = int((~torch.isfinite(row)).any(0).nonzero()[0])
            raise NonFiniteError(f"{where}, behaviour {b}: the steering vector of site {sites[j].name} is not finite")
        out[f"dotsum/{b}"] = row
        out[f"n_spans/{b}"] = gradients[f"n_spans/{b}"].clone()
        out[f"loss/{b}"] = gradients[f"loss/{b}"].clone()
        out[f"skipped/{b}"] = gradients[f"skipped/{b}"].clone()
    return out


# --------------------------------------------------------------------------- aggregation
@dataclass(frozen=True)
class AtPResult:
    """``scores[b, j]`` = I for behaviour ``behaviors[b]`` and site ``site_names[j]``.

    ``n_spans[b]``: spans scored; ``n_traces[b]``: |D+| (traces with ≥ 1 scored span);
    ``n_skipped[b]``: spans that could not be scored; ``score``: ``"paper"`` or ``"code"``.
    """

    behaviors: tuple[str, ...]
    site_names: tuple[str, ...]
    scores: torch.Tensor  # [n_behaviors, n_sites] float64
    n_spans: dict[str, int]
    n_traces: dict[str, int]
    score: str = "paper"
    n_skipped: dict[str, int] = field(default_factory=dict)


def aggregate_spans(per_span: torch.Tensor, n_traces: int, *, score: str = "paper") -> torch.Tensor:
    """``[n_sites]`` the package's aggregation of per-span values ``[n_spans, n_sites]``:
    ``|Σ_s x| / n_traces`` (``"paper"``, Eq. 2 with n_traces = |D+|) or ``Σ_s |x| / n_spans``
    (``"code"``); zeros without spans. The one place this formula lives: AtP dots
    (:func:`atp_aggregate`) and real patching effects (``method="patching"``,
    :mod:`lrm_interp.attribution.faithfulness`) both go through it."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if per_span.shape[0] == 0:
        return torch.zeros(per_span.shape[1], dtype=torch.float64)
    x = per_span.double()
    return x.sum(0).abs() / max(n_traces, 1) if score == "paper" else x.abs().sum(0) / x.shape[0]


def atp_aggregate(
    stats: Sequence[dict[str, torch.Tensor]],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    score: str = "paper",
    key: str = "dots",
) -> AtPResult:
    """Paper Eq. 2 (``score="paper"``: |Σ_spans dot| / |D+|) or the code's Σ_spans |dot| / #spans
    (:func:`aggregate_spans`) of the per-span values ``stats[i][f"{key}/<b>"]``: AtP dots
    (``key="dots"``) or real patching effects on the same scale (``key="real"``, ``method="patching"``)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    scores = torch.zeros(len(behaviors), len(sites), dtype=torch.float64)
    n_spans, n_traces, n_skipped = {}, {}, {}
    for i, b in enumerate(behaviors):
        k, ks = f"{key}/{b}", f"dotsum/{b}"
        per = [st[k] for st in stats if k in st and st[k].shape[0] > 0]
        n_spans[b] = sum(p.shape[0] for p in per)
        # one-pass statistics (dots_from_gradients): one row per trace, the sum of its spans' dots
        summed = [st for st in stats if key == "dots" and k not in st and ks in st and st[ks].shape[0] > 0]
        if summed and score != "paper":
            raise ValueError(
                f"behaviour {b!r}: score={score!r} needs each span's dot, but {len(summed)} trace(s) hold only "
                "their sum (one-pass statistics); compute them with atp_trace_stats from the model"
            )
        per += [st[ks] for st in summed]
        n_spans[b] += sum(int(st[f"n_spans/{b}"].sum()) for st in summed)
        n_traces[b] = len(per)
        n_skipped[b] = int(sum(float(st[f"skipped/{b}"].sum()) for st in stats if f"skipped/{b}" in st))
        if not per:
            continue
        d = torch.cat(per).double()
        if d.shape[1] != len(sites):
            raise ValueError(f"behaviour {b!r}: statistics have {d.shape[1]} sites, expected {len(sites)}")
        scores[i] = aggregate_spans(d, len(per), score=score)
    return AtPResult(tuple(behaviors), tuple(s.name for s in sites), scores, n_spans, n_traces, score, n_skipped)


@checked_arguments
def compute_atp(
    model: torch.nn.Module,
    encoded: Sequence[EncodedTrace],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    vectors: dict[str, dict[str, torch.Tensor]],
    *,
    mode: str = "exact",
    score: str = "paper",
    off_by_one: bool = False,
    gradient_checkpointing: bool = False,
    compute_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> AtPResult:
    """AtP over ``encoded`` traces (no caching; :func:`lrm_interp.attribute` adds resume)."""
    stats = [
        atp_trace_stats(
            model,
            e,
            sites,
            behaviors,
            vectors,
            mode=mode,
            off_by_one=off_by_one,
            gradient_checkpointing=gradient_checkpointing,
            compute_dtype=compute_dtype,
        )
        for e in tqdm(encoded, desc=f"AtP ({mode})", disable=not progress, unit="trace")
    ]
    return atp_aggregate(stats, sites, behaviors, score=score)


# --------------------------------------------------------------------------- real activation patching
# The intervention AtP linearises, measured (formulas in lrm_interp.attribution.faithfulness, which
# compares the two; ``method="patching"`` of lrm_interp.attribute scores with it).
#: (α, site) patched rows per forward of :func:`patching_effects` unless told otherwise.
PATCH_BATCH = 16


def check_alphas(alphas: Sequence[float] | float) -> tuple[float, ...]:
    """``alphas`` as a tuple of distinct floats, each within float32's normal range
    (:func:`~lrm_interp.attribution.config.check_patch_alpha`); ``ValueError`` otherwise (NaN, ±inf, ≤ 0,
    above 3.4e38, below 1.2e-38)."""
    if isinstance(alphas, (str, bytes)):
        try:
            fix = f"alphas=[{float(alphas)!r}]"
        except ValueError:
            fix = "alphas=[0.1, 1.0]"
        refuse_string("alphas", alphas, "a number or a list of numbers", fix)
    seq = (alphas,) if isinstance(alphas, (int, float)) else tuple(alphas)
    if not seq:
        raise ValueError("alphas must name at least one patch scale > 0")
    out = tuple(check_patch_alpha("alpha", a) for a in seq)
    if len(set(out)) != len(out):
        raise ValueError(f"alphas has duplicates: {list(out)}")
    return out


@dataclass(frozen=True)
class PatchingEffects:
    """Real activation-patching effects on the spans of each behaviour.

    Attributes:
        behaviors, site_names, alphas: the axes.
        effects: behaviour → ``[n_alphas, n_spans, n_sites]`` float64, ΔL(s, m, α) (module docs).
        base_loss: behaviour → ``[n_spans]`` float64, the unpatched L(s).
        n_targets: behaviour → ``[n_spans]`` int64, |targets(s)| (positions patched; the span's
            tokens scored by L(s)).
        spans: behaviour → ``((trace id, span index in the trace), ...)``, the rows of ``effects``.
        path: ``"prefix_cache"`` or ``"full_prefix"`` (with ``reason``).
    """

    behaviors: tuple[str, ...]
    site_names: tuple[str, ...]
    alphas: tuple[float, ...]
    effects: dict[str, torch.Tensor]
    base_loss: dict[str, torch.Tensor]
    n_targets: dict[str, torch.Tensor]
    spans: dict[str, tuple[tuple[str, int], ...]]
    path: str = "prefix_cache"
    reason: str = ""

    def n_traces(self, behavior: str) -> int:
        """|D+|: traces with at least one span of ``behavior`` here."""
        return len({t for t, _ in self.spans[behavior]})


def _expand_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int, start: int):
    """A read-only cache of positions ``[0, start)`` for a batch of ``rows`` identical prefixes."""
    return window_cache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv], start)


def _row_losses(
    model: torch.nn.Module, ids: torch.Tensor, span: TokenSpan, *, offset: int = 0, cache: object | None = None
) -> torch.Tensor:
    """``[rows]`` L(s) of each batch row (float32 at least): mean cross-entropy of the span's tokens.

    ``ids [rows, seq]`` are the tokens of absolute positions ``[offset, offset + seq)`` (identical
    rows; each row carries its own patch), ``cache`` the keys/values of ``[0, offset)`` for as many
    rows. Logits only at the positions predicting the span's tokens (as
    :func:`~lrm_interp.model.forward.span_losses`, which this equals row by row).
    """
    a, b = span.targets
    pos = torch.arange(a - 1, b - 1, device=ids.device) - offset
    if int(pos[0]) < 0:
        raise ValueError(f"span [{span.start}, {span.end}) needs position {a - 1}, before the window start {offset}")
    if logits_path(model) == "split":
        base, head = base_and_head(model)
        h = hidden_states(base, ids, cache)  # [rows, seq, d]
        logits = head(h[:, pos.to(h.device)])  # [rows, n, vocab]
    else:
        kw: dict[str, Any] = {"use_cache": False} if cache is None else {"use_cache": True, cache_kwarg(model): cache}
        logits = model(input_ids=ids, **kw).logits[:, pos]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    rows, n, vocab = logits.shape
    tgt = ids[0, a - offset : b - offset].to(logits.device)
    ce = F.cross_entropy(logits.reshape(rows * n, vocab), tgt.repeat(rows), reduction="none")
    return ce.view(rows, n).mean(1)


def _span_effects(
    model: torch.nn.Module,
    enc: EncodedTrace,
    span: TokenSpan,
    sites: Sequence[Site],
    vecs: dict[str, torch.Tensor],
    alphas: Sequence[float],
    *,
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None,
    off_by_one: bool,
    batch_size: int,
) -> tuple[torch.Tensor, float]:
    """``([n_alphas, n_sites] float64 ΔL, base L(s))`` of one span; rows (α, site) batched ``batch_size`` at a time.

    With ``kv`` (the trace's prefix cache) only the window ``[start − 1, end)`` runs; without it
    the full prefix ``ids[:end]``. Non-finite losses raise :class:`NonFiniteError` naming the span.
    """
    dev = input_device(model)
    q0 = window_start(span) if kv is not None else 0
    ids = enc.input_ids[q0 : span.end].to(dev).unsqueeze(0)  # [1, w]
    p0, p1 = target_positions(span, off_by_one=off_by_one)
    p0, p1 = max(p0, q0) - q0, min(p1, span.end) - q0  # patch positions inside the window
    where = f"trace {enc.trace_id}, span [{span.start}, {span.end}) ({span.behavior})"
    base = _row_losses(model, ids, span, offset=q0, cache=_expand_cache(kv, 1, q0) if kv is not None and q0 else None)
    if not bool(torch.isfinite(base).all()):
        raise NonFiniteError(f"{where}: the unpatched span loss is not finite")
    rows = [(i, j) for i in range(len(alphas)) for j in range(len(sites))]
    out = torch.zeros(len(alphas), len(sites), dtype=torch.float64)
    for k0 in range(0, len(rows), batch_size):
        chunk = rows[k0 : k0 + batch_size]
        n = len(chunk)
        masks: dict[int, torch.Tensor] = {}
        for r, (i, j) in enumerate(chunk):
            m = masks.setdefault(j, torch.zeros(n, ids.shape[1]))
            m[r, p0:p1] = alphas[i]  # the mask's value scales the addition (model/patching.py)
        additions = {sites[j].name: (vecs[sites[j].name], m) for j, m in masks.items()}
        cache = _expand_cache(kv, n, q0) if kv is not None and q0 else None
        with add_to_outputs(model, additions, alpha=1.0):
            losses = _row_losses(model, ids.expand(n, -1), span, offset=q0, cache=cache)
        if not bool(torch.isfinite(losses).all()):
            r = int((~torch.isfinite(losses)).nonzero()[0])
            i, j = chunk[r]
            raise NonFiniteError(
                f"{where}: the span loss patched at site {sites[j].name} (alpha {alphas[i]}) is not finite"
            )
        for r, (i, j) in enumerate(chunk):
            out[i, j] = float(losses[r]) - float(base[0])
    return out, float(base[0])


@checked_arguments
def patching_effects(
    model: torch.nn.Module,
    encoded: Sequence[EncodedTrace],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    vectors: dict[str, dict[str, torch.Tensor]],
    *,
    alphas: Sequence[float] | float = 1.0,
    off_by_one: bool = False,
    prefix_cache: bool = True,
    batch_size: int = PATCH_BATCH,
    compute_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> PatchingEffects:
    """Real activation patching ΔL(s, m, α) of every scorable span of ``behaviors`` in ``encoded``.

    Args:
        model: the causal LM (kept in eval mode; no parameter gets a gradient).
        encoded: tokenized traces; every scorable span of a listed behaviour is patched (pass traces
            whose ``spans`` were filtered to patch fewer, as
            :func:`~lrm_interp.attribution.faithfulness.atp_faithfulness` does).
        sites: the sites to patch, one at a time.
        behaviors: behaviour labels; each needs ``vectors[b][site.name]`` (``[d_out]``).
        vectors: the steering vectors û (e.g. ``Attribution.vectors`` / ``DoMResult.vectors``).
        alphas: patch scales (each finite > 0).
        off_by_one: patch the released code's window ``[start, end)`` instead of ``[start − 1, end − 1)``.
        prefix_cache: run only each span's window against the cached prefix when the model allows it.
        batch_size: (α, site) rows per forward.
        compute_dtype: autocast dtype of the forwards (losses in float32).
        progress: a progress bar over spans.

    Returns:
        :class:`PatchingEffects` with ``effects[b]`` ``[n_alphas, n_spans_b, n_sites]``.
    """
    alphas = check_alphas(alphas)
    check_int("batch_size", batch_size, min=1)
    missing = [b for b in behaviors if any(e.spans_of(b) for e in encoded) and b not in vectors]
    if missing:
        raise KeyError(f"no steering vectors for behaviours {missing}")
    ok, reason = cache_support(model) if prefix_cache else (False, "prefix_cache=False")
    dev = input_device(model)
    todo = [(e, s) for e in encoded for s in e.spans if s.behavior in behaviors and s.scorable]
    eff: dict[str, list[torch.Tensor]] = {b: [] for b in behaviors}
    base: dict[str, list[float]] = {b: [] for b in behaviors}
    ntg: dict[str, list[int]] = {b: [] for b in behaviors}
    ids_: dict[str, list[tuple[str, int]]] = {b: [] for b in behaviors}
    autocast = (
        (lambda: torch.autocast(device_type=dev.type, dtype=compute_dtype))
        if compute_dtype is not None
        else contextlib.nullcontext
    )
    bar = tqdm(total=len(todo), desc="real patching", unit="span", disable=not progress)
    with frozen_for_attribution(model), torch.no_grad(), bar:
        for e in encoded:
            spans = [s for s in e.spans if s.behavior in behaviors and s.scorable]
            if not spans:
                continue
            caches = None
            if ok:
                with autocast():
                    ends = [s.end for s in spans]
                    caches = trace_caches(model, e.input_ids[: max(ends)].unsqueeze(0).to(dev), ends)
            for s in spans:
                with autocast():
                    d, l0 = _span_effects(
                        model,
                        e,
                        s,
                        sites,
                        vectors[s.behavior],
                        alphas,
                        kv=caches.for_end(s.end) if caches is not None else None,
                        off_by_one=off_by_one,
                        batch_size=batch_size,
                    )
                eff[s.behavior].append(d)
                base[s.behavior].append(l0)
                a, b_ = s.targets
                ntg[s.behavior].append(b_ - a)
                ids_[s.behavior].append((e.trace_id, s.index))
                bar.update(1)
    n_sites = len(sites)
    effects = PatchingEffects(
        tuple(behaviors),
        tuple(s.name for s in sites),
        alphas,
        {
            b: torch.stack(eff[b], 1) if eff[b] else torch.zeros(len(alphas), 0, n_sites, dtype=torch.float64)
            for b in behaviors
        },
        {b: torch.tensor(base[b], dtype=torch.float64) for b in behaviors},
        {b: torch.tensor(ntg[b], dtype=torch.int64) for b in behaviors},
        {b: tuple(ids_[b]) for b in behaviors},
        "prefix_cache" if ok else "full_prefix",
        "span windows against the cached prefix" if ok else reason,
    )
    check_resolved(effects)
    return effects


def unresolved_sites(effects: torch.Tensor) -> int:
    """Sites whose ΔL is exactly 0 on every span: ``effects`` ``[n_spans, n_sites]`` → count.

    A real patch changes the loss of every span a little; an effect of exactly 0 on every span
    means the patch α·û fell below the resolution of the activations at that site (a small α), so
    real patching measured nothing there. 0 for an empty ``effects``."""
    if effects.numel() == 0:
        return 0
    return int(effects.eq(0).all(0).sum())


#: the compute dtypes whose rounding swamps a small patch (8 or 11 significant bits)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def patching_dtype(model: torch.nn.Module, compute_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype real patching runs its forwards in: a 16-bit ``compute_dtype`` (autocast) when
    given, else the dtype of the model's floating-point weights (float32 for a model without any)."""
    if compute_dtype in LOW_PRECISION:
        return compute_dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def low_precision_note(
    dtype: torch.dtype | str | None,
    alphas: Sequence[float],
    *,
    name: str = "alpha",
    meaning: str = "their rankings and spearman say little about AtP",
) -> str | None:
    """A warning when real patching ran in a 16-bit dtype (``dtype``: a torch dtype or its name as
    provenance records it) with some α below 1, else ``None``. A small patch moves a span's loss by
    less than the rounding of bfloat16 / float16 activations (8 / 11 significant bits) adds along
    the layers, so its measured ΔL is mostly rounding: on the toy reasoner in bfloat16 the α = 0.1
    Spearman with AtP fell from about 0.95 (float32) to about 0.7 and the α = 0.01 one to noise,
    while α = 1 agreed (H13-BFF). Exact zeros are counted apart (:func:`unresolved_sites`). ``name``:
    how the message calls α; ``meaning``: what the rounding spoils for the caller."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    small = sorted(a for a in alphas if a < 1)
    if dtype not in LOW_PRECISION or not small:
        return None
    dt = str(dtype).removeprefix("torch.")
    alphas_ = ", ".join(f"{a:g}" for a in small)
    return (
        f"real patching ran in {dt}: the loss changes of the small patches ({name} {alphas_}) are mostly {dt} "
        f"rounding, so {meaning}; measure them with the model in float32 and no 16-bit compute dtype, or use "
        f"{name} = 1"
    )


class UnresolvedPatchError(ValueError):
    """A patch scale α changed no span loss of a behaviour (:func:`check_resolved`)."""


def check_resolved(effects: PatchingEffects) -> None:
    """Refuse an α whose patch changed no span loss of a behaviour (H11-ALPHA).

    A patch α·û below the resolution of the model's activations (float32: about 6e-8 of their size)
    leaves every loss bit-identical: all of that behaviour's ΔL are exactly 0, so any ranking, Spearman
    or ratio built on them would come from no information. :class:`UnresolvedPatchError` (a
    ``ValueError``) naming the α and the behaviour; behaviours without a span here are skipped.
    """
    for i, alpha in enumerate(effects.alphas):
        for b in effects.behaviors:
            e = effects.effects[b][i]
            if e.numel() and not bool(e.ne(0).any()):
                raise UnresolvedPatchError(
                    f"the patch at alpha {alpha:g} changes no span loss of behaviour {b!r} ({e.shape[0]} span(s), "
                    f"{e.shape[1]} site(s): every effect is exactly 0, below the resolution of the model's "
                    "activations); use a larger alpha"
                )


@checked_arguments
def patching_trace_stats(
    model: torch.nn.Module,
    enc: EncodedTrace,
    sites: Sequence[Site],
    behaviors: Sequence[str],
    vectors: dict[str, dict[str, torch.Tensor]],
    *,
    alpha: float = 1.0,
    off_by_one: bool = False,
    prefix_cache: bool = True,
    batch_size: int = PATCH_BATCH,
    compute_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Per-span real patching of one trace at scale ``alpha``, as additive statistics
    (safetensors-ready) for ``method="patching"`` of :func:`lrm_interp.attribute`.

    Returns, for every behaviour ``b`` (0 rows when the trace lacks it):
        ``real/<b>``: ``[n_spans_b, n_sites]`` float64, ΔL(s, m, α) / (α·|targets(s)|)
        (:func:`real_per_span`: AtP's ``dot`` scale, aggregated by
        :func:`~lrm_interp.attribution.atp.aggregate_spans` into I_real);
        ``effect/<b>``: ``[n_spans_b, n_sites]`` float64, ΔL(s, m, α) itself;
        ``loss/<b>``: ``[n_spans_b]`` float64, the unpatched L(s);
        ``skipped/<b>``: ``[1]`` spans that could not be scored (no predictable token).
    """
    eff = patching_effects(
        model,
        [enc],
        sites,
        behaviors,
        vectors,
        alphas=(alpha,),
        off_by_one=off_by_one,
        prefix_cache=prefix_cache,
        batch_size=batch_size,
        compute_dtype=compute_dtype,
        progress=False,
    )
    out: dict[str, torch.Tensor] = {}
    for b in behaviors:
        out[f"real/{b}"] = real_per_span(eff.effects[b][0], eff.n_targets[b], eff.alphas[0])
        out[f"effect/{b}"] = eff.effects[b][0].contiguous()
        out[f"loss/{b}"] = eff.base_loss[b]
        out[f"skipped/{b}"] = torch.tensor([float(sum(1 for s in enc.spans_of(b) if not s.scorable))])
    return out


def real_per_span(effects: torch.Tensor, n_targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """``[n_spans, n_sites]`` ΔL(s, m, α) / (α·|targets(s)|): real patching on the scale of AtP's ``dot``."""
    return effects.double() / (alpha * n_targets.double().clamp_min(1)).unsqueeze(1)


__all__ = [
    "AtPResult",
    "atp_trace_stats",
    "aggregate_spans",
    "atp_aggregate",
    "compute_atp",
    "one_pass_trace_stats",
    "dots_from_gradients",
    "decoder_holds_sites",
    "MODES",
    "SCORES",
    "PATCH_BATCH",
    "PatchingEffects",
    "check_alphas",
    "check_resolved",
    "patching_dtype",
    "low_precision_note",
    "LOW_PRECISION",
    "unresolved_sites",
    "UnresolvedPatchError",
    "patching_effects",
    "patching_trace_stats",
    "real_per_span",
]
