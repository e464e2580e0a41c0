"""Saliencies whose weight error is GPTQ's own: ``ΔW = W − GPTQ(W)`` instead of RTN's.

Under GPTQ the error that remains after error compensation is not the RTN error, so the
per-weight term of an RTN-based saliency says little about what GPTQ will do (docs/protection.md).

==========================  =====================================================================
``tacq``                    TaCQ as published (arXiv 2504.07389): ``|G| ⊙ |W − GPTQ(W)| ⊙ |W|``,
                            ``G = Σ_traces |∂L_task/∂W|``, ``L_task`` = mean cross-entropy of the
                            trace's response tokens (task-conditioned, not behaviour-conditioned)
``attribution_gptq``        behaviour-span gradients (as ``attribution``) × ``|W − GPTQ(W)|``
==========================  =====================================================================

``GPTQ(W)``: the unprotected GPTQ of each site on the target grid with the Hessian of its
calibration inputs in the unquantized model (:class:`GPTQDeltas`: one decoder layer's Hessians
in memory at a time, collected when the first site of the layer is asked for).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.compress.calibration import CalibData, collect_hessians
from lrm_interp.compress.quant.gptq import gptq_quantize
from lrm_interp.data.tokens import EncodedTrace, TokenSpan
from lrm_interp.model.forward import input_device, span_losses
from lrm_interp.model.sites import Site
from lrm_interp.protect.saliency import SaliencyStream, attribution


class GPTQDeltas:
    """``quantizer(site, W) -> GPTQ(W)`` for :func:`lrm_interp.protect.saliency.attribution`.

    Hessians ``2·XᵀX/n`` of ``calib`` (ids ``[b, s]`` or a tokenizer output dict) in the model as
    it is when a layer is first asked for; the cache holds one decoder layer's sites.
    """

    @checked_arguments
    def __init__(
        self,
        model: torch.nn.Module,
        sites: Sequence[Site],
        calib: CalibData,
        *,
        bits: int,
        group_size: int | None = 128,
        symmetric: bool = False,
        blocksize: int = 128,
        percdamp: float = 0.01,
        progress: bool = True,
    ):
        if calib is None:
            raise ValueError("GPTQ-based saliency needs calibration data (calib=)")
        self.model, self.calib = model, calib
        self.sites = {s.name: s for s in sites}
        self.kw: dict[str, Any] = dict(
            group_size=group_size, symmetric=symmetric, blocksize=blocksize, percdamp=percdamp
        )
        self.bits, self.progress = bits, progress
        self._layer: Any = object()
        self._H: dict[str, torch.Tensor] = {}

    def __call__(self, site: Site, W: torch.Tensor) -> torch.Tensor:
        if site.name not in self._H:
            grp = [s for s in self.sites.values() if s.layer == site.layer] if site.layer is not None else [site]
            self._H, _ = collect_hessians(
                self.model, grp, self.calib, progress=self.progress, desc=f"Hessians layer {site.layer}"
            )
        H = self._H.pop(site.name)
        return gptq_quantize(W.float(), H.to(W.device), self.bits, **self.kw)


def response_span(e: EncodedTrace) -> TokenSpan:
    """The whole response of a trace as one span ``[response_start, len)`` (TaCQ's task loss)."""
    n = int(e.input_ids.numel())
    return TokenSpan("response", e.response_start, n, e.response_start, 0, 0, -1)


def response_loss(model: torch.nn.Module, e: EncodedTrace) -> torch.Tensor | None:
    """Mean cross-entropy of a trace's response tokens (``None`` for an empty response)."""
    sp = response_span(e)
    if sp.targets[1] <= sp.targets[0]:
        return None
    return span_losses(model, e.input_ids[None].to(input_device(model)), [sp])[0]


@checked_arguments
def tacq(
    model: torch.nn.Module,
    sites: Sequence[Site],
    encoded: Sequence[EncodedTrace],
    calib: CalibData,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    symmetric: bool = False,
    progress: bool = True,
) -> SaliencyStream:
    """TaCQ ``|G| ⊙ |W − GPTQ(W)| ⊙ |W|`` ``[out, in]`` per site, ``G`` from response-token losses
    of ``encoded`` (module docs)."""
    q = GPTQDeltas(model, sites, calib, bits=bits, group_size=group_size, symmetric=symmetric, progress=progress)

    def weigh(s: Site, W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return G * (W - q(s, W).cpu()).abs() * W.abs()

    return attribution(model, sites, loss_fn=response_loss, batches=list(encoded), weigh=weigh, progress=progress)


@checked_arguments
def attribution_gptq(
    model: torch.nn.Module,
    sites: Sequence[Site],
    encoded: Sequence[EncodedTrace],
    behaviors: Sequence[str],
    calib: CalibData,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    symmetric: bool = False,
    module_importance: Mapping[str, float] | Any | None = None,
    progress: bool = True,
) -> SaliencyStream:
    """Behaviour-span ``|G| ⊙ |W − GPTQ(W)|`` ``[out, in]`` per site (module docs)."""
    q = GPTQDeltas(model, sites, calib, bits=bits, group_size=group_size, symmetric=symmetric, progress=progress)
    return attribution(
        model, sites, encoded, behaviors, quantizer=q, module_importance=module_importance, progress=progress
    )
