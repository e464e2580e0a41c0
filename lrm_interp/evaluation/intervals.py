"""Confidence intervals: Wilson's score interval for accuracies, a percentile bootstrap for
weighted means (KL per token over traces)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lrm_interp.checks import check_fraction, check_int

if TYPE_CHECKING:
    import torch


def wilson_interval(correct: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion ``correct / n``
    (default ``z = 1.96``: 95 %). Unlike the normal approximation it stays inside [0, 1] and
    is not degenerate at 0 % or 100 %."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be positive, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: correct must be in [0, {n}], got {correct}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: Sequence[float] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the weighted mean ``Σ w_i v_i / Σ w_i`` over items ``i``.

    ``values``/``weights``: ``[n]`` (e.g. per-trace KL and its token count); the items are
    resampled with replacement ``resamples`` times (``torch.Generator`` seeded by ``seed``).
    """
    import torch  # here: the accuracy interval above needs no torch

    v = torch.as_tensor(values, dtype=torch.float64)
    w = torch.ones_like(v) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if v.dim() != 1 or v.numel() == 0 or w.shape != v.shape:
        raise ValueError(
            f"bootstrap_interval: values and weights must be two [n] sequences with n >= 1, got "
            f"{tuple(v.shape)} and {tuple(w.shape)}"
        )
    check_int("resamples", resamples, min=1)
    check_fraction("level", level, zero=False, one=False)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, v.numel(), (resamples, v.numel()), generator=g)
    means = (v[idx] * w[idx]).sum(1) / w[idx].sum(1).clamp_min(1e-300)
    a = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


__all__ = ["wilson_interval", "bootstrap_interval"]
