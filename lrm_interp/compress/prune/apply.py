"""Prune the linear sites of a model in place with one of the registered pruners.

=============  ==============================================================  ===============
method         kernel                                                          calibration
=============  ==============================================================  ===============
``magnitude``  :func:`lrm_interp.compress.prune.magnitude.prune_magnitude_`    none
``sparsegpt``  :func:`lrm_interp.compress.prune.sparsegpt.sparsegpt_prune`     Hessians
``wanda``      :func:`lrm_interp.compress.prune.wanda.wanda_prune`             Hessian diagonals
=============  ==============================================================  ===============

SparseGPT and Wanda take their Hessians from
:func:`lrm_interp.compress.calibration.layer_hessians` — the driver GPTQ uses — decoder layer
by decoder layer (``sequential=True``): each layer sees inputs computed by the already pruned
earlier layers. ``pattern``: ``"unstructured"`` (``sparsity`` of each site) or ``"N:M"``
(e.g. ``"2:4"``: N of every M consecutive inputs zeroed, sparsity N/M). The step is recorded
in the model's provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.compress.calibration import HessianCalib, layer_hessians
from lrm_interp.compress.prune.magnitude import prune_magnitude_
from lrm_interp.compress.prune.sparsegpt import sparsegpt_prune
from lrm_interp.compress.prune.wanda import input_norms_from_hessian, wanda_prune
from lrm_interp.model.provenance import record_compression
from lrm_interp.model.sites import Site, get_module, resolve_sites
from lrm_interp.model.weights import dense_mask, set_weight_matrix, weight_matrix

PRUNERS = ("magnitude", "sparsegpt", "wanda")
OPTIONS = ("blocksize", "percdamp", "sequential", "batch_size")


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_model_` did: ``pruned`` zeroed weights of ``weights`` in ``n_sites`` sites."""

    method: str
    sparsity: float
    pattern: str
    n_sites: int
    weights: int
    pruned: int

    @property
    def achieved(self) -> float:
        return self.pruned / max(self.weights, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "achieved": self.achieved}


def parse_pattern(pattern: str | None) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; ``None`` / ``"unstructured"`` → ``(0, 0)``."""
    if pattern in (None, "", "unstructured"):
        return 0, 0
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError as e:
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' like '2:4', got {pattern!r}") from e
    if not 0 < n < m:
        raise ValueError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def prune_model_(model: torch.nn.Module, method: str, sparsity: float | None = None, *, pattern: str | None = None,
                 calib: HessianCalib | None = None, masks: Mapping[str, Any] | None = None,
                 sites: Sequence[Site | str] | str | None = None, progress: bool = True, **kw) -> PruneReport:
    """Prune every linear site of ``model`` in place (module docs).

    Args:
        method: ``"magnitude"``, ``"sparsegpt"`` or ``"wanda"``.
        sparsity: fraction per site for unstructured pruning (ignored with an N:M ``pattern``).
        calib: calibration data for SparseGPT / Wanda (ids ``[b, s]``, a tokenizer output dict or
            a callable; :mod:`lrm_interp.compress.calibration`).
        masks: ``{site: bool [out, in] or ProtectionMask}``; protected weights are never pruned.
        kw: ``blocksize`` (128), ``percdamp`` (0.01) for SparseGPT; ``sequential`` (True),
            ``batch_size`` (8) for the Hessian driver.
    """
    if method not in PRUNERS:
        raise ValueError(f"method must be one of {PRUNERS}, got {method!r}")
    n, m = parse_pattern(pattern)
    pat = f"{n}:{m}" if m else "unstructured"
    if not m and (sparsity is None or not 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    bad = set(kw) - set(OPTIONS)
    if bad:
        raise TypeError(f"unexpected arguments for pruning: {sorted(bad)} (allowed: {list(OPTIONS)})")
    site_list = resolve_sites(model, sites)
    masks = dict(masks or {})
    unknown = set(masks) - {s.name for s in site_list}
    if unknown:
        raise KeyError(f"masks name sites that are not pruned here: {sorted(unknown)[:5]}")
    target = n / m if m else float(sparsity)
    if method == "magnitude":
        if m:
            raise ValueError("magnitude pruning here is unstructured only; use sparsegpt or wanda for N:M")
        if kw:
            raise TypeError(f"unexpected arguments for magnitude pruning: {sorted(kw)}")
        r = prune_magnitude_(model, float(sparsity), sites=site_list, masks=masks)
        return PruneReport("magnitude", target, pat, len(site_list), r["weights"], r["pruned"])
    if calib is None:
        raise ValueError(f"{method} needs calibration data: calib=input_ids [b, s] (or tokenizer output / callable)")
    groups = layer_hessians(model, site_list, calib, sequential=kw.get("sequential", True),
                            batch_size=kw.get("batch_size", 8), progress=progress)
    n_w = n_p = 0
    with tqdm(total=len(site_list), desc=f"{method} {pat if m else target}", unit="site", disable=not progress) as bar:
        for grp, hessians in groups:
            for s in grp:
                mod = get_module(model, s.name)
                W = weight_matrix(mod)
                pm = dense_mask(masks.get(s.name), tuple(W.shape))
                pm = None if pm is None else pm.to(W.device)
                H = hessians.pop(s.name)
                zeros_before = int((W == 0).sum())
                if method == "sparsegpt":
                    Wp = sparsegpt_prune(W, H, None if m else float(sparsity), prunen=n, prunem=m,
                                         blocksize=kw.get("blocksize", 128), percdamp=kw.get("percdamp", 0.01), mask=pm)
                else:
                    Wp = wanda_prune(W, input_norms_from_hessian(H), None if m else float(sparsity), prunen=n,
                                     prunem=m, mask=pm)
                n_w += W.numel()
                n_p += int((Wp == 0).sum()) - zeros_before
                set_weight_matrix(mod, Wp)
                bar.update(1)
    rep = PruneReport(method, target, pat, len(site_list), n_w, n_p)
    record_compression(model, "pruning", **rep.to_dict(), protected_sites=len(masks))
    return rep


__all__ = ["prune_model_", "PruneReport", "PRUNERS", "parse_pattern"]
