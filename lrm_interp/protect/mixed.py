"""Deprecated: the old path of :mod:`lrm_interp.protect.bit_allocation` (module-level mixed
precision: bits per module under a bits-per-weight budget, ``BitAllocation``). Kept for one
release as a re-export; import from ``lrm_interp.protect.bit_allocation`` (or ``lrm_interp``)
instead."""

from __future__ import annotations

import warnings

from lrm_interp.protect.bit_allocation import (
    FORMAT,
    KEPT,
    AllocationBits,
    BitAllocation,
    SiteErrors,
    allocate_bits,
    allocation_bpw,
    check_allocation,
    check_choices,
    hessian_sensitivity,
    quantization_errors,
    quantize_allocation_,
    site_cost,
    uniform_allocation,
    with_bits,
)

warnings.warn(
    "lrm_interp.protect.mixed is deprecated; import from lrm_interp.protect.bit_allocation (same names)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "BitAllocation",
    "AllocationBits",
    "with_bits",
    "allocate_bits",
    "uniform_allocation",
    "quantization_errors",
    "hessian_sensitivity",
    "site_cost",
    "allocation_bpw",
    "quantize_allocation_",
    "check_allocation",
    "check_choices",
    "SiteErrors",
    "KEPT",
    "FORMAT",
]
