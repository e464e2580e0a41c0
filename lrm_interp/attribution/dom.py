"""Difference of means (DoM): a steering vector per behaviour and linear site.

For behaviour c and site m (method.md §2)::

    u[c, m] = mean_{i ∈ D+} ā_c(i) − mean_{j ∈ D−} ā(j)
    û[c, m] = u · ‖ā_all‖₂ / ‖u‖₂

Computed in two steps so long runs can cache and resume per trace:
:func:`dom_trace_stats` (one no-grad forward per trace, masked sums reduced inside the
capture hooks) and :func:`dom_aggregate` (pure arithmetic on the per-trace sums).
Every behaviour has its own accumulator row (the released code shared one tensor between
the four behaviours, so all got the same sum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lrm_interp.attribution.config import NEGATIVES, SPECIAL_TOKENS, WEIGHTINGS
from lrm_interp.checks import checked_arguments
from lrm_interp.data.tokens import EncodedTrace, span_mask
from lrm_interp.model.capture import Capture, MaskedSum
from lrm_interp.model.forward import activation_forward, input_device
from lrm_interp.model.provenance import NonFiniteError
from lrm_interp.model.sites import Site


def negative_mask(enc: EncodedTrace, negatives: str = "all", special_tokens: str = "exclude") -> torch.Tensor:
    """``[seq]`` mask of the tokens forming D− for this trace.

    ``all``: every token of prompt + response; ``response``: the response only; ``thinking``:
    the response up to ``</think>``. ``special_tokens="exclude"`` (default) leaves out every
    special token (BOS, and mid-text specials such as ``<think>`` when the tokenizer marks it
    special); ``"include"`` keeps them, as the released code does (its D− and overall mean
    contain BOS).
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    if special_tokens not in SPECIAL_TOKENS:
        raise ValueError(f"special_tokens must be one of {SPECIAL_TOKENS}, got {special_tokens!r}")
    n = len(enc)
    m = torch.zeros(n)
    if negatives == "all":
        start = 0 if special_tokens == "include" else enc.first_content
    else:
        start = max(enc.response_start, enc.first_content)
    end = enc.think_end if negatives == "thinking" else n
    m[start:end] = 1.0
    if special_tokens == "exclude" and enc.special:
        m[list(enc.special)] = 0.0
    return m


def dom_trace_stats(
    model: torch.nn.Module,
    enc: EncodedTrace,
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    negatives: str = "all",
    special_tokens: str = "exclude",
) -> dict[str, torch.Tensor]:
    """Per-trace DoM sums (float32, CPU), keyed for safetensors.

    Returns:
        ``pos_sum/<behavior>/<site>`` ``[d_out]``: sum of the site output over the union of
        that behaviour's DoM windows; ``pos_count/<behavior>`` ``[1]``: number of tokens;
        ``neg_sum/<site>`` ``[d_out]`` and ``neg_count`` ``[1]`` over the D− tokens.
    """
    weights = dom_weights(enc, behaviors, negatives=negatives, special_tokens=special_tokens)
    red = MaskedSum("output", weights, device="cpu")
    ids = enc.input_ids.unsqueeze(0).to(input_device(model))
    run = activation_forward(model, sites)
    with torch.no_grad(), Capture(model, list(sites), [red]):
        run(ids)
    return dom_stats_from_sums(red.sums, weights, enc, sites, behaviors)


def dom_weights(
    enc: EncodedTrace, behaviors: Sequence[str], *, negatives: str = "all", special_tokens: str = "exclude"
) -> torch.Tensor:
    """``[n_behaviors + 1, 1, seq]`` token weights of one trace's DoM sums: each behaviour's union of
    DoM windows, then the D− mask (:func:`negative_mask`); the weights of the
    :class:`~lrm_interp.model.capture.MaskedSum` whose sums :func:`dom_stats_from_sums` reads."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, got {negatives!r}")
    n = len(enc)
    if n == 0:
        raise ValueError(f"trace {enc.trace_id}: no tokens")
    rows = [span_mask(n, enc.spans_of(b), context=True) for b in behaviors]
    rows.append(negative_mask(enc, negatives, special_tokens))
    return torch.stack(rows).unsqueeze(1)  # [G, 1, n]


def dom_stats_from_sums(
    sums: dict[str, torch.Tensor],
    weights: torch.Tensor,
    enc: EncodedTrace,
    sites: Sequence[Site],
    behaviors: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The per-trace statistics of :func:`dom_trace_stats` from the ``sums`` (``site -> [G, d_out]``) of a
    :class:`~lrm_interp.model.capture.MaskedSum` with :func:`dom_weights` over one forward of the whole
    trace — whichever forward it was (the DoM stage's own, or the prefix-cache forward of the one-pass
    stage: :func:`lrm_interp.attribution.atp.one_pass_trace_stats`). Checks that every site ran and that
    the sums are finite."""
    silent = [s.name for s in sites if s.name not in sums]
    if silent:
        raise RuntimeError(f"trace {enc.trace_id}: sites never ran in the forward pass: {silent}")
    check_finite(sums, sites, f"trace {enc.trace_id}: activations")
    out: dict[str, torch.Tensor] = {}
    counts = weights.sum(dim=(1, 2))
    for g, b in enumerate(behaviors):
        out[f"pos_count/{b}"] = counts[g : g + 1].clone()
        for s in sites:
            out[f"pos_sum/{b}/{s.name}"] = sums[s.name][g].clone()
    out["neg_count"] = counts[-1:].clone()
    for s in sites:
        out[f"neg_sum/{s.name}"] = sums[s.name][-1].clone()
    return out


def check_finite(sums: dict[str, torch.Tensor], sites: Sequence[Site], what: str) -> None:
    """Raise :class:`~lrm_interp.model.provenance.NonFiniteError` naming the first site (module order)
    whose reduced ``sums[site]`` hold NaN/inf: where the non-finite values entered the model."""
    for s in sites:
        t = sums.get(s.name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(
                f"{what} at site {s.name} are not finite (first site in module order with "
                "NaN/inf; check its weights and inputs, or use a wider compute dtype)"
            )


@dataclass(frozen=True)
class DoMResult:
    """Steering vectors and the statistics behind them.

    ``vectors[b][site]`` = û ``[d_out]``; ``raw[b][site]`` = u; ``mean_all[site]`` = ā_all;
    ``n_traces[b]`` = |D+|; ``n_tokens[b]`` = tokens in b's DoM windows over all traces.
    """

    behaviors: tuple[str, ...]
    site_names: tuple[str, ...]
    vectors: dict[str, dict[str, torch.Tensor]]
    raw: dict[str, dict[str, torch.Tensor]]
    mean_all: dict[str, torch.Tensor]
    n_traces: dict[str, int]
    n_tokens: dict[str, int]


def dom_aggregate(
    stats: Sequence[dict[str, torch.Tensor]],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    weighting: str = "trace",
) -> DoMResult:
    """Combine per-trace sums into u and û.

    ``weighting="trace"``: mean over traces of per-trace means (the paper); ``"token"``:
    pooled token means. ā_all is always token-weighted over all D− tokens.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not stats:
        raise ValueError("no trace statistics to aggregate")
    names = [s.name for s in sites]
    neg_counts = torch.stack([st["neg_count"][0].double() for st in stats])
    if float(neg_counts.sum()) == 0:
        raise ValueError("no token was counted in D− (all traces empty?)")
    mean_all, neg_mean = {}, {}
    for n in names:
        sums = torch.stack([st[f"neg_sum/{n}"].double() for st in stats])  # [T, d]
        mean_all[n] = sums.sum(0) / neg_counts.sum()
        if weighting == "trace":
            keep = neg_counts > 0
            neg_mean[n] = (sums[keep] / neg_counts[keep, None]).mean(0)
        else:
            neg_mean[n] = mean_all[n]
    vectors: dict[str, dict[str, torch.Tensor]] = {}
    raw: dict[str, dict[str, torch.Tensor]] = {}
    n_traces, n_tokens = {}, {}
    for b in behaviors:
        pc = torch.stack([st[f"pos_count/{b}"][0].double() for st in stats])
        has = pc > 0
        n_traces[b], n_tokens[b] = int(has.sum()), int(pc.sum())
        vectors[b], raw[b] = {}, {}
        for n in names:
            if not bool(has.any()):
                u = torch.zeros_like(mean_all[n])
            else:
                ps = torch.stack([st[f"pos_sum/{b}/{n}"].double() for st in stats])
                pos = (ps[has] / pc[has, None]).mean(0) if weighting == "trace" else ps.sum(0) / pc.sum()
                u = pos - neg_mean[n]
            un = u.norm()
            uhat = u * (mean_all[n].norm() / un) if un > 0 else torch.zeros_like(u)
            raw[b][n] = u.float()
            vectors[b][n] = uhat.float()
    return DoMResult(
        tuple(behaviors), tuple(names), vectors, raw, {k: v.float() for k, v in mean_all.items()}, n_traces, n_tokens
    )


@checked_arguments
def compute_dom(
    model: torch.nn.Module,
    encoded: Sequence[EncodedTrace],
    sites: Sequence[Site],
    behaviors: Sequence[str],
    *,
    negatives: str = "all",
    weighting: str = "trace",
    special_tokens: str = "exclude",
    progress: bool = True,
) -> DoMResult:
    """DoM over ``encoded`` traces (no caching; :func:`lrm_interp.attribute` adds resume)."""
    stats = [
        dom_trace_stats(model, e, sites, behaviors, negatives=negatives, special_tokens=special_tokens)
        for e in tqdm(encoded, desc="DoM", disable=not progress, unit="trace")
    ]
    return dom_aggregate(stats, sites, behaviors, weighting=weighting)
