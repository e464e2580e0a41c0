"""Linear-module sites of a causal language model.

A *site* is one linear module (``nn.Linear``, GPT-2 ``Conv1D``, or any quantized linear
layer) named by its canonical Hugging Face module path, e.g.
``model.layers.12.mlp.up_proj``, together with a parsed form (layer, block, kind).

Linear modules are found by duck typing, never ``isinstance(nn.Linear)``: a module is a
linear site when it exposes input/output feature counts (``in_features``/``out_features``,
or GPT-2 Conv1D's ``nx``/``nf``) and a weight-like tensor (``weight``, ``qweight``, ...).
Nothing here hard-codes dimensions, layer counts or module paths; only the vocabulary
that maps a module's leaf name to a *kind* is fixed (``KIND_BY_LEAF``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

# Leaf module name -> kind.  Fused projections keep their own kinds (qkv, gate_up).
KIND_BY_LEAF: dict[str, str] = {
    "q_proj": "q",
    "query": "q",
    "wq": "q",
    "k_proj": "k",
    "key": "k",
    "wk": "k",
    "v_proj": "v",
    "value": "v",
    "wv": "v",
    "o_proj": "o",
    "out_proj": "o",
    "wo": "o",
    "dense": "o",
    "qkv_proj": "qkv",
    "c_attn": "qkv",
    "query_key_value": "qkv",
    "Wqkv": "qkv",
    "W_pack": "qkv",
    "gate_proj": "gate",
    "w1": "gate",
    "up_proj": "up",
    "w3": "up",
    "c_fc": "up",
    "fc1": "up",
    "dense_h_to_4h": "up",
    "down_proj": "down",
    "w2": "down",
    "fc2": "down",
    "dense_4h_to_h": "down",
    "gate_up_proj": "gate_up",
    "lm_head": "lm_head",
    "embed_out": "lm_head",
}
# GPT-2 reuses ``c_proj`` for the attention output and the MLP output.
_KIND_BY_BLOCK_LEAF: dict[tuple[str, str], str] = {("attn", "c_proj"): "o", ("mlp", "c_proj"): "down"}
_ATTN_PARENTS = {"self_attn", "attn", "attention", "self_attention", "mixer"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn", "block_sparse_moe"}
_WEIGHT_NAMES = ("weight", "qweight", "W_q", "packed_weight", "weight_packed")
# Order used for tables and heatmaps.
KIND_ORDER: tuple[str, ...] = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down", "lm_head")


@dataclass(frozen=True)
class Site:
    """One linear module of a model.

    Attributes:
        name: canonical HF module path, e.g. ``model.layers.3.self_attn.q_proj``.
        layer: decoder layer index, or ``None`` outside the layer stack (``lm_head``).
        block: ``"attn"``, ``"mlp"`` or ``"other"``.
        kind: ``q``, ``k``, ``v``, ``o``, ``qkv``, ``gate``, ``up``, ``gate_up``, ``down``,
            ``lm_head`` or the raw leaf name when it is not in the vocabulary.
        in_features, out_features: logical shape of the linear map (x[in] -> y[out]).
        n_weights: ``in_features * out_features`` (logical, also for packed layers).
        n_params: ``n_weights`` plus the bias length.
        module_type: class name of the module (e.g. ``Linear``, ``Conv1D``, ``QuantLinear``).
    """

    name: str
    layer: int | None
    block: str
    kind: str
    in_features: int
    out_features: int
    n_weights: int
    n_params: int
    module_type: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Site:
        return cls(**d)


def parse_site_name(name: str) -> tuple[int | None, str, str]:
    """Parse an HF module path into ``(layer, block, kind)``.

    >>> parse_site_name("model.layers.12.mlp.up_proj")
    (12, 'mlp', 'up')
    >>> parse_site_name("transformer.h.0.attn.c_proj")
    (0, 'attn', 'o')
    """
    parts = name.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), None)
    leaf = parts[-1]
    parents = set(parts[:-1])
    if parents & _ATTN_PARENTS:
        block = "attn"
    elif parents & _MLP_PARENTS:
        block = "mlp"
    else:
        block = "other"
    kind = _KIND_BY_BLOCK_LEAF.get((block, leaf)) or KIND_BY_LEAF.get(leaf, leaf)
    if block == "other" and kind in {"q", "k", "v", "o", "qkv"}:
        block = "attn"
    elif block == "other" and kind in {"gate", "up", "down", "gate_up"}:
        block = "mlp"
    return layer, block, kind


def linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """Return ``(in_features, out_features)`` when ``module`` behaves as a linear layer.

    Duck typing: feature counts from ``in_features``/``out_features`` (nn.Linear and most
    quantized layers) or ``nx``/``nf`` (GPT-2 Conv1D), plus a weight-like tensor attribute.
    """
    if not any(isinstance(getattr(module, w, None), torch.Tensor) for w in _WEIGHT_NAMES):
        return None
    fin, fout = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if fin is None or fout is None:
        fin, fout = getattr(module, "nx", None), getattr(module, "nf", None)
    if not isinstance(fin, int) or not isinstance(fout, int):
        return None
    return fin, fout


def _make_site(name: str, module: nn.Module, shape: tuple[int, int]) -> Site:
    layer, block, kind = parse_site_name(name)
    fin, fout = shape
    bias = getattr(module, "bias", None)
    n_bias = bias.numel() if isinstance(bias, torch.Tensor) else 0
    return Site(
        name=name,
        layer=layer,
        block=block,
        kind=kind,
        in_features=fin,
        out_features=fout,
        n_weights=fin * fout,
        n_params=fin * fout + n_bias,
        module_type=type(module).__name__,
    )


def find_sites(
    model: nn.Module,
    *,
    include_lm_head: bool = False,
    pattern: str | None = None,
    kinds: Iterable[str] | None = None,
    layers: Iterable[int] | None = None,
) -> list[Site]:
    """Discover the linear sites of ``model`` in module order.

    Args:
        model: any ``nn.Module`` (an HF causal LM, a quantized copy, a bare decoder).
        include_lm_head: keep the output projection (tied or not). Off by default: the
            method targets the linears inside the decoder layers.
        pattern: optional regex; only sites whose name matches (``re.search``) are kept.
        kinds: optional subset of kinds (``{"up", "down"}``).
        layers: optional subset of layer indices.

    Returns:
        list of :class:`Site`, one per linear module, in ``named_modules`` order.
    """
    if not callable(
        getattr(model, "named_modules", None)
    ):  # find_sites("toy") said "'str' object has no attribute ..." (H7-API2)
        raise TypeError(
            f"model must be a torch.nn.Module (load one with lrm_interp.load_model), got {type(model).__name__}"
            + (f" {model!r}" if isinstance(model, str) else "")
        )
    rx = re.compile(pattern) if pattern else None
    kinds = set(kinds) if kinds is not None else None
    layers = set(layers) if layers is not None else None
    out: list[Site] = []
    for name, module in model.named_modules():
        if not name:
            continue
        shape = linear_shape(module)
        if shape is None:
            continue
        site = _make_site(name, module, shape)
        if site.kind == "lm_head" and not include_lm_head:
            continue
        if rx is not None and not rx.search(name):
            continue
        if kinds is not None and site.kind not in kinds:
            continue
        if layers is not None and site.layer not in layers:
            continue
        out.append(site)
    return out


def resolve_sites(model: nn.Module, sites: Sequence[Site | str] | str | None = None) -> list[Site]:
    """Normalise a user's ``sites`` argument: ``None`` (all), a regex string, or names/Sites."""
    if sites is None:
        return find_sites(model)
    if isinstance(sites, str):
        found = find_sites(model, include_lm_head=True, pattern=sites)
        if not found:
            raise ValueError(f"no linear site of the model matches the pattern {sites!r}")
        return found
    out = []
    for s in sites:  # look each name up directly: no scan of the whole model
        name = s.name if isinstance(s, Site) else str(s)
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            mod = None
        shape = linear_shape(mod) if mod is not None else None
        if mod is None or shape is None:
            close = [n for n, m in model.named_modules() if n.endswith(name.split(".")[-1]) and linear_shape(m)][:3]
            if not close:  # "(e.g. [])" named nothing (H7-API-sn): a few real site names instead
                close = [x.name for x in find_sites(model)][:3]
            raise KeyError(f"{name!r} is not a linear module of this model (site names look like {close})")
        out.append(
            s if isinstance(s, Site) and (s.in_features, s.out_features) == shape else _make_site(name, mod, shape)
        )
    return out


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule at HF path ``name`` (raises ``KeyError`` naming the path)."""
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise KeyError(f"model has no module {name!r}") from e
