"""Paired comparison of two systems graded on the same items: the exact sign test (McNemar's
exact test when the differences are 0/1 outcomes) and a paired bootstrap interval of the
accuracy difference.

Two quantized rows scored on the same 150 problems differ on far fewer problems than 150: most
are solved (or missed) by both. Comparing their two Wilson intervals ignores that pairing and
needs several times more problems to separate the same gap; the paired test uses only the
problems on which they disagree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from lrm_interp.evaluation.intervals import bootstrap_interval


def sign_test(diffs: Sequence[float]) -> dict[str, float]:
    """Two-sided exact sign test of ``diffs`` against 0 (zeros left out): ``positive``,
    ``negative``, ``zero`` counts and ``p`` = P(a split at least this uneven | fair coin).
    On 0/1 outcome differences this is McNemar's exact test."""
    x = [float(d) for d in diffs]
    pos, neg = sum(d > 0 for d in x), sum(d < 0 for d in x)
    n, k = pos + neg, min(pos, neg)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"positive": pos, "negative": neg, "zero": len(x) - n, "p": p}


@dataclass(frozen=True)
class PairedComparison:
    """``a`` vs ``b`` on the same ``n`` items: ``diff`` = acc(a) − acc(b) in [−1, 1], ``ci`` its
    95 % paired percentile bootstrap interval, ``a_only`` / ``b_only`` the items only one got
    right, ``p`` the exact McNemar p-value (two-sided)."""

    a: str
    b: str
    n: int
    diff: float
    ci: tuple[float, float]
    a_only: int
    b_only: int
    p: float

    @property
    def beyond_interval(self) -> bool:
        """The paired 95 % interval excludes 0 and the exact test agrees (p < 0.05)."""
        return (self.ci[0] > 0 or self.ci[1] < 0) and self.p < 0.05


def compare_outcomes(
    a: Sequence[bool | int], b: Sequence[bool | int], *, names: tuple[str, str] = ("a", "b"), seed: int = 0
) -> PairedComparison:
    """Paired comparison of per-item outcomes ``a`` and ``b`` (``[n]`` each, 0/1, item ``i`` the
    same problem in both); ``ValueError`` if their lengths differ or are 0."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"compare_outcomes: need two outcome lists of one length >= 1, got {len(a)} and {len(b)}")
    bad = [v for v in (*a, *b) if v not in (0, 1)]
    if bad:
        raise ValueError(f"compare_outcomes: outcomes must be 0/1 (or bools), got {bad[0]!r}")
    d = [int(x) - int(y) for x, y in zip(a, b)]
    s = sign_test(d)
    lo, hi = bootstrap_interval(d, resamples=2000, seed=seed)
    return PairedComparison(
        names[0], names[1], len(d), sum(d) / len(d), (lo, hi), int(s["positive"]), int(s["negative"]), s["p"]
    )


__all__ = ["sign_test", "PairedComparison", "compare_outcomes"]
