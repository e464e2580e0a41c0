"""Pruning of linear sites: magnitude, SparseGPT (unstructured and N:M), Wanda; the model-level
driver :func:`prune_model_` (the compression driver of :mod:`lrm_interp.compress.driver`)."""

from lrm_interp.compress.prune.apply import PRUNERS, PruneReport, prune_magnitude_, prune_model_
from lrm_interp.compress.prune.magnitude import magnitude_prune
from lrm_interp.compress.prune.sparsegpt import sparsegpt_prune
from lrm_interp.compress.prune.wanda import wanda_prune

__all__ = [
    "prune_magnitude_",
    "prune_model_",
    "PruneReport",
    "PRUNERS",
    "magnitude_prune",
    "sparsegpt_prune",
    "wanda_prune",
]
