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
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lrm_interp.attribution.config import MODES, SCORES
from lrm_interp.attribution.dom import check_finite
from lrm_interp.data.tokens import EncodedTrace, TokenSpan, target_positions
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.forward import frozen_for_attribution, input_device, logits_path, span_losses
from lrm_interp.model.prefix_cache import cache_support, cache_survives_checkpointing, trace_cache, window_cache
from lrm_interp.model.provenance import NonFiniteError
from lrm_interp.model.sites import Site


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
    dots = torch.zeros(len(spans), len(sites), dtype=torch.float64)
    for j, s in enumerate(sites):
        g = red.sums.get(s.name)
        if g is None:
            raise RuntimeError(f"no gradient reached site {s.name!r}: is it on the path to the loss?")
        dots[:, j] = g.double() @ vecs[s.name].double().to(g.device)
    if not bool(torch.isfinite(dots).all()):
        j = int((~torch.isfinite(dots)).any(0).nonzero()[0])
        raise NonFiniteError(f"{where}: the steering vector of site {sites[j].name} is not finite")
    return dots, losses.detach().double().cpu()


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
) -> dict[str, torch.Tensor]:
    """Per-span AtP dot products for one trace (additive statistics, safetensors-ready).

    ``exact`` with ``prefix_cache`` (default; when :func:`~lrm_interp.model.prefix_cache.cache_support`
    allows it): one no-grad forward over the trace caches every prefix's keys/values, then each
    span runs a forward+backward over its window ``[start − 1, end)`` only (exact: module docs of
    :mod:`lrm_interp.model.prefix_cache`); otherwise one full-prefix forward+backward per span.

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
    dev = input_device(model)
    out: dict[str, torch.Tensor] = {}
    cached = mode == "exact" and prefix_cache and cache_support(model, gradient_checkpointing=gradient_checkpointing)[0]
    kv = None
    ends = [s.end for s in enc.spans if s.behavior in behaviors and s.scorable]
    if cached and ends:  # before checkpointing is switched on: HF models drop caches under it
        with (
            torch.autocast(device_type=dev.type, dtype=compute_dtype)
            if compute_dtype is not None
            else contextlib.nullcontext()
        ):
            kv = trace_cache(model, enc.input_ids[: max(ends)].unsqueeze(0).to(dev))
    with (
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
            out[f"dots/{b}"] = dots
            out[f"loss/{b}"] = losses
            out[f"skipped/{b}"] = torch.tensor([float(len(allspans) - len(spans))])
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


def atp_aggregate(
    stats: Sequence[dict[str, torch.Tensor]], sites: Sequence[Site], behaviors: Sequence[str], *, score: str = "paper"
) -> AtPResult:
    """Paper Eq. 2 (``score="paper"``: |Σ_spans dot| / |D+|) or the code's Σ_spans |dot| / #spans."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    scores = torch.zeros(len(behaviors), len(sites), dtype=torch.float64)
    n_spans, n_traces, n_skipped = {}, {}, {}
    for i, b in enumerate(behaviors):
        per = [st[f"dots/{b}"] for st in stats if f"dots/{b}" in st and st[f"dots/{b}"].shape[0] > 0]
        n_traces[b] = len(per)
        n_spans[b] = sum(p.shape[0] for p in per)
        n_skipped[b] = int(sum(float(st[f"skipped/{b}"].sum()) for st in stats if f"skipped/{b}" in st))
        if not per:
            continue
        d = torch.cat(per).double()
        if d.shape[1] != len(sites):
            raise ValueError(f"behaviour {b!r}: statistics have {d.shape[1]} sites, expected {len(sites)}")
        scores[i] = d.sum(0).abs() / len(per) if score == "paper" else d.abs().sum(0) / d.shape[0]
    return AtPResult(tuple(behaviors), tuple(s.name for s in sites), scores, n_spans, n_traces, score, n_skipped)


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


__all__ = ["AtPResult", "atp_trace_stats", "atp_aggregate", "compute_atp", "MODES", "SCORES"]
