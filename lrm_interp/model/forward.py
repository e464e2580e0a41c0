"""Forward plumbing shared by every stage: where inputs go, how to get logits only where needed,
span losses, and freezing a model for activation-only backward passes.

One implementation each (used by attribution, saliency, evaluation and compression):

- :func:`input_device` — the device of the input embedding;
- :func:`base_and_head` / :func:`hidden_states` — the decoder without its LM head and the head;
- :func:`logits_path` / :func:`logits_at` — logits at chosen positions only: the verified
  base/head split, else ``logits_to_keep``, else full logits (documented fallback);
- :func:`activation_forward` — a forward that fires every site without full-vocabulary logits;
- :func:`span_losses` — mean cross-entropy of each span's tokens given its prefix;
- :func:`frozen_for_attribution` — parameters frozen, optional gradient checkpointing;
- :func:`context_limit` — the context the model's config states (``max_position_embeddings``,
  GPT-2's ``n_positions``, ...);
- :func:`memory_lower_bound` / :func:`available_memory` — what one pass over a sequence needs at
  least, and what the device has free (the up-front memory check of ``attribute()``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from lrm_interp.checks import checked_arguments
from lrm_interp.data.tokens import TokenSpan
from lrm_interp.model.sites import Site, get_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@checked_arguments
@contextlib.contextmanager
def frozen_for_attribution(model: torch.nn.Module, *, gradient_checkpointing: bool = False) -> Iterator[None]:
    """Freeze parameters (optionally switch on non-reentrant checkpointing); restore all on exit.

    Checkpointing is enabled by setting the ``gradient_checkpointing`` flag and checkpoint
    function on every module that has one (HF's convention) and marking only those modules
    as training (HF checkpoints only in training mode); every other module stays in its
    mode, so dropout is not switched on. Flags, functions and modes are restored.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    saved: list[tuple[torch.nn.Module, bool, Any, bool]] = []
    missing = object()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        if gradient_checkpointing:
            ckpt = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
            for m in model.modules():
                if hasattr(m, "gradient_checkpointing") and isinstance(m.gradient_checkpointing, bool):
                    saved.append(
                        (
                            m,
                            m.gradient_checkpointing,
                            m.__dict__.get("_gradient_checkpointing_func", missing),
                            m.training,
                        )
                    )
                    m.gradient_checkpointing = True
                    m._gradient_checkpointing_func = ckpt
                    m.training = True  # this module only (not recursive)
            if not saved:
                raise ValueError(
                    f"{type(model).__name__} has no module with a `gradient_checkpointing` flag: "
                    "gradient checkpointing is not supported for it"
                )
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


def input_device(model: torch.nn.Module) -> torch.device:
    """The device input ids must be on: the input embedding's (first parameter's as a fallback).

    With an accelerate ``device_map`` the layers may live elsewhere; each module moves its
    inputs itself, only the ids have to start where the embedding is.
    """
    emb = cast("PreTrainedModel", model).get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    w = getattr(emb, "weight", None)
    if isinstance(w, torch.Tensor):
        return w.device
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


_HEAD_PATH: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def base_and_head(model: torch.nn.Module):
    """``(base, head)`` with ``head(base(ids)[0]) == model(ids).logits``, or ``None``."""
    try:
        head = cast("PreTrainedModel", model).get_output_embeddings()  # AttributeError: not a transformers model
    except (AttributeError, NotImplementedError):
        return None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        return None
    return base, head


def cache_kwarg(module: torch.nn.Module) -> str:
    """The name under which ``module.forward`` takes a KV cache: ``"cache"`` (transformers ≥ 5.2x)
    or ``"past_key_values"``."""
    for cls in type(module).__mro__:  # a subclass may wrap forward(*args, **kwargs): ask the classes it extends
        fwd = cls.__dict__.get("forward")
        if fwd is None:
            continue
        params = inspect.signature(fwd).parameters
        if "cache" in params:
            return "cache"
        if "past_key_values" in params:
            return "past_key_values"
    return "past_key_values"


def _cache_kw(module: torch.nn.Module, cache: object | None) -> dict:
    return {"use_cache": False} if cache is None else {"use_cache": True, cache_kwarg(module): cache}


def hidden_states(base: torch.nn.Module, ids: torch.Tensor, cache: object | None = None) -> torch.Tensor:
    """``[1, seq, d]`` last hidden states of the decoder ``base`` for ``ids [1, seq]``; with ``cache``
    (a KV cache of the preceding positions, :mod:`lrm_interp.model.prefix_cache`) ``ids`` continue it."""
    out = base(input_ids=ids, **_cache_kw(base, cache))
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
    parts = base_and_head(model)
    dev = input_device(model)
    if parts is not None:
        base, head = parts
        vocab = getattr(head, "out_features", None) or 8
        ids = torch.arange(6, device=dev).remainder(int(vocab)).unsqueeze(0)
        try:
            with torch.no_grad():
                ref = model(input_ids=ids, use_cache=False).logits.float()
                got = head(hidden_states(base, ids)).float()
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


def logits_at(
    model: torch.nn.Module, ids: torch.Tensor, positions: torch.Tensor, cache: object | None = None
) -> torch.Tensor:
    """``[n, vocab]`` logits of batch row 0 at ``positions`` (indices into ``ids``; full logits only
    as last resort). ``cache``: KV cache of positions before ``ids`` (see :func:`hidden_states`)."""
    path = logits_path(model)
    positions = positions.to(ids.device)
    if path == "split":
        base, head = base_and_head(model)
        h = hidden_states(base, ids, cache)
        return head(h[0, positions.to(h.device)])
    if path == "logits_to_keep":
        logits = model(input_ids=ids, logits_to_keep=positions, **_cache_kw(model, cache)).logits[0]
        if logits.shape[0] == positions.numel():
            return logits
        return logits[positions.to(logits.device)]  # the model ignored logits_to_keep
    return model(input_ids=ids, **_cache_kw(model, cache)).logits[0][positions.to(ids.device)]


def activation_forward(model: torch.nn.Module, sites: Sequence[Site]) -> Callable[[torch.Tensor], object]:
    """A forward ``f(ids [1, seq])`` that fires every site hook without full-vocabulary logits.

    Runs only the base model when the base/head split reproduces the model
    (:func:`logits_path`) and the head is not itself a site; else the whole model, asking for
    the last position's logits only when the forward accepts ``logits_to_keep`` (full logits
    only as the last resort).
    """
    path = logits_path(model)
    parts = base_and_head(model) if path == "split" else None
    head_is_site = parts is not None and any(get_module(model, s.name) is parts[1] for s in sites)
    if parts is not None and not head_is_site:
        base = parts[0]
        return lambda ids: hidden_states(base, ids)
    if path == "logits_to_keep" and not any(s.kind == "lm_head" for s in sites):
        return lambda ids: model(input_ids=ids, logits_to_keep=1, use_cache=False)
    return lambda ids: model(input_ids=ids, use_cache=False)


def span_losses(
    model: torch.nn.Module,
    ids: torch.Tensor,
    spans: Sequence[TokenSpan],
    *,
    offset: int = 0,
    cache: object | None = None,
) -> torch.Tensor:
    """``[n_spans]`` mean cross-entropy (float32, float64 for a float64 model) of each span's tokens.

    ``ids``: ``[1, seq]``, the tokens at absolute positions ``[offset, offset + seq)`` with
    ``offset + seq >= max(span.end)`` (span positions are absolute); ``offset > 0`` needs the
    ``cache`` of positions ``[0, offset)``, and every predicting position ``>= offset``.
    Logits are computed only at the positions predicting span tokens.
    """
    ranges = [s.targets for s in spans]
    pos = sorted({p - 1 for a, b in ranges for p in range(a, b)})
    if pos and pos[0] < offset:
        raise ValueError(f"span losses need position {pos[0]}, before the window start {offset}")
    index = {p: i for i, p in enumerate(pos)}
    logits = logits_at(model, ids, torch.tensor(pos, dtype=torch.long) - offset, cache)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least, fp64 kept
    losses = []
    for a, b in ranges:
        rows = torch.tensor([index[p - 1] for p in range(a, b)], device=logits.device)
        losses.append(F.cross_entropy(logits[rows], ids[0, a - offset : b - offset].to(logits.device)))
    return torch.stack(losses)


# ---------------------------------------------------------------------------- context and memory
#: Config attributes that state a model's context, in the order they are read (transformers maps
#: GPT-2's ``n_positions`` to ``max_position_embeddings``).
CONTEXT_ATTRS: tuple[str, ...] = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)


def _text_config(model: torch.nn.Module):
    cfg = getattr(model, "config", None)
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text() or cfg
        except Exception:  # noqa: BLE001 - an unusual config: use it as it is
            return cfg
    return cfg


def context_limit(model: torch.nn.Module) -> tuple[int | None, str | None]:
    """``(positions, where)``: the context the model's config states, and the attribute it came from
    (``"config.n_positions"`` for GPT-2); ``(None, None)`` when the config states none.

    This is the configured limit: rotary models may run past it (with degraded outputs), learned
    position embeddings (GPT-2) cannot. lrm_interp refuses only traces above it; a model whose
    config understates what it supports needs its ``config.max_position_embeddings`` raised.
    """
    cfg = _text_config(model)
    if cfg is None:
        return None, None
    amap = getattr(cfg, "attribute_map", None) or {}
    for a in CONTEXT_ATTRS:
        v = getattr(cfg, a, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v, f"config.{amap.get(a, a)}"
    return None, None


def memory_lower_bound(
    model: torch.nn.Module, n_tokens: int, *, gradients: str, dtype: torch.dtype | None = None
) -> dict[str, int]:
    """Bytes a pass over one ``n_tokens`` sequence needs at least, beyond the weights, per part.

    ``gradients``: ``"none"`` (a forward only: DoM), ``"windows"`` (exact AtP against a cached
    prefix: the trace's KV cache is kept) or ``"full"`` (a backward through the whole prefix:
    every layer's input and K/V are saved; with eager attention also every layer's attention
    probabilities, ``heads × n²``). ``"full_checkpointed"``: as ``"full"`` with gradient
    checkpointing (one layer's probabilities at a time). Counts only tensors that must exist at
    once, at ``dtype`` (default: the weights' dtype), so it never over-estimates; ``{}`` when the
    config does not say the model's shape.
    """
    cfg = _text_config(model)
    layers = getattr(cfg, "num_hidden_layers", None)
    hidden = getattr(cfg, "hidden_size", None)
    heads = getattr(cfg, "num_attention_heads", None)
    if not (
        isinstance(layers, int)
        and layers > 0
        and isinstance(hidden, int)
        and hidden > 0
        and isinstance(heads, int)
        and heads > 0
    ):
        return {}
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    if dtype is None:
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    b = torch.empty((), dtype=dtype).element_size()
    n = int(n_tokens)
    eager = getattr(cfg, "_attn_implementation", None) == "eager"
    scores_one_layer = heads * n * n * b if eager else 0
    out = {"activations of one layer": n * hidden * b, "attention scores (eager)": scores_one_layer}
    if gradients in ("windows", "full", "full_checkpointed"):
        out["KV cache"] = 2 * layers * kv_heads * head_dim * n * b
    if gradients in ("full", "full_checkpointed"):
        out["layer inputs saved for backward"] = layers * n * hidden * b
    if gradients == "full" and eager:
        out["attention scores (eager)"] = layers * scores_one_layer
    return {k: v for k, v in out.items() if v}


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, ``MemAvailable`` of ``/proc/meminfo`` on a
    CPU (Linux); ``None`` when unknown."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
    except (OSError, RuntimeError, ValueError, IndexError):
        return None
    return None


#: the config fields of a norm's epsilon: one at or below 0 gives NaN (``sqrt`` of a negative variance)
EPS_ATTRS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps")


@torch.no_grad()
def check_finite_forward(model: torch.nn.Module, what: str, n_tokens: int = 16) -> None:
    """:class:`~lrm_interp.model.provenance.NonFiniteError` when one forward of ``n_tokens`` ids
    (spread over the vocabulary) gives NaN or infinite logits: a model whose weights are finite but
    whose forward is not (``rms_norm_eps: -1`` in ``config.json``; weights too large for the
    dtype) was quantized, and scored with accuracy 0 and NUL-byte outputs, with exit 0
    (H31-NANFWD). The message names the first module whose output holds such a value (forward
    hooks, removed on exit) and a norm epsilon at or below 0, or the first parameter that is not
    finite (read only when the logits are not); ``what`` names the caller.
    A model of no input embedding (not a language model) is not checked."""
    from lrm_interp.model.provenance import NonFiniteError, first_non_finite

    get_emb = getattr(model, "get_input_embeddings", None)
    vocab = getattr(get_emb() if callable(get_emb) else None, "num_embeddings", None)
    if not isinstance(vocab, int) or vocab < 1:
        return
    ids = torch.linspace(0, vocab - 1, steps=min(n_tokens, vocab)).long()[None].to(input_device(model))
    first: list[str] = []

    def hook(name: str) -> Callable[..., None]:
        def check(_m: torch.nn.Module, _args: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if not first and isinstance(t, torch.Tensor) and t.is_floating_point():
                if not bool(torch.isfinite(t).all()):
                    first.append(name)

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        logits = model(input_ids=ids, use_cache=False).logits  # [1, n, vocab]
    finally:
        for h in handles:
            h.remove()
    if bool(torch.isfinite(logits).all()):
        return
    weight = first_non_finite(model)  # read only when the logits are broken
    if weight is not None:
        raise NonFiniteError(
            f"{what}: parameter {weight[0]} holds {weight[1]} NaN or infinite value{'s' if weight[1] > 1 else ''}: "
            "the model is broken (a training that diverged?); nothing was changed"
        )
    cfg = _text_config(model)
    values = {a: getattr(cfg, a, None) for a in EPS_ATTRS}
    low = [f"{a}: {v}" for a, v in values.items() if isinstance(v, (int, float)) and not v > 0]
    cause = (
        f"its config.json sets {', '.join(low)} (a norm's epsilon must be > 0)"
        if low
        else "a broken config.json, or weights too large for its dtype"
    )
    where = f" (first in the output of {first[0]})" if first else ""
    raise NonFiniteError(
        f"{what}: the model's forward gives NaN or infinite logits on a {ids.shape[1]}-token input although its "
        f"weights are finite{where}: {cause}; the model is broken; nothing was changed"
    )


__all__ = [
    "input_device",
    "base_and_head",
    "cache_kwarg",
    "hidden_states",
    "logits_path",
    "logits_at",
    "activation_forward",
    "span_losses",
    "frozen_for_attribution",
    "CONTEXT_ATTRS",
    "context_limit",
    "memory_lower_bound",
    "available_memory",
    "EPS_ATTRS",
    "check_finite_forward",
]
