"""Bit allocation (module-level mixed precision): bits per module under an exact bits-per-weight
budget. Formerly ``protect/mixed.py`` (that path still imports, deprecated).

Deployment toolchains (GPTQModel ``dynamic``, llm-compressor ``config_groups``) quantize whole
modules at one bit width each, so this is the form of protection they load. A module ``m`` at
``b`` bits costs :func:`~lrm_interp.protect.encoding.quantized_site_bits` (codes + group
scales/zeros; 16 bits = kept in FP16, no scales). Its expected loss increase is modelled as

    ΔL_m(b) = s_m · e_m(b)

with ``e_m(b)`` its RTN reconstruction error at ``b`` bits (:func:`quantization_errors`:
``‖Q_b(W) − W‖²_F``, optionally relative to ``‖W‖²_F``) and ``s_m`` a sensitivity:

- ``attribution`` — the module's attribution importance (relative importance of
  :class:`~lrm_interp.attribution.results.Attribution`), with relative errors (the scores
  measure the module output's effect, whatever the weight norm);
- ``hessian`` — ``tr(H_m)/in``, the mean squared input (HAWQ-v2-style: ``E‖ΔW x‖² ≈
  tr(H)/in · ‖ΔW‖²`` for isotropic error), with absolute errors;
- ``none`` — 1 for every module, absolute errors (minimise total weight error).

:func:`allocate_bits` starts every module at the lowest choice and greedily applies the
upgrade with the largest ``ΔL`` saved per extra bit that still fits, until none fits: the
result never exceeds the budget. :func:`uniform_allocation` is the plain baseline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lrm_interp._io import atomic_write_text, refuse_result_file
from lrm_interp.checks import check_float
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.model.sites import Site, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect.encoding import quantized_site_bits

KEPT = 16  # "bits" of a module kept in FP16
FORMAT = "lrm_interp.bits/1"


@dataclass(frozen=True)
class BitAllocation:
    """Bits of every quantized module (16 = kept in FP16) and what they cost.

    Attributes:
        bits: ``{site: bits}`` in site order.
        bpw: achieved average storage bits per weight over the sites.
        budget_bpw: the budget it was allocated under (``None`` for uniform).
        sensitivity: what drove it (``"attribution"``, ``"hessian"``, ``"none"``, ``"uniform"``).
        group_size, symmetric: the grid the costs assume.
    """

    bits: dict[str, int]
    bpw: float
    budget_bpw: float | None
    sensitivity: str
    group_size: int | None = 128
    symmetric: bool = False
    provenance: dict = field(default_factory=dict)

    def counts(self) -> dict[int, int]:
        """Modules per bit width."""
        out: dict[int, int] = {}
        for b in self.bits.values():
            out[b] = out.get(b, 0) + 1
        return dict(sorted(out.items()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}×{b}" for b, n in self.counts().items())
        budget = "" if self.budget_bpw is None else f" (budget {self.budget_bpw:.3f})"
        return f"BitAllocation({self.sensitivity}, {self.bpw:.4f} bits/weight{budget}; modules at bits: {counts})"

    def _repr_html_(self) -> str:
        """Jupyter: modules per bit width and the bits of every module."""
        from lrm_interp.display import box, html_table

        return box(repr(self), html_table(["site", "bits"], [[k, v] for k, v in self.bits.items()]))

    def to_dataframe(self):
        """One row per site: ``site``, ``bits``."""
        import pandas as pd

        return pd.DataFrame({"site": list(self.bits), "bits": list(self.bits.values())})

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "bits": self.bits,
            "bpw": self.bpw,
            "budget_bpw": self.budget_bpw,
            "sensitivity": self.sensitivity,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path, *, own: str | None = None) -> Path:
        """JSON file (atomic write). A ``path`` that is one of the files of a finished result of an
        ``lrm-interp`` command (``SC/bits.json`` of a study, ``A/attribution.json``), or lies inside
        one, is refused first (:class:`~lrm_interp._io.OtherResultError` naming it; it was replaced
        without a word, H9-PYW); ``own``: the kind of result whose own file this is (the study
        writing its ``bits.json`` passes ``"study"``)."""
        refuse_result_file(path, own=own)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> BitAllocation:
        d = json.loads(Path(path).read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"{path}: not a bit allocation file (format {d.get('format')!r}, expected {FORMAT!r})")
        return cls(
            {k: int(v) for k, v in d["bits"].items()},
            d["bpw"],
            d["budget_bpw"],
            d["sensitivity"],
            d["group_size"],
            d["symmetric"],
            d.get("provenance", {}),
        )


def check_choices(choices: Sequence[int]) -> list[int]:
    """The sorted distinct bit widths of ``choices`` if each is 2..8 or 16 (:data:`KEPT`), else ``ValueError``."""
    out = set()
    for b in choices:
        try:
            out.add(KEPT if not isinstance(b, bool) and b == KEPT else check_bits(b))
        except ValueError:
            raise ValueError(f"choices: bit widths must be 2..8 or {KEPT}, got {b!r}") from None
    if not out:
        raise ValueError("choices must name at least one bit width (2..8 or 16)")
    return sorted(out)


def site_cost(site: Site, bits: int, *, group_size: int | None = 128, symmetric: bool = False) -> int:
    """Storage bits of ``site`` at ``bits`` (``16``: the FP16 weights, nothing else)."""
    if bits == KEPT:
        return KEPT * site.n_weights
    code, params = quantized_site_bits(site, bits, group_size=group_size, symmetric=symmetric)
    return code + params


def allocation_bpw(
    bits: Mapping[str, int], sites: Sequence[Site], *, group_size: int | None = 128, symmetric: bool = False
) -> float:
    """Average storage bits per weight of an allocation over ``sites``."""
    n = sum(s.n_weights for s in sites)
    return sum(site_cost(s, bits[s.name], group_size=group_size, symmetric=symmetric) for s in sites) / n


@torch.no_grad()
def quantization_errors(
    model: torch.nn.Module,
    sites: Sequence[Site],
    choices: Sequence[int],
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    relative: bool = False,
) -> dict[str, dict[int, float]]:
    """``{site: {bits: ‖RTN_bits(W) − W‖²_F}}`` (divided by ``‖W‖²_F`` when ``relative``); 0 at 16 bits."""
    from lrm_interp.compress.quant.rtn import rtn_quantize

    out: dict[str, dict[int, float]] = {}
    for s in sites:
        W = weight_matrix(get_module(model, s.name)).float()
        norm = float(W.pow(2).sum()) if relative else 1.0
        out[s.name] = {
            b: 0.0
            if b == KEPT
            else float((rtn_quantize(W, b, group_size=group_size, symmetric=symmetric) - W).pow(2).sum())
            / max(norm, 1e-30)
            for b in choices
        }
    return out


def hessian_sensitivity(hessians: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{site: tr(H)/in}`` from GPTQ-style input Hessians ``H = E[x xᵀ]`` ``[in, in]``."""
    return {k: float(torch.diagonal(H).mean()) for k, H in hessians.items()}


def allocate_bits(
    sites: Sequence[Site],
    errors: Mapping[str, Mapping[int, float]],
    sensitivity: Mapping[str, float] | None,
    budget_bpw: float,
    *,
    choices: Sequence[int] = (2, 3, 4, 8, 16),
    group_size: int | None = 128,
    symmetric: bool = False,
    name: str = "none",
) -> BitAllocation:
    """Greedy bit allocation minimising ``Σ_m s_m · e_m(b_m)`` with average bits ≤ ``budget_bpw``.

    Args:
        errors: ``{site: {bits: error}}`` for every choice (:func:`quantization_errors`).
        sensitivity: ``{site: s_m}`` (``None``: 1 everywhere). Negative values are an error, and
            so is a sensitivity that is 0 for every site (nothing to allocate by).
        budget_bpw: average storage bits per weight allowed (codes, scales, FP16 modules).
        name: recorded as :attr:`BitAllocation.sensitivity`.

    Raises:
        ValueError: budget below the all-lowest allocation, a site without errors for a choice, a
            sensitivity that is negative, not finite, or 0 everywhere.
    """
    check_float("budget_bpw", budget_bpw, min=0.0, min_open=True)
    choices = check_choices(choices)
    group_size = check_group_size(group_size)
    n_total = sum(s.n_weights for s in sites)
    sens = (
        {s.name: 1.0 for s in sites}
        if sensitivity is None
        else {s.name: float(sensitivity.get(s.name, 0.0)) for s in sites}
    )
    bad = [k for k, v in sens.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"allocate_bits: sensitivities must be finite and >= 0, got {sens[bad[0]]} for {bad[0]}")
    if sensitivity is not None and sites and not any(sens[s.name] > 0 for s in sites):
        # every module's error weighs 0: any allocation would do, one drawn from no information (H8-NAN2)
        raise ValueError(
            f"allocate_bits: every sensitivity of the {len(sites)} sites is 0: nothing to allocate by "
            "(sensitivity=None weighs every module equally)"
        )
    for s in sites:
        missing = [b for b in choices if b not in errors.get(s.name, {})]
        if missing:
            raise ValueError(f"allocate_bits: no error of {s.name} at {missing} bits")
    cost = {s.name: {b: site_cost(s, b, group_size=group_size, symmetric=symmetric) for b in choices} for s in sites}
    level = {s.name: 0 for s in sites}
    used = sum(cost[s.name][choices[0]] for s in sites)
    budget = budget_bpw * n_total
    if used > budget + 1e-9:
        raise ValueError(
            f"budget {budget_bpw} bpw is below the cheapest allocation ({used / n_total:.4f} bpw at "
            f"{choices[0]} bits everywhere)"
        )
    while True:
        best, best_ratio = None, -1.0
        for s in sites:
            i = level[s.name]
            if i + 1 >= len(choices):
                continue
            b0, b1 = choices[i], choices[i + 1]
            extra = cost[s.name][b1] - cost[s.name][b0]
            if used + extra > budget + 1e-9:
                continue
            gain = sens[s.name] * (errors[s.name][b0] - errors[s.name][b1])
            ratio = gain / extra
            if ratio > best_ratio:
                best, best_ratio = s.name, ratio
        if best is None:
            break
        i = level[best]
        used += cost[best][choices[i + 1]] - cost[best][choices[i]]
        level[best] = i + 1
    bits = {s.name: choices[level[s.name]] for s in sites}
    return BitAllocation(
        bits,
        used / n_total,
        float(budget_bpw),
        name,
        group_size,
        symmetric,
        {"choices": choices, "objective": sum(sens[k] * errors[k][b] for k, b in bits.items())},
    )


def uniform_allocation(
    sites: Sequence[Site], bits: int, *, group_size: int | None = 128, symmetric: bool = False
) -> BitAllocation:
    """Every module at ``bits`` (the baseline of the same bit width everywhere)."""
    b = {s.name: int(bits) for s in sites}
    return BitAllocation(
        b, allocation_bpw(b, sites, group_size=group_size, symmetric=symmetric), None, "uniform", group_size, symmetric
    )


def quantize_allocation_(
    model: torch.nn.Module, alloc: BitAllocation, *, method: str = "rtn", calib=None, progress: bool = True, **gptq_kw
) -> list:
    """Quantize each module of ``model`` in place at its allocated bits (16: left as is), with
    :func:`lrm_interp.compress.quant.quantize_model_`, one call per bit width; returns the reports."""
    from lrm_interp.compress.quant import quantize_model_

    reports = []
    by_bits: dict[int, list[str]] = {}
    for k, b in alloc.bits.items():
        by_bits.setdefault(b, []).append(k)
    for b, names in sorted(by_bits.items()):
        if b == KEPT:
            continue
        reports.append(
            quantize_model_(
                model,
                bits=b,
                group_size=alloc.group_size,
                symmetric=alloc.symmetric,
                method=method,
                sites=names,
                calib=calib,
                progress=progress,
                **gptq_kw,
            )
        )
    return reports


__all__ = [
    "BitAllocation",
    "allocate_bits",
    "uniform_allocation",
    "quantization_errors",
    "hessian_sensitivity",
    "site_cost",
    "allocation_bpw",
    "quantize_allocation_",
    "check_choices",
    "KEPT",
]
