"""Attribution patching (AtP): how much each linear site matters for a behaviour.

Paper Eq. 2 (method.md §3), default ``score="paper"``::

    I[c, m] = (1/|D+|) · | Σ_{spans s of c} û[c, m] · mean_{t ∈ targets(s)} ∂L(s)/∂a_t |

``score="code"`` is the released code's Σ_s |·| / #spans. L(s) is the mean cross-entropy of
the span's tokens ``[start, end)`` given the whole prefix; targets(s) are the positions whose
outputs predict them, ``[start-1, end-1)`` (:func:`lrm_interp.tokens.target_positions`;
``off_by_one=True`` = the released code's window ``[start, end)``). |D+| counts the traces
with at least one scored span of the behaviour.

Modes:

- ``exact``: one forward+backward per span, input cut right after the span (``ids[:end]``,
  exact by causality).
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
  (:class:`~lrm_interp.capture.MaskedSum` ``stage="grad"``), never ``retain_grad``;
- optional non-reentrant gradient checkpointing (switched on for the call only, dropout
  stays off) and ``compute_dtype`` autocast with float32 loss and accumulation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from tqdm.auto import tqdm

from .capture import Capture, MaskedSum
from .sites import Site
from .tokens import EncodedTrace, TokenSpan, target_positions

MODES = ("exact", "joint")
SCORES = ("paper", "code")


# --------------------------------------------------------------------------- model plumbing
@contextlib.contextmanager
def frozen_for_attribution(model: torch.nn.Module, *, gradient_checkpointing: bool = False) -> Iterator[None]:
    """Freeze parameters (optionally switch on non-reentrant checkpointing); restore all on exit.

    Checkpointing is enabled by setting the ``gradient_checkpointing`` flag and checkpoint
    function on every module that has one (HF's convention) and marking only those modules
    as training (HF checkpoints only in training mode); every other module stays in its
    mode, so dropout is not switched on. Flags, functions and modes are restored.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    saved: list[tuple[torch.nn.Module, object, object, bool]] = []
    missing = object()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if gradient_checkpointing:
            ckpt = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
            for m in model.modules():
                if hasattr(m, "gradient_checkpointing") and isinstance(m.gradient_checkpointing, bool):
                    saved.append((m, m.gradient_checkpointing,
                                  m.__dict__.get("_gradient_checkpointing_func", missing), m.training))
                    m.gradient_checkpointing = True
                    m._gradient_checkpointing_func = ckpt
                    m.training = True  # this module only (not recursive)
            if not saved:
                raise ValueError(f"{type(model).__name__} has no module with a `gradient_checkpointing` flag: "
                                 "gradient checkpointing is not supported for it")
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        for m, gc, fn, training in reversed(saved):
            m.gradient_checkpointing = gc
            if fn is missing:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = fn
            m.training = training


def _device(model: torch.nn.Module) -> torch.device:
    emb = model.get_input_embeddings()
    return emb.weight.device if hasattr(emb, "weight") else next(model.parameters()).device


_HEAD_PATH: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _split(model: torch.nn.Module):
    """``(base, head)`` with ``head(base(ids)[0]) == model(ids).logits``, or ``None``."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        return None
    return base, head


def _hidden(base: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = base(input_ids=ids, use_cache=False)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return h


def logits_path(model: torch.nn.Module) -> str:
    """How :func:`logits_at` gets logits for ``model``: ``"split"``, ``"logits_to_keep"`` or ``"full"``.

    Decided once per model (cached): the base/head split is used when it reproduces the
    model's logits on a 6-token probe (atol 1e-4 relative to the logit scale).
    """
    if model in _HEAD_PATH:
        return _HEAD_PATH[model]
    path = "full"
    parts = _split(model)
    dev = _device(model)
    if parts is not None:
        base, head = parts
        vocab = getattr(head, "out_features", None) or 8
        ids = torch.arange(6, device=dev).remainder(int(vocab)).unsqueeze(0)
        try:
            with torch.no_grad():
                ref = model(input_ids=ids, use_cache=False).logits.float()
                got = head(_hidden(base, ids)).float()
            if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * (1 + ref.abs().max())):
                path = "split"
        except Exception:  # noqa: BLE001 - any failure means: do not use the split
            path = "full"
    if path == "full":
        params = inspect.signature(model.forward).parameters
        if "logits_to_keep" in params:
            path = "logits_to_keep"
    _HEAD_PATH[model] = path
    return path


def logits_at(model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[n, vocab]`` logits of batch row 0 at ``positions`` (full logits only as last resort)."""
    path = logits_path(model)
    positions = positions.to(ids.device)
    if path == "split":
        base, head = _split(model)
        h = _hidden(base, ids)
        return head(h[0, positions.to(h.device)])
    if path == "logits_to_keep":
        logits = model(input_ids=ids, logits_to_keep=positions, use_cache=False).logits[0]
        if logits.shape[0] == positions.numel():
            return logits
        return logits[positions.to(logits.device)]  # the model ignored logits_to_keep
    return model(input_ids=ids, use_cache=False).logits[0][positions.to(ids.device)]


# --------------------------------------------------------------------------- per-span pieces
def span_targets(span: TokenSpan) -> tuple[int, int]:
    """Tokens ``[a, b)`` predicted by the span loss (token 0 has no predictor)."""
    return max(span.start, 1), span.end


def _window_weights(length: int, spans: Sequence[TokenSpan], off_by_one: bool) -> torch.Tensor:
    """``[n_spans, 1, length]``: 1/|window| on each span's gradient window (clipped to the input)."""
    w = torch.zeros(len(spans), 1, length)
    for k, s in enumerate(spans):
        p0, p1 = target_positions(s, off_by_one=off_by_one)
        p0, p1 = max(p0, 0), min(p1, length)
        if p1 > p0:
            w[k, 0, p0:p1] = 1.0 / (p1 - p0)
    return w


def span_losses(model: torch.nn.Module, ids: torch.Tensor, spans: Sequence[TokenSpan]) -> torch.Tensor:
    """``[n_spans]`` mean cross-entropy (float32, float64 for a float64 model) of each span's tokens.

    ``ids``: ``[1, seq]`` with ``seq >= max(span.end)``. Logits are computed only at the
    positions predicting span tokens.
    """
    ranges = [span_targets(s) for s in spans]
    pos = sorted({p - 1 for a, b in ranges for p in range(a, b)})
    index = {p: i for i, p in enumerate(pos)}
    logits = logits_at(model, ids, torch.tensor(pos, dtype=torch.long))
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least, fp64 kept
    losses = []
    for a, b in ranges:
        rows = torch.tensor([index[p - 1] for p in range(a, b)], device=logits.device)
        losses.append(F.cross_entropy(logits[rows], ids[0, a:b].to(logits.device)))
    return torch.stack(losses)


def _backward_dots(model, ids, spans, sites, vecs: dict[str, torch.Tensor], off_by_one: bool,
                   compute_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward+backward of Σ_s L(s) -> (``[n_spans, n_sites]`` dots float64, ``[n_spans]`` losses)."""
    logits_path(model)  # decide (and probe) before any hook is active
    red = MaskedSum("grad", _window_weights(ids.shape[1], spans, off_by_one), device="cpu")
    ctx = (torch.autocast(device_type=ids.device.type, dtype=compute_dtype) if compute_dtype is not None
           else contextlib.nullcontext())
    with torch.enable_grad(), Capture(model, list(sites), [red]):
        with ctx:
            losses = span_losses(model, ids, spans)
        losses.sum().backward()
    dots = torch.zeros(len(spans), len(sites), dtype=torch.float64)
    for j, s in enumerate(sites):
        g = red.sums.get(s.name)
        if g is None:
            raise RuntimeError(f"no gradient reached site {s.name!r}: is it on the path to the loss?")
        dots[:, j] = g.double() @ vecs[s.name].double().to(g.device)
    return dots, losses.detach().double().cpu()


def atp_trace_stats(model: torch.nn.Module, enc: EncodedTrace, sites: Sequence[Site], behaviors: Sequence[str],
                    vectors: dict[str, dict[str, torch.Tensor]], *, mode: str = "exact", off_by_one: bool = False,
                    gradient_checkpointing: bool = False,
                    compute_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Per-span AtP dot products for one trace (additive statistics, safetensors-ready).

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
    dev = _device(model)
    out: dict[str, torch.Tensor] = {}
    with frozen_for_attribution(model, gradient_checkpointing=gradient_checkpointing):
        for b in behaviors:
            allspans = enc.spans_of(b)
            spans = [s for s in allspans if span_targets(s)[1] > span_targets(s)[0]]
            dots = torch.zeros(len(spans), len(sites), dtype=torch.float64)
            losses = torch.zeros(len(spans), dtype=torch.float64)
            if spans:
                vecs = vectors[b]
                if mode == "exact":
                    for k, s in enumerate(spans):
                        ids = enc.input_ids[: s.end].unsqueeze(0).to(dev)
                        d, l_ = _backward_dots(model, ids, [s], sites, vecs, off_by_one, compute_dtype)
                        dots[k], losses[k] = d[0], l_[0]
                else:
                    ids = enc.input_ids[: max(s.end for s in spans)].unsqueeze(0).to(dev)
                    dots, losses = _backward_dots(model, ids, spans, sites, vecs, off_by_one, compute_dtype)
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

    def relative_importance(self) -> torch.Tensor:
        """``[n_behaviors, n_sites]`` RI = I / Σ_sites I (rows of zeros stay zero)."""
        return relative_importance(self.scores)


def relative_importance(scores: torch.Tensor) -> torch.Tensor:
    """RI = I / Σ_sites I per row of ``[n_behaviors, n_sites]`` (a zero row stays zero)."""
    s = scores.double()
    tot = s.sum(dim=-1, keepdim=True)
    return torch.where(tot > 0, s / tot.clamp_min(1e-300), torch.zeros_like(s))


def atp_aggregate(stats: Sequence[dict[str, torch.Tensor]], sites: Sequence[Site], behaviors: Sequence[str], *,
                  score: str = "paper") -> AtPResult:
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


def compute_atp(model: torch.nn.Module, encoded: Sequence[EncodedTrace], sites: Sequence[Site],
                behaviors: Sequence[str], vectors: dict[str, dict[str, torch.Tensor]], *, mode: str = "exact",
                score: str = "paper", off_by_one: bool = False, gradient_checkpointing: bool = False,
                compute_dtype: torch.dtype | None = None, progress: bool = True) -> AtPResult:
    """AtP over ``encoded`` traces (no caching; :func:`lrm_interp.attribute` adds resume)."""
    stats = [atp_trace_stats(model, e, sites, behaviors, vectors, mode=mode, off_by_one=off_by_one,
                             gradient_checkpointing=gradient_checkpointing, compute_dtype=compute_dtype)
             for e in tqdm(encoded, desc=f"AtP ({mode})", disable=not progress, unit="trace")]
    return atp_aggregate(stats, sites, behaviors, score=score)


__all__ = ["AtPResult", "atp_trace_stats", "atp_aggregate", "compute_atp", "relative_importance",
           "frozen_for_attribution", "span_losses", "logits_at", "logits_path", "span_targets", "MODES", "SCORES"]
