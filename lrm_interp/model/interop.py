"""Interoperability with TransformerLens 4 (``TransformerBridge``) and nnsight 0.8.

Both libraries are optional extras (``pip install "lrm_interp[interop]"``); they are
imported lazily, inside the functions that need them.

TransformerLens 4 replaced ``HookedTransformer`` by ``TransformerBridge``, which wraps an
HF model in place and exposes one ``hook_in``/``hook_out`` pair per linear. Our sites are
HF module paths; :func:`tl_hook_names` maps a site (and a stage) to the bridge hooks
carrying the same tensor, and :func:`from_tl_cache` rebuilds our ``[b, s, d]`` tensor from
a bridge cache. Mapping (checked value by value in ``tests/test_interop.py``):

=============================  ===============================  ============================
site kind (HF leaf)            output                           input
=============================  ===============================  ============================
q / k / v (``q_proj`` ...)     ``attn.q.hook_out`` [b,s,h,dh]   ``attn.q.hook_in``
o (``o_proj``, GPT-2 c_proj)   ``attn.o.hook_out``              ``attn.o.hook_in``
qkv (Phi-3, GPT-2 c_attn)      cat(q, k, v ``hook_out``)        ``attn.q.hook_in``
gate (``gate_proj``)           ``mlp.gate.hook_out``            ``mlp.gate.hook_in``
up (``up_proj``, GPT-2 c_fc)   ``mlp.in.hook_out``              ``mlp.in.hook_in``
gate_up (Phi-3)                cat(gate, in ``hook_out``)       ``mlp.gate.hook_in``
down (``down_proj``)           ``mlp.out.hook_out``             ``mlp.out.hook_in``
=============================  ===============================  ============================

All names are prefixed by ``blocks.{layer}.``. The bridge splits fused projections into
separate linears, so a fused site has several hooks (concatenated on the last dim).
"""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.model.sites import parse_site_name

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# kind -> (hook stems whose outputs concatenate to the site output, stem whose input is the site input)
_TL_STEMS: dict[str, tuple[tuple[str, ...], str]] = {
    "q": (("attn.q",), "attn.q"),
    "k": (("attn.k",), "attn.k"),
    "v": (("attn.v",), "attn.v"),
    "o": (("attn.o",), "attn.o"),
    "qkv": (("attn.q", "attn.k", "attn.v"), "attn.q"),
    "gate": (("mlp.gate",), "mlp.gate"),
    "up": (("mlp.in",), "mlp.in"),
    "gate_up": (("mlp.gate", "mlp.in"), "mlp.gate"),
    "down": (("mlp.out",), "mlp.out"),
}
_STAGES = ("output", "input")


def tl_hook_names(site_name: str, stage: str = "output") -> tuple[str, ...]:
    """Bridge hook names whose tensors make up ``site_name``'s output (or input).

    >>> tl_hook_names("model.layers.3.mlp.up_proj")
    ('blocks.3.mlp.in.hook_out',)
    >>> tl_hook_names("model.layers.0.self_attn.qkv_proj")
    ('blocks.0.attn.q.hook_out', 'blocks.0.attn.k.hook_out', 'blocks.0.attn.v.hook_out')
    >>> tl_hook_names("model.layers.2.mlp.down_proj", "input")
    ('blocks.2.mlp.out.hook_in',)
    """
    if stage not in _STAGES:
        raise ValueError(f"stage must be 'output' or 'input', got {stage!r}")
    layer, _, kind = parse_site_name(site_name)
    if layer is None or kind not in _TL_STEMS:
        raise KeyError(
            f"no TransformerBridge hook is known for site {site_name!r} (kind {kind!r}); "
            f"known kinds: {sorted(_TL_STEMS)}"
        )
    outs, inp = _TL_STEMS[kind]
    if stage == "input":
        return (f"blocks.{layer}.{inp}.hook_in",)
    return tuple(f"blocks.{layer}.{s}.hook_out" for s in outs)


def tl_hook_name(site_name: str, stage: str = "output") -> str:
    """The single bridge hook carrying ``site_name``'s output (or input).

    ``model.layers.3.mlp.up_proj`` → ``blocks.3.mlp.in.hook_out``. q/k/v outputs come
    reshaped ``[b, s, heads, d_head]`` (flatten the last two dims to compare). Fused sites
    (``qkv_proj``, ``gate_up_proj``, GPT-2 ``c_attn``) have several hooks: a ``KeyError``
    points to :func:`tl_hook_names` / :func:`from_tl_cache`.
    """
    names = tl_hook_names(site_name, stage)
    if len(names) != 1:
        raise KeyError(
            f"site {site_name!r} is fused: the bridge splits it into {names}; use tl_hook_names() or from_tl_cache()"
        )
    return names[0]


def from_tl_cache(cache: Mapping[str, torch.Tensor], site_name: str, stage: str = "output") -> torch.Tensor:
    """Rebuild our ``[b, s, d]`` site tensor from a bridge ``run_with_cache`` cache.

    Per-head hooks ``[b, s, h, dh]`` are flattened to ``[b, s, h*dh]``; the parts of a fused
    site are concatenated along the last dim in HF order (q, k, v / gate, up).
    """
    parts = []
    for n in tl_hook_names(site_name, stage):
        t = cache[n]
        parts.append(t.flatten(2) if t.dim() > 3 else t)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


@checked_arguments
def boot_bridge(model: torch.nn.Module, tokenizer: Any, name: str = "lrm_interp-model", *, copy: bool = False):
    """A TransformerLens 4 ``TransformerBridge`` around an in-memory HF model (no hub access).

    Args:
        model: an HF causal LM (Llama, Qwen2/3, Mistral, Phi-3, GPT-2 checked).
        tokenizer: its tokenizer (required: the bridge cannot fetch one offline).
        name: a label only; nothing is downloaded.
        copy: wrap a deep copy (twice the memory) and leave ``model`` untouched. By default
            the bridge wraps ``model``'s submodules *in place* (their paths change and
            attention switches to eager): run :func:`lrm_interp.model.sites.find_sites` and any
            :class:`lrm_interp.model.capture.Capture` before booting, or pass ``copy=True``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if copy:
        import copy as _copy

        model = _copy.deepcopy(model)
    tmp = None
    if "name_or_path" not in getattr(tokenizer, "init_kwargs", {}):
        # The bridge re-creates the tokenizer from its saved path: an in-memory tokenizer
        # (e.g. lrm_interp.testing.byte_tokenizer) gets a saved copy in a temp folder that
        # lives as long as the bridge (removed when the bridge is garbage-collected or at exit).
        import tempfile

        from transformers import AutoTokenizer

        tmp = tempfile.mkdtemp(prefix="lrm_interp_tok_")
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    try:
        bridge = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is not None:
        weakref.finalize(bridge, shutil.rmtree, tmp, True)
        bridge.lrm_interp_tokenizer_dir = tmp
    return bridge


def _nnsight_model(model: torch.nn.Module, tokenizer: Any):
    import nnsight

    if hasattr(nnsight, "TransformersModel"):
        return nnsight.TransformersModel(model, tokenizer=tokenizer)
    return nnsight.LanguageModel(model, tokenizer=tokenizer)  # nnsight < 0.8


def _envoy(wrapped, site_name: str):
    mod = wrapped
    for part in site_name.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def _value(x):
    return x.value if hasattr(x, "value") else x


def nnsight_outputs(
    model: torch.nn.Module, tokenizer: Any, input_ids: torch.Tensor, site_names: Sequence[str], *, stage: str = "output"
) -> dict[str, torch.Tensor]:
    """Outputs (or inputs) ``[b, s, d]`` of ``site_names``, saved inside one nnsight trace.

    Args:
        input_ids: ``[b, s]`` token ids.
        site_names: HF module paths (see :func:`lrm_interp.model.sites.find_sites`).
        stage: ``"output"`` (module output) or ``"input"`` (first positional input).
    """
    if stage not in _STAGES:
        raise ValueError(f"stage must be 'output' or 'input', got {stage!r}")
    wrapped = _nnsight_model(model, tokenizer)
    saved = {}
    with torch.no_grad(), wrapped.trace(input_ids):
        for n in site_names:
            env = _envoy(wrapped, n)
            saved[n] = (env.output if stage == "output" else env.input).save()
    return {k: _value(v).detach() for k, v in saved.items()}


def nnsight_grads(
    model: torch.nn.Module,
    tokenizer: Any,
    input_ids: torch.Tensor,
    site_names: Sequence[str],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``dL/d output`` ``[b, s, d_out]`` of each site, through nnsight's ``with loss.backward()``.

    Args:
        input_ids: ``[b, s]`` token ids.
        site_names: HF module paths, any order (requested in reverse forward order, as
            nnsight 0.8 requires).
        loss_fn: maps the logits ``[b, s, vocab]`` to a scalar loss.

    The model's parameters may be frozen: the helper makes the embedding output require
    grad inside the trace so the site outputs do.
    """
    wrapped = _nnsight_model(model, tokenizer)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    missing = [n for n in site_names if n not in order]
    if missing:
        raise KeyError(f"not modules of the model: {missing[:3]}")
    names = sorted(site_names, key=order.__getitem__)
    emb_module = cast("PreTrainedModel", model).get_input_embeddings()
    emb_name = next(n for n, m in model.named_modules() if m is emb_module)
    grads = {}
    with wrapped.trace(input_ids):
        emb = _envoy(wrapped, emb_name)
        emb.output.requires_grad_(True)
        outs = {n: _envoy(wrapped, n).output for n in names}
        loss = loss_fn(wrapped.output.logits)
        with loss.backward():
            for n in reversed(names):
                grads[n] = outs[n].grad.save()
    return {n: _value(grads[n]).detach() for n in site_names}
