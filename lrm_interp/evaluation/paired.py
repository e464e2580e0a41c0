"""Paired comparison of two systems graded on the same items: the exact sign test (McNemar's
exact test when the differences are 0/1 outcomes) and a paired bootstrap interval of the
accuracy difference.

Two quantized rows scored on the same 150 problems differ on far fewer problems than 150: most
are solved (or missed) by both. Comparing their two Wilson intervals ignores that pairing and
needs several times more problems to separate the same gap; the paired test uses only the
problems on which they disagree."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lrm_interp.checks import check_seed
from lrm_interp.evaluation.intervals import bootstrap_interval, real_vector


def sign_test(diffs: Sequence[float]) -> dict[str, float]:
    """Two-sided exact sign test of ``diffs`` against 0 (zeros left out): ``positive``,
    ``negative``, ``zero`` counts and ``p`` = P(a split at least this uneven | fair coin).
    On 0/1 outcome differences this is McNemar's exact test.

    ``diffs``: a sequence or 1-D tensor of finite numbers (may be empty: ``p = 1``); a string, a
    NaN (it counted as a tie) or a non-number is refused, naming the first bad entry
    (:func:`~lrm_interp.evaluation.intervals.real_vector`)."""
    x = real_vector("diffs", diffs, where="sign_test").tolist()
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


def _typed(v: object) -> str:
    """How a ``TypeError`` shows the value it refused: its repr (cut at 60 characters) and type."""
    r = repr(v)
    return f"{r if len(r) <= 60 else r[:57] + '...'} ({type(v).__name__})"


def _is_outcome(v: object) -> bool:
    """``v`` is 0 or 1 (a bool, an int, 1.0, a NumPy or 0-d tensor scalar); never raises."""
    try:
        return bool(v in (0, 1))
    except (TypeError, ValueError, RuntimeError):  # an array of several values: no outcome
        return False


def compare_outcomes(
    a: Sequence[bool | int], b: Sequence[bool | int], *, names: tuple[str, str] = ("a", "b"), seed: int = 0
) -> PairedComparison:
    """Paired comparison of per-item outcomes ``a`` and ``b`` (``[n]`` each, 0/1, item ``i`` the
    same problem in both); ``ValueError`` if their lengths differ or are 0, or an outcome is not
    0/1 (named as ``a[i]`` / ``b[i]``); ``TypeError`` if ``a`` or ``b`` is no sequence (a string)
    or ``names`` is not two strings; ``seed``: an integer in ``[0, 2**63 - 1]``."""
    where = "compare_outcomes"
    for label, x in (("a", a), ("b", b)):
        if isinstance(x, (str, bytes, bytearray, Mapping)) or not isinstance(x, Iterable) or not hasattr(x, "__len__"):
            raise TypeError(f"{where}: {label} must be a sequence of 0/1 outcomes, got {_typed(x)}")
    if not isinstance(names, (tuple, list)) or len(names) != 2 or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{where}: names must be two strings (a, b), got {_typed(names)}")
    if not all(n.strip() for n in names):
        raise ValueError(f"{where}: names must be two non-empty strings, got {names!r}")
    try:
        seed = check_seed("seed", seed)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if len(a) != len(b) or not len(a):
        raise ValueError(f"{where}: need two outcome lists of one length >= 1, got {len(a)} and {len(b)}")
    for label, x in (("a", a), ("b", b)):
        for i, v in enumerate(x):
            if not _is_outcome(v):
                raise ValueError(f"{where}: outcomes must be 0/1 (or bools), got {label}[{i}] = {v!r}")
    d = [int(x) - int(y) for x, y in zip(a, b)]
    s = sign_test(d)
    lo, hi = bootstrap_interval(d, resamples=2000, seed=seed)
    return PairedComparison(
        names[0], names[1], len(d), sum(d) / len(d), (lo, hi), int(s["positive"]), int(s["negative"]), s["p"]
    )


__all__ = ["sign_test", "PairedComparison", "compare_outcomes"]
