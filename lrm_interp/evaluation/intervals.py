"""Confidence intervals for accuracies (one formula: Wilson's score interval)."""

from __future__ import annotations

import math


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


__all__ = ["wilson_interval"]
