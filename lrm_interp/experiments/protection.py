"""The matched-bits protection experiment's rows: which saliencies are compared, and the
protection masks they give at one budget.

Used by ``examples/protection_experiment.py`` (toy model, accuracy) and
``examples/protection_smollm2.py`` (SmolLM2, KL / span NLL); docs/protection.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.compress.calibration import CalibData
from lrm_interp.data.tokens import EncodedTrace
from lrm_interp.model.sites import Site
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.protect.policies import final_mlp, global_top
from lrm_interp.protect.registry import SALIENCIES, build_saliency
from lrm_interp.protect.saliency import SaliencyStream

FINAL_MLP_ROW = "final-layer MLP (paper)"


def comparison_sources(model: torch.nn.Module, sites: Sequence[Site], encoded: Sequence[EncodedTrace], behaviors: Sequence[str],
                       calib: CalibData, *, bits: int, group_size: int | None = 128, symmetric: bool = False,
                       module_importance: Any = None, seed: int = 0,
                       progress: bool = True) -> dict[str, Callable[[], SaliencyStream]]:
    """Every registered saliency (:data:`~lrm_interp.protect.registry.SALIENCIES`, in its order) as a
    lazy ``{row label: () -> stream of (site, [out, in])}``.

    ``attribution_ri`` is included only with a ``module_importance`` (``{site: score}`` or an
    Attribution). Attribution and Hessian measure ``W − Q(W)`` on the ``bits``/``group_size``/
    ``symmetric`` grid; activation and Hessian read ``calib`` (ids ``[b, s]`` or a tokenizer
    output dict); random uses ``seed``.
    """
    kw = dict(encoded=encoded, behaviors=list(behaviors), calib=calib, bits=bits, group_size=group_size,
              symmetric=symmetric, seed=seed, module_importance=module_importance, progress=progress)
    return {src.label: partial(build_saliency, name, model, sites, **kw) for name, src in SALIENCIES.items()
            if module_importance is not None or "module_importance" not in src.needs}


def comparison_masks(sources: Mapping[str, Callable[[], SaliencyStream]], sites: Sequence[Site],
                     budget: float = 0.02, *, progress: bool = False) -> dict[str, dict[str, ProtectionMask]]:
    """The mask rows of a protection experiment: ``{"none": {}}``, then ``"<budget> <label>"`` =
    :func:`~lrm_interp.protect.policies.global_top` of each source (``round(budget · N)`` weights
    over the source's sites), then :data:`FINAL_MLP_ROW` (:func:`~lrm_interp.protect.policies.final_mlp`
    of ``sites``)."""
    rows: dict[str, dict[str, ProtectionMask]] = {"none": {}}
    for name, fn in tqdm(sources.items(), desc="saliency", disable=not progress):
        rows[f"{budget:.0%} {name}"] = global_top(fn(), budget)
    rows[FINAL_MLP_ROW] = final_mlp(sites)
    return rows
