"""Mask-aware weight quantizers (RTN, GPTQ) and their application to whole models."""

from __future__ import annotations

from lrm_interp.compress.quant.apply import QuantReport, quantize_model_
from lrm_interp.model.weights import set_weight_matrix, weight_matrix
from lrm_interp.compress.quant.gptq import collect_hessians, gptq_quantize, gptq_quantize_tensor
from lrm_interp.compress.quant.rtn import GroupParams, QuantizedTensor, fit_params, rtn_quantize, rtn_quantize_tensor

__all__ = ["QuantReport", "quantize_model_", "rtn_quantize", "rtn_quantize_tensor", "fit_params", "GroupParams",
           "QuantizedTensor", "gptq_quantize", "gptq_quantize_tensor", "collect_hessians", "weight_matrix",
           "set_weight_matrix"]
