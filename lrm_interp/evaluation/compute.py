"""Deprecated: the old path of :mod:`lrm_interp.evaluation.output_stats` (output lengths, the
short-vs-long split, collapse and backtracking cues). Kept for one release as a re-export; import
from ``lrm_interp.evaluation.output_stats`` instead."""

from __future__ import annotations

import warnings

from lrm_interp.evaluation.output_stats import (
    BACKTRACKING_CUES,
    Collapse,
    SplitScore,
    backtracking_cues,
    detect_collapse,
    distinct_ngram_share,
    group_weights,
    periodic_suffix,
    short_long_split,
    word_count,
)

warnings.warn(
    "lrm_interp.evaluation.compute is deprecated; import from lrm_interp.evaluation.output_stats (same names)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "word_count",
    "backtracking_cues",
    "BACKTRACKING_CUES",
    "Collapse",
    "periodic_suffix",
    "distinct_ngram_share",
    "detect_collapse",
    "SplitScore",
    "group_weights",
    "short_long_split",
]
