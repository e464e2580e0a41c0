"""The registry of saliency sources: every name maps to a :class:`SaliencySource` (row label,
required inputs, builder); :func:`build_saliency` builds any of them from one uniform set of
keyword inputs (:class:`SaliencyInputs`).

=====================  ==========================================================  ======================
name                   per weight (larger = keep in FP16)                          file
=====================  ==========================================================  ======================
``attribution_ri``     ``attribution`` × module RI                                 ``saliency.py``
``attribution``        ``|G_spans| · |W − RTN(W)|``                                ``saliency.py``
``attribution_scale``  ``attribution`` with the group grid re-fit counted           ``scale_aware.py``
``scale_task``         ``attribution_scale`` with response-token gradients (control)  ``scale_aware.py``
``attribution_gptq``   ``|G_spans| · |W − GPTQ(W)|``                               ``gptq_aware.py``
``tacq``               ``|G_response| · |W − GPTQ(W)| · |W|`` (TaCQ as published)  ``gptq_aware.py``
``magnitude``          ``|W|``                                                     ``saliency.py``
``activation``         ``|W| · ‖x‖`` (AWQ-style)                                   ``saliency.py``
``hessian``            ``ΔW² · H_jj`` (SpQR-style)                                 ``saliency.py``
``random``             seeded noise                                                ``saliency.py``
=====================  ==========================================================  ======================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from lrm_interp.checks import check_bool, check_seed, checked_arguments
from lrm_interp.compress.calibration import CalibData
from lrm_interp.compress.quant.apply import GRID_FREE_SALIENCIES
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.data.tokens import EncodedTrace
from lrm_interp.model.sites import Site
from lrm_interp.model.vocab import check_ids_fit
from lrm_interp.protect.encoding import check_site_list
from lrm_interp.protect.gptq_aware import attribution_gptq, response_loss, tacq
from lrm_interp.protect.saliency import (
    SaliencyStream,
    activation,
    attribution,
    check_span_grads,
    hessian,
    magnitude,
    random_saliency,
)
from lrm_interp.protect.scale_aware import scale_aware_saliency


@checked_arguments
@dataclass(frozen=True)
class SaliencyInputs:
    """The one set of keyword inputs every registered saliency builder receives.

    ``encoded``/``behaviors``: encoded traces and the behaviours whose spans give gradients;
    ``calib``: calibration ids ``[b, s]`` or a tokenizer output dict; ``bits``/``group_size``/
    ``symmetric``: the target grid (``W − Q(W)``); ``seed``: for ``random``;
    ``module_importance``: ``{site: score}`` or an Attribution; ``span_grads``: how the
    behaviour-span gradients are computed (:data:`SPAN_GRADS_SOURCES` take it,
    :func:`lrm_interp.protect.saliency.behaviour_weight_grads`); ``progress``: bars.
    """

    encoded: Sequence[EncodedTrace] | None = None
    behaviors: Sequence[str] | None = None
    calib: CalibData | None = None
    bits: int = 3
    group_size: int | None = 128
    symmetric: bool = False
    seed: int = 0
    module_importance: Mapping[str, float] | Any | None = None
    span_grads: str = "exact"
    progress: bool = True


@dataclass(frozen=True)
class SaliencySource:
    """A registered saliency: ``build(model, sites, inputs) -> SaliencyStream``, the
    :class:`SaliencyInputs` fields it ``needs`` (not ``None``) and its row ``label``."""

    label: str
    needs: tuple[str, ...]
    build: Callable[[Any, Sequence[Site], SaliencyInputs], SaliencyStream]


def _attribution_source(importance: bool) -> Callable[[Any, Sequence[Site], SaliencyInputs], SaliencyStream]:
    """The builder of ``attribution`` (``importance=False``) or ``attribution_ri`` (with ``module_importance``)."""

    def build(model: torch.nn.Module, sites: Sequence[Site], x: SaliencyInputs) -> SaliencyStream:
        return attribution(
            model,
            sites,
            x.encoded,
            x.behaviors,
            bits=x.bits,
            group_size=x.group_size,
            symmetric=x.symmetric,
            module_importance=x.module_importance if importance else None,
            span_grads=x.span_grads,
            progress=x.progress,
        )

    return build


def _scale_aware_source(model: torch.nn.Module, sites: Sequence[Site], x: SaliencyInputs) -> SaliencyStream:
    """The builder of ``attribution_scale``: behaviour-span gradients, then
    :func:`~lrm_interp.protect.scale_aware.scale_aware_saliency` on the target grid."""

    def weigh(s: Site, W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return scale_aware_saliency(W, G, x.bits, group_size=x.group_size, symmetric=x.symmetric)

    return attribution(model, sites, x.encoded, x.behaviors, weigh=weigh, span_grads=x.span_grads, progress=x.progress)


def _scale_aware_task_source(model: torch.nn.Module, sites: Sequence[Site], x: SaliencyInputs) -> SaliencyStream:
    """The builder of ``scale_task``: the control of ``attribution_scale`` — the same scale-aware
    per-weight formula with ``G`` from every response token's loss (TaCQ's task gradients,
    :func:`~lrm_interp.protect.gptq_aware.response_loss`) instead of the behaviour spans'. A protection
    table with both rows separates what the behaviour conditioning buys from what the grid re-fit
    buys."""

    def weigh(s: Site, W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return scale_aware_saliency(W, G, x.bits, group_size=x.group_size, symmetric=x.symmetric)

    enc = list(cast(Sequence[EncodedTrace], x.encoded))
    return attribution(model, sites, loss_fn=response_loss, batches=enc, weigh=weigh, progress=x.progress)


# the casts: the fields a source ``needs`` are not None (build_saliency refuses None before building)
SALIENCIES: dict[str, SaliencySource] = {
    "attribution_ri": SaliencySource(
        "attribution (behaviour-span TaCQ × module RI)",
        ("encoded", "behaviors", "module_importance"),
        _attribution_source(True),
    ),
    "attribution": SaliencySource(
        "attribution (behaviour-span TaCQ)", ("encoded", "behaviors"), _attribution_source(False)
    ),
    "attribution_scale": SaliencySource(
        "attribution, scale-aware (behaviour spans, group re-fit)", ("encoded", "behaviors"), _scale_aware_source
    ),
    "scale_task": SaliencySource(
        "scale-aware, response gradients (group re-fit; control)", ("encoded",), _scale_aware_task_source
    ),
    "attribution_gptq": SaliencySource(
        "attribution × GPTQ error (behaviour spans)",
        ("encoded", "behaviors", "calib"),
        lambda model, sites, x: attribution_gptq(
            model,
            sites,
            cast(Sequence[EncodedTrace], x.encoded),
            cast(Sequence[str], x.behaviors),
            cast(CalibData, x.calib),
            bits=x.bits,
            group_size=x.group_size,
            symmetric=x.symmetric,
            progress=x.progress,
        ),
    ),
    "tacq": SaliencySource(
        "TaCQ (response gradients × GPTQ error × |W|)",
        ("encoded", "calib"),
        lambda model, sites, x: tacq(
            model,
            sites,
            cast(Sequence[EncodedTrace], x.encoded),
            cast(CalibData, x.calib),
            bits=x.bits,
            group_size=x.group_size,
            symmetric=x.symmetric,
            progress=x.progress,
        ),
    ),
    "magnitude": SaliencySource("magnitude", (), lambda model, sites, x: magnitude(model, sites)),
    "activation": SaliencySource(
        "activation (AWQ-style)",
        ("calib",),
        lambda model, sites, x: activation(model, sites, cast(CalibData, x.calib), progress=x.progress),
    ),
    "hessian": SaliencySource(
        "hessian (SpQR-style)",
        ("calib",),
        lambda model, sites, x: hessian(
            model,
            sites,
            cast(CalibData, x.calib),
            bits=x.bits,
            group_size=x.group_size,
            symmetric=x.symmetric,
            progress=x.progress,
        ),
    ),
    "random": SaliencySource("random", (), lambda model, sites, x: random_saliency(model, sites, seed=x.seed)),
}
"""Saliency sources by name, in the order a protection experiment lists them (module docs)."""

#: the sources whose gradients come from :func:`~lrm_interp.protect.saliency.behaviour_weight_grads` and
#: that take ``span_grads`` (``"exact"``, ``"trace"``, ``"window"``); the others ignore it
SPAN_GRADS_SOURCES: tuple[str, ...] = ("attribution_ri", "attribution", "attribution_scale")


@checked_arguments
def build_saliency(
    name: str,
    model: torch.nn.Module,
    sites: Sequence[Site],
    *,
    encoded: Sequence[EncodedTrace] | None = None,
    behaviors: Sequence[str] | None = None,
    calib: CalibData | None = None,
    bits: int = 3,
    group_size: int | None = 128,
    symmetric: bool = False,
    seed: int = 0,
    module_importance: Mapping[str, float] | Any | None = None,
    span_grads: str = "exact",
    progress: bool = True,
) -> SaliencyStream:
    """The saliency stream ``(site, [out, in])`` of registered source ``name`` (:data:`SALIENCIES`).

    ``span_grads``: ``"exact"`` (default), ``"trace"`` or ``"window"`` for the sources of
    :data:`SPAN_GRADS_SOURCES` (:func:`lrm_interp.protect.saliency.behaviour_weight_grads`); another
    source refuses anything but ``"exact"`` (a ``ValueError``: it would be silently ignored).
    Inputs a source does not use are ignored; a missing required input is a ``ValueError``
    naming it, an unknown ``name`` a ``KeyError`` listing the registered ones. An encoded trace
    holding a token id beyond the model's input embedding (encoded with another model's tokenizer)
    is a ``ValueError`` naming the trace, before any work (:func:`~lrm_interp.model.vocab.check_ids_fit`).
    """
    if name not in SALIENCIES:
        raise KeyError(f"unknown saliency {name!r} (one of {list(SALIENCIES)})")
    sites = check_site_list(sites, "build_saliency")  # '', [] or [S, S]: an empty or doubled stream (H32-SALSITES)
    bits = check_bits(bits)
    group_size = check_group_size(group_size)
    symmetric = check_bool("symmetric", symmetric)
    check_seed("seed", seed)
    check_span_grads(span_grads)
    if span_grads != "exact" and name not in SPAN_GRADS_SOURCES:
        raise ValueError(f"saliency {name!r} takes no span_grads={span_grads!r} (only {list(SPAN_GRADS_SOURCES)} do)")
    src = SALIENCIES[name]
    x = SaliencyInputs(
        encoded=encoded,
        behaviors=None if behaviors is None else list(behaviors),
        calib=calib,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        seed=seed,
        module_importance=module_importance,
        span_grads=span_grads,
        progress=progress,
    )
    missing = [n for n in src.needs if getattr(x, n) is None]
    if missing:
        raise ValueError(f"saliency {name!r} needs {', '.join(missing)}")
    for e in encoded if "encoded" in src.needs and encoded is not None else ():
        # ids of another model's tokenizer: torch said only "index out of range in self" (H15-SOT)
        check_ids_fit(model, e.input_ids, f"build_saliency({name!r}): trace {e.trace_id}")
    stream = src.build(model, list(sites), x)
    if isinstance(stream, SaliencyStream) and stream.model is None:  # masks built from it record the model
        stream.model = model
    if isinstance(stream, SaliencyStream) and stream.grid is None and name not in GRID_FREE_SALIENCIES:
        # masks built from it carry the grid it scored the error on (save_masks records it,
        # quantize_model_ warns on another grid; H15-MGB)
        stream.grid = {"bits": bits, "group_size": group_size, "symmetric": symmetric, "saliency": name}
    return stream
