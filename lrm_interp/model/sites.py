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

import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lrm_interp.checks import checked_arguments

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


def _typed(v: object) -> str:
    """How a ``TypeError`` shows the value it refused: its repr (cut at 60 characters) and type."""
    r = repr(v)
    return f"{r if len(r) <= 60 else r[:57] + '...'} ({type(v).__name__})"


def _check_model(model: object, where: str) -> None:
    """``TypeError`` unless ``model`` is a module (has ``named_modules``): ``find_sites("toy")``
    said "'str' object has no attribute ..." (H7-API2)."""
    if not callable(getattr(model, "named_modules", None)):
        raise TypeError(
            f"{where}: model must be a torch.nn.Module (load one with lrm_interp.load_model), got "
            f"{type(model).__name__}" + (f" {model!r}" if isinstance(model, str) else "")
        )


def _check_name(name: object, where: str, what: str = "name") -> str:
    """``name`` if it is a ``str``, else ``TypeError`` naming ``where`` (``parse_site_name(5)``
    raised "'int' object has no attribute 'split'")."""
    if not isinstance(name, str):
        raise TypeError(
            f"{where}: {what} must be a module path (str, e.g. 'model.layers.0.mlp.up_proj'), got {_typed(name)}"
        )
    return name


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

    A ``name`` that is no string raises ``TypeError``.
    """
    parts = _check_name(name, "parse_site_name").split(".")
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


@checked_arguments
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

    One string ``kinds`` is one kind (``kinds="up"``, not the kinds ``u`` and ``p``) and one
    integer ``layers`` one layer; a pattern that is no string, a kind that is no string and a
    layer that is no integer raise ``TypeError`` (an invalid regex: ``re.error``). Filters that
    select no site together, and a layer the model does not have (negative: not counted from the
    end; or past the last), raise ``ValueError`` naming the model's kinds and layer range (they
    returned ``[]``, H15-FSE); without a filter a model with no linear site gives ``[]``.
    """
    where = "find_sites"
    _check_model(model, where)
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"{where}: pattern must be a regex string or None, got {_typed(pattern)}")
    if pattern is not None:  # '' or 'mlp|' gave every site, lm_head too with include_lm_head (H33-FINDEMPTY)
        refuse_empty_pattern(pattern)
    rx = re.compile(pattern) if pattern else None  # a bad regex: re.error (the CLI names the pattern)
    if kinds is not None:
        kinds = {kinds} if isinstance(kinds, str) else kinds
        if isinstance(kinds, Mapping) or not isinstance(kinds, Iterable):
            raise TypeError(f"{where}: kinds must be a kind or a collection of kinds (str), got {_typed(kinds)}")
        kinds = set(kinds)
        bad_kind = next((k for k in kinds if not isinstance(k, str)), None)
        if bad_kind is not None:
            raise TypeError(f"{where}: kinds must hold kind names (str, e.g. 'up'), got {_typed(bad_kind)}")
    if layers is not None:
        one: object = layers
        if isinstance(one, numbers.Integral) and not isinstance(one, bool):
            layers = [int(one)]
        if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
            raise TypeError(
                f"{where}: layers must be a layer index or a collection of them (int), got {_typed(layers)}"
            )
        layers = set(layers)
        bad_layer = next((x for x in layers if isinstance(x, bool) or not isinstance(x, numbers.Integral)), None)
        if bad_layer is not None:
            raise TypeError(f"{where}: layers must hold layer indices (int), got {_typed(bad_layer)}")
    every = _all_sites(model, include_lm_head)
    out = [
        s
        for s in every
        if (rx is None or rx.search(s.name))
        and (kinds is None or s.kind in kinds)
        and (layers is None or s.layer in layers)
    ]
    if rx is not None or kinds is not None or layers is not None:
        _check_selection(every, out, pattern, kinds, layers, where)
    return out


def _all_sites(model: nn.Module, include_lm_head: bool) -> list[Site]:
    """Every linear site of ``model`` in module order (the output head only with ``include_lm_head``)."""
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
        out.append(site)
    return out


def _check_selection(
    every: list[Site],
    found: list[Site],
    pattern: str | None,
    kinds: Iterable[str] | None,
    layers: Iterable[int] | None,
    where: str,
) -> None:
    """``ValueError`` when ``find_sites``' filters select nothing, or name a layer the model does not
    have (negative, or past the last): they returned ``[]`` without a word, which flowed into
    ``quantize_model_`` (nothing quantized, recorded as quantized) and ``quantization_errors``
    (H15-FSE). The message names the filters and what the model has (kinds, layer range)."""
    present = sorted({s.layer for s in every if s.layer is not None})
    span = f"{present[0]}..{present[-1]}" if present else "none"
    if layers is not None:
        bad = sorted(x for x in layers if x < 0 or x not in present)
        if bad:
            neg = " (a negative index is not counted from the end)" if bad[0] < 0 else ""
            raise ValueError(f"{where}: layers {bad} out of range: the model's linear sites are in layers {span}{neg}")
    if found:
        return
    given = []
    if pattern is not None:
        given.append(f"the pattern {pattern!r}")
    if kinds is not None:
        given.append(f"kinds {sorted(kinds)}")
    if layers is not None:
        given.append(f"layers {sorted(layers)}")
    have = [k for k in KIND_ORDER if any(s.kind == k for s in every)]
    have += sorted({s.kind for s in every} - set(have))
    some = ", ".join(s.name for s in every[:2])
    raise ValueError(
        f"{where}: no linear site matches {' and '.join(given)} (kinds: {', '.join(have) or 'none'}; "
        f"layers {span}" + (f"; site names look like {some}" if some else "") + ")"
    )


def empty_pattern_problem(pattern: str) -> str | None:
    """Why the ``sites`` regex ``pattern`` selects everything, or ``None``: it is empty or blank (an
    unset variable) or matches the empty string (``'mlp|'``, ``'^'``, ``'x*'``, ``'(mlp)?'``), so
    every module name, ``lm_head`` too, where ``None`` gives the linear sites of the decoder layers
    (H7-API6, H31-EMPTYSITES, H32-EMPTYMATCH). A pattern that is no regex is left to ``re.compile``."""
    if not pattern.strip():
        return (
            f"sites regex {pattern!r} is empty: it would match every module; give a pattern (e.g. 'mlp') or None "
            "for every linear site"
        )
    try:
        everything = re.search(pattern, "") is not None
    except re.error:
        return None
    if everything:
        return (
            f"sites regex {pattern!r} matches the empty string, so every module name (lm_head too); give a "
            "pattern that names what it selects (e.g. 'mlp'), or None for every linear site"
        )
    return None


def refuse_empty_pattern(pattern: str) -> None:
    """``ValueError`` (:func:`empty_pattern_problem`) for a ``sites`` regex that selects everything:
    :func:`resolve_sites`, :func:`find_sites` (H33-FINDEMPTY), ``AttributionConfig``."""
    problem = empty_pattern_problem(pattern)
    if problem is not None:
        raise ValueError(problem)


def repeated_site_names(names: Sequence[str]) -> list[str]:
    """The names given more than once in ``names``, sorted: a site named twice is compressed twice
    (the second grid on the first) or scored twice (its share halved), H30-DUPSITES, H31-QDUPSITES."""
    return sorted({n for n in names if names.count(n) > 1})


def resolve_sites(model: nn.Module, sites: Sequence[Site | str] | str | None = None) -> list[Site]:
    """Normalise a user's ``sites`` argument: ``None`` (all), a regex string, or names/Sites.

    Anything else (a number, a name that is no string: ``str()`` of it was looked up) raises
    ``TypeError``; a site named twice, or an empty pattern, ``ValueError`` (:func:`repeated_site_names`)."""
    _check_model(model, "resolve_sites")
    if sites is not None and not isinstance(sites, str):
        if isinstance(sites, (bytes, Mapping)) or not isinstance(sites, Iterable):
            raise TypeError(
                f"resolve_sites: sites must be None, a regex string, or a list of site names or Sites, got "
                f"{_typed(sites)}"
            )
        sites = list(sites)
        for i, x in enumerate(sites):
            if not isinstance(x, (str, Site)):
                raise TypeError(f"resolve_sites: sites[{i}] must be a site name (str) or a Site, got {_typed(x)}")
    if sites is None:
        return find_sites(model)
    if isinstance(sites, str):
        refuse_empty_pattern(sites)
        rx = re.compile(sites)  # a bad regex: re.error, as find_sites
        every = _all_sites(model, True)
        found = [s for s in every if rx.search(s.name)]
        extra = {s.name for s in every} - {s.name for s in _all_sites(model, False)}  # lm_head
        if len(found) == len(every) and extra:  # '\\b', '.': lm_head too, where None leaves it out (H32-EMPTYMATCH)
            raise ValueError(
                f"sites regex {sites!r} matches every linear module of the model, {sorted(extra)[0]} too; give None "
                "for every linear site of the decoder layers, or find_sites(model, include_lm_head=True) to include it"
            )
        if not found:
            raise ValueError(f"no linear site of the model matches the pattern {sites!r}")
        return found
    dup = repeated_site_names([x.name if isinstance(x, Site) else x for x in sites])
    if dup:
        raise ValueError(f"sites names a site more than once: {dup}; give each site once")
    out = []
    for s in sites:  # look each name up directly: no scan of the whole model
        name = s.name if isinstance(s, Site) else s
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
    """Return the submodule at HF path ``name`` (raises ``KeyError`` naming the path; ``TypeError``
    for a model that is no module or a name that is no string)."""
    _check_model(model, "get_module")
    _check_name(name, "get_module")
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise KeyError(f"model has no module {name!r}") from e
