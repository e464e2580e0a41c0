"""Exact span gradients at one-pass cost: a span's window forward against the cached prefix.

For a span ``s = [a, e)`` the loss ``L(s)`` is read at positions ``[a−1, e−1)``. A module
output at such a position ``t`` reaches ``L(s)`` only through positions ``t … e−2``; positions
before the window neither depend on it nor need a gradient (method.md §7). So one no-grad
forward over the trace gives the keys/values of every prefix (:func:`trace_cache`), and each
span needs a forward+backward over its window ``[q0, e)`` only, attending to the cached keys
and values of ``[0, q0)`` (:func:`window_cache`). The activation gradients at window
positions are exactly those of the full-prefix forward+backward (equal to float32 rounding;
tested on every fixture architecture).

The window's cache is **read-only** (:class:`ReadOnlyPrefixCache`): attention layers get the
prefix concatenated with the window's keys/values, and the cached tensors are never changed,
so one trace cache serves every span, and a layer recomputed by gradient checkpointing sees
exactly what its first forward saw.

Not every model can do this: sliding-window or hybrid/recurrent caches, models whose forward
takes no cache, or transformers versions without ``DynamicCache.layers``. :func:`cache_support`
decides once per model — by checking the config and then comparing a cached window's logits
with the full forward's on a probe — and says why when the answer is no; the caller then
uses the full prefix and records the reason in provenance.

Rotary encodings whose frequencies depend on how far a forward reaches (transformers'
``rope_type="longrope"``: long factors once it reaches past ``original_max_position_embeddings``;
``"dynamic"``: re-scaled past the configured context, statefully) would give the cached prefix
other rotations than a window's own forward: :func:`trace_caches` builds a cache per regime (a
window ending inside the original range uses a cache of that range only; past it ``longrope`` uses
the long cache and ``dynamic`` the full prefix), so every window stays exact
(:func:`rope_switch`, :func:`prefix_length`).

Not exact for *weight* gradients: ``∂L(s)/∂W`` also collects the prefix positions'
contributions through the keys and values.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.model.forward import base_and_head, cache_kwarg, frozen_for_attribution, input_device

_SUPPORT: weakref.WeakKeyDictionary[torch.nn.Module, dict[bool, tuple[bool, str]]] = weakref.WeakKeyDictionary()


def _dynamic_cache_cls():
    from transformers import DynamicCache

    return DynamicCache


class _ReadOnlyMixin:
    """``update`` returns prefix + new keys/values and stores nothing (see module docs)."""

    layers: list[Any]  # the DynamicCache's (this class is mixed into it)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return (torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2))


class _KeepFirstMixin:
    """``update`` stores only the first ``keep`` positions (a copy) and returns the keys/values it was
    given: one forward from an empty cache attends exactly as with a full cache, and the positions past
    ``keep`` are never held across layers."""

    keep: int

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        n = self.keep
        super().update(  # type: ignore[misc]  # the DynamicCache's (this class is mixed into it)
            key_states[:, :, :n].clone(), value_states[:, :, :n].clone(), layer_idx, *args, **kwargs
        )
        return key_states, value_states


_KEEP_FIRST: list[Any] = []


def _keep_first_cache(keep: int):
    if not _KEEP_FIRST:
        _KEEP_FIRST.append(type("KeepFirstCache", (_KeepFirstMixin, _dynamic_cache_cls()), {"__module__": __name__}))
    c = _KEEP_FIRST[0]()
    c.keep = keep
    return c


def _read_only_cls():
    global ReadOnlyPrefixCache
    if ReadOnlyPrefixCache is None:
        ReadOnlyPrefixCache = type(
            "ReadOnlyPrefixCache",
            (_ReadOnlyMixin, _dynamic_cache_cls()),
            {
                "__doc__": "A ``DynamicCache`` holding a fixed prefix; ``update`` never stores (module docs).",
                "__module__": __name__,
            },
        )
    return ReadOnlyPrefixCache


ReadOnlyPrefixCache: Any = None  # built on first use (transformers is imported lazily)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    parts = base_and_head(model)
    return parts[0] if parts is not None else model


def trace_cache(
    model: torch.nn.Module, ids: torch.Tensor, *, keep: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every layer after one no-grad forward of ``ids [1, T]``.

    Returns one ``(keys, values)`` pair per layer, each ``[1, kv_heads, T, head_dim]``, detached.
    Runs the decoder without its LM head (no logits); capture hooks active around it see an ordinary
    forward (the one-pass stage takes its DoM sums there). ``keep < T``: the forward still runs over
    all of ``ids`` but only the first ``keep`` positions are kept (``[..., keep, head_dim]``; the
    windows never need more than the last span's end).
    """
    dec = _decoder(model)
    kw = {cache_kwarg(dec): _keep_first_cache(keep)} if keep is not None and keep < ids.shape[1] else {}
    with torch.no_grad():
        out = dec(input_ids=ids, use_cache=True, **kw)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None and isinstance(out, tuple) and len(out) > 1:
        cache = out[1]
    layers = getattr(cache, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        raise TypeError(
            f"{type(model).__name__}: the forward returned no per-layer KV cache "
            "(gradient checkpointing switched on, or a model without one)"
        )
    return [(layer.keys.detach(), layer.values.detach()) for layer in layers]


def window_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], start: int):
    """A :class:`ReadOnlyPrefixCache` holding positions ``[0, start)`` of ``kv`` (views, no copy)."""
    cls = _read_only_cls()
    c = cls()
    for i, (k, v) in enumerate(kv):
        _dynamic_cache_cls().update(c, k[:, :, :start], v[:, :, :start], i)
    return c


def rope_switch(model: torch.nn.Module) -> tuple[str, int] | None:
    """``(kind, n)`` when the model's rotary frequencies depend on how far a forward reaches, else ``None``.

    ``("longrope", n)``: a forward reaching past ``n`` positions (``original_max_position_embeddings``)
    rotates every position with the long factors, one within ``n`` with the short ones;
    ``("dynamic", n)``: a forward past ``n`` (the configured context) re-scales the frequencies to its
    own length. Read from the model's rotary modules (``rope_type``, transformers' convention).
    """
    for m in model.modules():
        kinds = getattr(m, "rope_type", None)
        if kinds is None or not hasattr(m, "inv_freq"):
            continue
        per_layer = kinds if isinstance(kinds, dict) else {None: kinds}
        for layer_type, kind in per_layer.items():
            kind = str(kind)
            cfg = getattr(m, "config", None)
            if "dynamic" in kind:
                n = getattr(m, "original_max_seq_len", None) or getattr(cfg, "max_position_embeddings", None)
                if n is not None:
                    return "dynamic", int(n)
            if kind == "longrope":
                params = getattr(cfg, "rope_parameters", None) or {}
                if layer_type is not None:
                    params = params.get(layer_type, {})
                n = params.get("original_max_position_embeddings") or getattr(
                    cfg, "original_max_position_embeddings", None
                )
                if n is not None:
                    return "longrope", int(n)
    return None


def prefix_length(switch: tuple[str, int] | None, end: int, total: int) -> int | None:
    """How many positions of the trace the cache of a window ending at ``end`` may hold (``total``: the
    longest cache, up to the last span's end); ``None``: no cache reproduces its full-prefix forward,
    run it on the full prefix.

    Without a :func:`rope_switch`: ``total``. ``longrope`` (``n``): windows ending within ``n`` use a
    cache of at most ``n`` positions (short factors, as their own forward), the others the long cache.
    ``dynamic`` (``n``): windows ending before ``n`` use a cache of at most ``n − 1`` positions (a
    forward of fewer than ``n`` positions resets transformers' frequencies to the original ones);
    the others have frequencies set by the forwards before them, so the full prefix.
    """
    if switch is None:
        return total
    kind, n = switch
    if kind == "longrope":
        return min(total, n) if end <= n else total
    return min(total, n - 1) if end < n else None


@dataclass
class TraceCaches:
    """The prefix caches the span windows of one trace need: ``kv[length]`` per cache length
    (one, unless the rotary frequencies switch with length: :func:`rope_switch`)."""

    switch: tuple[str, int] | None
    total: int
    kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]

    def for_end(self, end: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The cache for a window ending at ``end`` (``None``: run it on the full prefix)."""
        n = prefix_length(self.switch, end, self.total)
        return None if n is None else self.kv[n]


def same_rotations(switch: tuple[str, int] | None, n: int, length: int) -> bool:
    """Whether the first ``n`` positions of a forward over ``length >= n`` positions get the rotations a
    forward over exactly ``n`` positions gives them (so its cache, cut at ``n``, is that forward's).

    Always without a :func:`rope_switch` (causal attention: position ``t`` sees only ``[0, t]``);
    ``longrope`` (``m``): both within ``m`` or both past it; ``dynamic`` (``m``): both below ``m``, or the
    same length."""
    if switch is None or n == length:
        return True
    kind, m = switch
    if kind == "longrope":
        return (n <= m) == (length <= m)
    return n < m and length < m


def trace_caches(
    model: torch.nn.Module,
    ids: torch.Tensor,
    ends: Sequence[int],
    *,
    full: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> TraceCaches:
    """The caches (:func:`trace_cache`, no-grad forwards) that windows ending at ``ends`` need, from
    the trace ``ids [1, T]`` (``T >= max(ends)``), shortest first (:func:`prefix_length`): one of
    ``ids[:, :max(ends)]``; with a :func:`rope_switch`, one of the original range, plus for
    ``longrope`` one of ``ids[:, :max(ends)]`` when a window ends past it.

    ``full``: the cache of a forward over the whole ``ids`` already run (the one-pass stage's forward,
    whose hooks also took the DoM sums; it may hold only the first ``max(ends)`` positions:
    :func:`trace_cache` ``keep=``): every needed cache it holds with the same rotations
    (:func:`same_rotations`) is cut from it (views, no forward); only the others run a forward."""
    switch = rope_switch(model)
    total = max(ends)
    need = sorted({n for n in (prefix_length(switch, e, total) for e in ends) if n is not None})
    length = ids.shape[1]
    if full is not None and any(k.shape[-2] < min(total, length) for k, _ in full):
        raise ValueError(f"full= holds {full[0][0].shape[-2]} positions; the windows need {total}")
    kv = {}
    for n in need:
        if full is not None and same_rotations(switch, n, length):
            kv[n] = [(k[:, :, :n], v[:, :, :n]) for k, v in full]
        else:
            kv[n] = trace_cache(model, ids[:, :n])
    return TraceCaches(switch, total, kv)


def _sliding(cfg: Any) -> str | None:
    types = getattr(cfg, "layer_types", None) or ()
    if any("sliding" in str(t) or "linear" in str(t) or "mamba" in str(t) for t in types):
        return f"layer types {sorted(set(map(str, types)))} (sliding-window or recurrent layers)"
    sw = getattr(cfg, "sliding_window", None)
    if sw is not None and getattr(cfg, "use_sliding_window", True) is not False:
        return f"sliding-window attention (window {sw})"
    for key in ("layers_block_type", "hybrid_override_pattern", "attn_layer_indices"):
        if getattr(cfg, key, None):
            return f"hybrid attention/recurrent layers ({key})"
    return None


@checked_arguments
def cache_support(model: torch.nn.Module, *, gradient_checkpointing: bool = False) -> tuple[bool, str]:
    """``(True, "")`` when span windows can run against a cached prefix, else ``(False, reason)``.

    Decided once per model (cached): config checks (:func:`_sliding`), then a 12-token probe
    whose last 5 positions are run against the cached first 7 must reproduce the full
    forward's hidden states (rtol 1e-3, atol 1e-4 × scale). With ``gradient_checkpointing``
    the probe runs with checkpointing on (:func:`cache_survives_checkpointing`), gradients enabled.
    """
    cache = _SUPPORT.setdefault(model, {})
    if gradient_checkpointing in cache:
        return cache[gradient_checkpointing]
    res: tuple[bool, str]
    why = _sliding(getattr(model, "config", None))
    if why is not None:
        res = (False, why)
    else:
        try:
            dec = _decoder(model)
            dev = input_device(model)
            vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 8
            ids = (torch.arange(12, device=dev) * 7 + 3).remainder(int(vocab)).unsqueeze(0)
            with torch.no_grad():
                full = dec(input_ids=ids, use_cache=False)
                ref = (full.last_hidden_state if hasattr(full, "last_hidden_state") else full[0]).float()
                kv = trace_cache(model, ids)
            if gradient_checkpointing:
                with (
                    frozen_for_attribution(model, gradient_checkpointing=True),
                    cache_survives_checkpointing(model),
                    torch.enable_grad(),
                ):
                    out = dec(input_ids=ids[:, 7:], use_cache=True, **{cache_kwarg(dec): window_cache(kv, 7)})
            else:
                with torch.no_grad():
                    out = dec(input_ids=ids[:, 7:], use_cache=True, **{cache_kwarg(dec): window_cache(kv, 7)})
            got = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).detach().float()
            ok = got.shape == ref[:, 7:].shape and torch.allclose(
                got, ref[:, 7:], rtol=1e-3, atol=1e-4 * (1 + float(ref.abs().max()))
            )
            res = (
                (True, "")
                if ok
                else (
                    False,
                    "a cached window does not reproduce the full forward on a probe"
                    + (" with gradient checkpointing" if gradient_checkpointing else ""),
                )
            )
        except Exception as e:  # noqa: BLE001 - any failure means: use the full prefix
            res = (
                False,
                f"prefix cache unavailable{' with gradient checkpointing' if gradient_checkpointing else ''} "
                f"({type(e).__name__}: {e})",
            )
    cache[gradient_checkpointing] = res
    return res


@contextlib.contextmanager
def cache_survives_checkpointing(model: torch.nn.Module) -> Iterator[None]:
    """Let HF gradient-checkpointed layers keep the (read-only) cache for the window pass.

    HF drops any cache under checkpointing unless a layer declares it only reads the cache
    (``_can_checkpoint_with_cache``); :class:`ReadOnlyPrefixCache` only reads, so the flag is set
    on every checkpointed layer. Model-level modules that also drop the cache when they are
    in training mode with their checkpointing flag on (GPT-2's ``GPT2Model``) are put back in
    eval mode; the layers below them still checkpoint. Everything is restored on exit.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise TypeError(f"{type(model).__name__} has no GradientCheckpointingLayer: its checkpointing drops the cache")
    outer = [
        m
        for m in model.modules()
        if not isinstance(m, GradientCheckpointingLayer)
        and isinstance(getattr(m, "gradient_checkpointing", None), bool)
        and m.training
    ]
    saved = [(m, m.__dict__.get("_can_checkpoint_with_cache", None)) for m in layers]
    try:
        for m, _ in saved:
            m._can_checkpoint_with_cache = True
        for o in outer:
            o.training = False
        yield
    finally:
        for o in outer:
            o.training = True
        for m, v in saved:
            if v is None:
                m.__dict__.pop("_can_checkpoint_with_cache", None)
            else:
                m._can_checkpoint_with_cache = v


__all__ = [
    "ReadOnlyPrefixCache",
    "trace_cache",
    "trace_caches",
    "TraceCaches",
    "rope_switch",
    "prefix_length",
    "same_rotations",
    "window_cache",
    "cache_support",
    "cache_survives_checkpointing",
]
