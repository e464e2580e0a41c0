"""Mask-aware weight quantizers (RTN, GPTQ) and their application to whole models."""

from __future__ import annotations

from .apply import QuantReport, quantize_model_, set_weight_matrix, weight_matrix
from .gptq import collect_hessians, gptq_quantize, gptq_quantize_tensor
from .rtn import GroupParams, QuantizedTensor, fit_params, rtn_quantize, rtn_quantize_tensor

__all__ = ["QuantReport", "quantize_model_", "rtn_quantize", "rtn_quantize_tensor", "fit_params", "GroupParams",
           "QuantizedTensor", "gptq_quantize", "gptq_quantize_tensor", "collect_hessians", "weight_matrix",
           "set_weight_matrix"]
