"""The protection stage: which weights stay in FP16 while the rest is quantized.

=====================  ==================================================================
``saliency.py``        per-weight saliency streams (magnitude, activation, Hessian, attribution)
``scale_aware.py``     attribution with the re-fit of the group's grid counted
``gptq_aware.py``      saliencies with GPTQ's own error (TaCQ as published; behaviour spans)
``registry.py``        every source by name (``SALIENCIES``, ``build_saliency``)
``masks.py``           ``ProtectionMask``: the protected weights of one site; ``MaskSet``: a set of them
                       and the model (weights fingerprint) it was computed for
``policies.py``        budget policies (``global_top``, ``modules_by_score``, …, ``build_masks``)
``encoding.py``        index encodings, ``bits_per_weight``, the masks file (``save_masks``)
``bit_allocation.py``  module-level mixed precision (bits per module under a bpw budget, ``BitAllocation``;
                       ``mixed.py``: its old path, a deprecated re-export)
``exports.py``         toolchain configs (llm-compressor, GPTQModel, transformers), FP16 sidecar
=====================  ==================================================================

The mask names are re-exported here: ``from lrm_interp.protect import build_masks, load_masks``.
"""

from __future__ import annotations

from lrm_interp.protect.encoding import (
    ENCODINGS,
    bits_per_weight,
    decode_index,
    encode_index,
    index_bits,
    load_masks,
    save_masks,
)
from lrm_interp.protect.masks import GRANULARITIES, MaskSet, ProtectionMask
from lrm_interp.protect.policies import (
    POLICIES,
    apply_regexes,
    build_masks,
    final_mlp,
    global_top,
    modules_by_score,
    per_module_top,
)

__all__ = [
    "ProtectionMask",
    "MaskSet",
    "GRANULARITIES",
    "POLICIES",
    "build_masks",
    "global_top",
    "per_module_top",
    "modules_by_score",
    "final_mlp",
    "apply_regexes",
    "ENCODINGS",
    "index_bits",
    "encode_index",
    "decode_index",
    "bits_per_weight",
    "save_masks",
    "load_masks",
]
