"""lrm_interp: which weights of a reasoning model matter for reasoning, and what compression does to them.

Main entry points::

    import lrm_interp
    result = lrm_interp.attribute(model, dataset)      # -> Attribution
    result.heatmap(); result.top(10); result.to_dataframe()
    shift = lrm_interp.compare(result_fp16, result_3bit)

The package is laid out by stage of the data path, and imports only go forward along it
(docs/architecture.md): ``data/`` (traces, tokens, annotation, benchmarks, the toy task
generators), ``model/`` (loading, sites, forward plumbing, capture), ``attribution/`` (DoM,
AtP, results), ``compress/`` (calibration, quantization, pruning), ``protect/`` (saliency,
masks, exports), ``evaluation/``, ``toy/`` (the shipped toy model), ``experiments/`` and
``cli/``. Every public name below is imported lazily, on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY: dict[str, str] = {
    "attribute": "lrm_interp.attribution.pipeline",
    "AttributionConfig": "lrm_interp.attribution.config",
    "Attribution": "lrm_interp.attribution.results",
    "ImportanceShift": "lrm_interp.attribution.results",
    "compare": "lrm_interp.attribution.results",
    "load_dataset": "lrm_interp.data.loading",
    "load_paper_layout": "lrm_interp.data.paper_layout",
    "encode_trace": "lrm_interp.data.tokens",
    "BEHAVIORS": "lrm_interp.data.traces",
    "TARGET_BEHAVIORS": "lrm_interp.data.traces",
    "BehaviorSpan": "lrm_interp.data.traces",
    "ReasoningDataset": "lrm_interp.data.traces",
    "ReasoningTrace": "lrm_interp.data.traces",
    "TraceFormatError": "lrm_interp.data.traces",
    "load_model": "lrm_interp.model.loading",
    "Site": "lrm_interp.model.sites",
    "find_sites": "lrm_interp.model.sites",
    "parse_site_name": "lrm_interp.model.sites",
    "Capture": "lrm_interp.model.capture",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lrm_interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
