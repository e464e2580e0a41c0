"""lrm_interp: which weights of a reasoning model matter for reasoning, and what compression does to them.

Main entry points::

    import lrm_interp
    result = lrm_interp.attribute(model, dataset)      # -> Attribution
    result.heatmap(); result.top(10); result.to_dataframe()
    shift = lrm_interp.compare(result_fp16, result_3bit)

See docs/architecture.md for the data path and the module holding each step.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .sites import Site, find_sites, parse_site_name  # noqa: E402
from .traces import (BEHAVIORS, TARGET_BEHAVIORS, BehaviorSpan, ReasoningDataset,  # noqa: E402
                     ReasoningTrace, TraceFormatError)

_LAZY = {
    "attribute": ("api", "attribute"),
    "load_dataset": ("api", "load_dataset"),
    "Attribution": ("results", "Attribution"),
    "ImportanceShift": ("results", "ImportanceShift"),
    "compare": ("results", "compare"),
    "Capture": ("capture", "Capture"),
    "encode_trace": ("tokens", "encode_trace"),
    "load_model": ("models", "load_model"),
    "load_paper_layout": ("paper_layout", "load_paper_layout"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'lrm_interp' has no attribute {name!r}")


__all__ = ["Site", "find_sites", "parse_site_name", "BEHAVIORS", "TARGET_BEHAVIORS", "BehaviorSpan",
           "ReasoningDataset", "ReasoningTrace", "TraceFormatError", *_LAZY]
