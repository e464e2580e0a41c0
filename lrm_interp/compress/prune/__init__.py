"""Pruning of linear sites."""

from lrm_interp.compress.prune.magnitude import prune_magnitude_

__all__ = ["prune_magnitude_"]
