"""Mask-aware weight quantizers and their application to whole models.

=============  ====================================================================================
``grid.py``    the shared grid: ``check_bits``, ``fit_params`` → ``GroupParams``, codes
``rtn.py``     round-to-nearest: ``rtn_quantize``, ``rtn_quantize_tensor``
``gptq.py``    GPTQ with error feedback: ``gptq_quantize``, ``gptq_quantize_tensor``
``format.py``  ``QuantizedTensor`` and the ``lrm_interp.quantized/1`` file (``save_quantized``)
``apply.py``   ``rtn`` / ``gptq`` as methods of the compression driver; ``quantize_model_`` → ``QuantReport``
``guided.py``  loss-guided GPTQ Hessians (``gradient_weighted_hessians``, ``guided_transform``)
=============  ====================================================================================

Calibration data and Hessians: :mod:`lrm_interp.compress.calibration`; the per-site driver and
method registry shared with pruning: :mod:`lrm_interp.compress.driver`.
"""

from __future__ import annotations

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.quant.apply import QuantReport, quantize_model_
from lrm_interp.compress.quant.format import QuantizedTensor, load_quantized, save_quantized
from lrm_interp.compress.quant.gptq import gptq_quantize, gptq_quantize_tensor
from lrm_interp.compress.quant.grid import GroupParams, check_bits, check_group_size, fit_params
from lrm_interp.compress.quant.rtn import rtn_quantize, rtn_quantize_tensor

__all__ = [
    "QuantReport",
    "quantize_model_",
    "rtn_quantize",
    "rtn_quantize_tensor",
    "fit_params",
    "GroupParams",
    "check_bits",
    "check_group_size",
    "QuantizedTensor",
    "save_quantized",
    "load_quantized",
    "gptq_quantize",
    "gptq_quantize_tensor",
    "collect_hessians",
]
