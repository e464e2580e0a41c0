"""Prune the linear sites of a model in place with one of the registered pruners.

=============  ==============================================================  ===============
method         kernel                                                          calibration
=============  ==============================================================  ===============
``magnitude``  :func:`lrm_interp.compress.prune.magnitude.magnitude_prune`     none
``sparsegpt``  :func:`lrm_interp.compress.prune.sparsegpt.sparsegpt_prune`     Hessians
``wanda``      :func:`lrm_interp.compress.prune.wanda.wanda_prune`             Hessian diagonals
=============  ==============================================================  ===============

The pruners are registered methods of the compression driver (:mod:`lrm_interp.compress.driver`),
which also runs the quantizers: SparseGPT and Wanda take their Hessians from
:func:`lrm_interp.compress.calibration.layer_hessians` — the driver GPTQ uses — decoder layer
by decoder layer (``sequential=True``): each layer sees inputs computed by the already pruned
earlier layers. ``pattern``: ``"unstructured"`` (``sparsity`` of each site) or ``"N:M"``
(e.g. ``"2:4"``: N of every M consecutive inputs zeroed, sparsity N/M;
:func:`lrm_interp.compress.common.parse_pattern`). The step is recorded in the model's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.compress.calibration import HessianCalib
from lrm_interp.compress.common import check_pattern, parse_pattern
from lrm_interp.compress.driver import (
    CompressionMethod,
    CompressionRun,
    compress_model_,
    get_method,
    method_names,
    register_method,
)
from lrm_interp.compress.prune.magnitude import magnitude_prune
from lrm_interp.compress.prune.sparsegpt import sparsegpt_prune
from lrm_interp.compress.prune.wanda import input_norms_from_hessian, wanda_prune
from lrm_interp.model.sites import Site


def _magnitude(*, sparsity: float | None, prunen: int, prunem: int):
    def prune(W, m, H):
        return magnitude_prune(W, sparsity, mask=m)

    return prune


def _sparsegpt(*, sparsity: float | None, prunen: int, prunem: int, **options):
    def prune(W, m, H):
        return sparsegpt_prune(W, H, sparsity, prunen=prunen, prunem=prunem, mask=m, **options)

    return prune


def _wanda(*, sparsity: float | None, prunen: int, prunem: int):
    def prune(W, m, H):
        return wanda_prune(W, input_norms_from_hessian(H), sparsity, prunen=prunen, prunem=prunem, mask=m)

    return prune


MAGNITUDE = register_method(CompressionMethod("magnitude", "pruning", _magnitude, label="magnitude pruning"))
SPARSEGPT = register_method(
    CompressionMethod(
        "sparsegpt",
        "pruning",
        _sparsegpt,
        label="SparseGPT",
        calibrated=True,
        options=("blocksize", "percdamp"),
        nm=True,
    )
)
WANDA = register_method(CompressionMethod("wanda", "pruning", _wanda, label="Wanda", calibrated=True, nm=True))
PRUNERS = method_names("pruning")


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_model_` did: ``pruned`` weights of ``weights`` in ``n_sites`` sites
    zeroed (nonzero before, 0 after)."""

    method: str
    sparsity: float
    pattern: str
    n_sites: int
    weights: int
    pruned: int
    protected_sites: int = field(default=0, repr=False)  #: sites with a mask (provenance only)

    @property
    def achieved(self) -> float:
        return self.pruned / max(self.weights, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["protected_sites"]
        return {**d, "achieved": self.achieved}

    def provenance(self) -> dict:
        """The step recorded in the model's provenance: :meth:`to_dict` and the number of masked sites."""
        return {**self.to_dict(), "protected_sites": self.protected_sites}


@checked_arguments
def prune_model_(
    model: torch.nn.Module,
    method: str,
    sparsity: float | None = None,
    *,
    pattern: str | None = None,
    calib: HessianCalib | None = None,
    masks: Mapping[str, Any] | None = None,
    sites: Sequence[Site | str] | str | None = None,
    progress: bool = True,
    **kw,
) -> PruneReport:
    """Prune every linear site of ``model`` in place (module docs).

    Args:
        method: ``"magnitude"``, ``"sparsegpt"`` or ``"wanda"``.
        sparsity: fraction per site for unstructured pruning (ignored with an N:M ``pattern``).
        calib: calibration data for SparseGPT / Wanda (ids ``[b, s]``, a tokenizer output dict or
            a callable; :mod:`lrm_interp.compress.calibration`).
        masks: ``{site: bool [out, in] or ProtectionMask}``; protected weights are never pruned.
        kw: ``blocksize`` (128), ``percdamp`` (0.01) for SparseGPT; ``sequential`` (True),
            ``batch_size`` (8) for the Hessian driver (SparseGPT and Wanda).
    """
    m = get_method(method, "pruning")
    n, mm = parse_pattern(pattern)
    sp = None if mm or sparsity is None else float(sparsity)
    check_pattern(sp, n, mm)
    if mm and not m.nm:
        raise ValueError(
            f"{m.label} here is unstructured only; use {' or '.join(method_names('pruning', nm=True))} for N:M"
        )
    pat = f"{n}:{mm}" if mm else "unstructured"
    target = n / mm if mm else cast(float, sp)  # without N:M, check_pattern made sure of a sparsity

    def report(run: CompressionRun) -> PruneReport:
        return PruneReport(m.name, target, pat, len(run.sites), run.weights, run.zeroed, run.masked_sites)

    return compress_model_(
        model,
        m,
        dict(sparsity=sp, prunen=n, prunem=mm),
        report=report,
        sites=sites,
        masks=masks,
        calib=calib,
        options=kw,
        desc=f"{m.name} {pat if mm else target}",
        progress=progress,
    )


def prune_magnitude_(
    model: torch.nn.Module,
    sparsity: float,
    *,
    sites: Sequence[Site | str] | str | None = None,
    masks: Mapping[str, object] | None = None,
) -> dict:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of every site, in place
    (:func:`prune_model_` with ``method="magnitude"``, no progress bar).

    Protected weights (``masks``: bool ``[out, in]`` or ProtectionMask per site) are never
    pruned and do not count towards the budget. Returns ``{"pruned": n, "weights": N}``.
    """
    rep = prune_model_(model, "magnitude", sparsity, sites=sites, masks=masks, progress=False)
    return {"pruned": rep.pruned, "weights": rep.weights}


__all__ = [
    "prune_model_",
    "prune_magnitude_",
    "PruneReport",
    "PRUNERS",
    "parse_pattern",
    "MAGNITUDE",
    "SPARSEGPT",
    "WANDA",
]
