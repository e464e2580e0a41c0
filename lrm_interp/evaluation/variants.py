"""Compressed variants of a model for benchmarking: the compression specs of
:mod:`lrm_interp.compress.specs`, re-exported here for existing imports."""

from __future__ import annotations

from lrm_interp.compress.specs import METHODS, CompressionSpec, apply_compression, parse_compression

__all__ = ["CompressionSpec", "parse_compression", "apply_compression", "METHODS"]
