"""Confidence intervals: Wilson's score interval for accuracies, a percentile bootstrap for
weighted means (KL per token over traces).

Every argument is checked before any work (issue 22): counts are integers (not bools), ``z`` and
the level are finite and in range, values and weights are one-dimensional and hold finite real
numbers only (the first bad entry is named by its index), weights are non-negative with a positive
sum. A meaningless interval (a lower bound above the upper, ``(nan, nan)``, ``(0, 0)`` from no
weight at all) is never returned.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from lrm_interp.checks import check_float, check_fraction, check_int, check_seed

if TYPE_CHECKING:
    import torch


def _typed(v: object) -> str:
    """How a ``TypeError`` shows the value it refused: its repr (cut at 60 characters) and type."""
    r = repr(v)
    return f"{r if len(r) <= 60 else r[:57] + '...'} ({type(v).__name__})"


def wilson_interval(correct: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a binomial proportion ``correct / n``
    (default ``z = 1.96``: 95 %). Unlike the normal approximation it stays inside [0, 1] and
    is not degenerate at 0 % or 100 %.

    ``n``: an integer >= 1; ``correct``: an integer in ``[0, n]`` (bools are no counts); ``z``: a
    finite number > 0. Anything else raises ``ValueError`` naming the argument.
    """
    try:
        n = check_int("n", n, min=1)
        correct = check_int("correct", correct, min=0, max=n)
        z = check_float("z", z, min=0.0, min_open=True)
    except ValueError as e:
        raise ValueError(f"wilson_interval: {e}") from None
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def real_vector(name: str, values: object, *, where: str = "") -> torch.Tensor:
    """``values`` as a one-dimensional ``float64`` tensor whose entries are all finite.

    Accepted: a 1-D tensor or NumPy array of integers or floats, or any other iterable (list,
    tuple, pandas Series) of real numbers. ``TypeError`` for a string, a mapping or a
    non-iterable (``"… must be a sequence or 1-D tensor of numbers, got '12' (str)"``);
    ``ValueError`` for another shape, a bool or complex dtype, or an entry that is no finite real
    number (a bool, a string, NaN, ±inf), naming the first such entry as ``name[i]``. Messages
    start with ``where: `` when given.
    """
    import numpy as np
    import torch

    loc = f"{where}: " if where else ""
    what = "a sequence or 1-D tensor of numbers"
    t: torch.Tensor | None = None
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        values = torch.from_numpy(values)
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"{loc}{name} must hold real numbers, got a {values.dtype} tensor")
        if values.dim() != 1:
            raise ValueError(f"{loc}{name} must be {what}, got shape {tuple(values.shape)}")
        t = values.detach().to("cpu", torch.float64)
    else:
        if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
            raise TypeError(f"{loc}{name} must be {what}, got {_typed(values)}")
        if isinstance(values, np.ndarray) and values.ndim != 1:
            raise ValueError(f"{loc}{name} must be {what}, got shape {values.shape}")
        floats: list[float] = []
        for i, x in enumerate(values):
            if isinstance(x, torch.Tensor) and x.dim() == 0 and not (x.dtype == torch.bool or x.is_complex()):
                x = x.item()
            if isinstance(x, bool) or not isinstance(x, numbers.Real):
                raise ValueError(f"{loc}{name}[{i}] must be a finite number, got {_typed(x)}")
            try:
                floats.append(float(x))
            except OverflowError:  # an int beyond float64
                raise ValueError(f"{loc}{name}[{i}] must be a finite number, got {x!r}") from None
        t = torch.tensor(floats, dtype=torch.float64)
    bad = (~torch.isfinite(t)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{loc}{name}[{i}] is {float(t[i])}: every entry must be a finite number "
            f"({bad.numel()} of {t.numel()} {'is' if bad.numel() == 1 else 'are'} not); drop or fix those items"
        )
    return t


def bootstrap_interval(
    values: Sequence[float] | torch.Tensor,
    weights: Sequence[float] | torch.Tensor | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the weighted mean ``Σ w_i v_i / Σ w_i`` over items ``i``.

    ``values``/``weights``: ``[n]`` (e.g. per-trace KL and its token count), ``n >= 1``, every
    entry a finite number (:func:`real_vector`); weights >= 0 with a positive sum (``None``: all
    1). The items are resampled with replacement ``resamples`` (>= 1) times (``torch.Generator``
    seeded by ``seed``, an integer in ``[0, 2**63 - 1]``); ``level`` in (0, 1). A resample that
    draws only zero-weight items has no mean and is left out of the percentiles (it used to count
    as a mean of 0). Bad arguments raise ``TypeError`` / ``ValueError`` naming them.
    """
    import torch  # here: the accuracy interval above needs no torch

    where = "bootstrap_interval"
    v = real_vector("values", values, where=where)
    if v.numel() == 0:
        raise ValueError(f"{where}: values is empty: an interval needs at least one item")
    if weights is None:
        w = torch.ones_like(v)
    else:
        w = real_vector("weights", weights, where=where)
        if w.shape != v.shape:
            raise ValueError(
                f"{where}: values and weights must be two [n] sequences of one length, got "
                f"{v.numel()} values and {w.numel()} weights"
            )
        neg = (w < 0).nonzero().flatten()
        if neg.numel():
            i = int(neg[0])
            raise ValueError(f"{where}: weights[{i}] is {float(w[i])}: weights must be >= 0 (a count or a size)")
        total = float(w.sum())
        if total <= 0:
            raise ValueError(f"{where}: the weights are all 0: no item counts; give at least one a positive weight")
        if not math.isfinite(total):
            raise ValueError(f"{where}: the weights sum to {total} (beyond float64); scale them down")
    try:
        check_int("resamples", resamples, min=1)
        check_fraction("level", level, zero=False, one=False)
        seed = check_seed("seed", seed)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (resamples, v.numel()), generator=g)
    wsum = w[idx].sum(1)
    drawn = wsum > 0  # a resample of zero-weight items only has no mean
    if not bool(drawn.any()):
        raise ValueError(
            f"{where}: each of the {resamples} resamples drew only zero-weight items (no mean); raise resamples"
        )
    means = (v[idx] * w[idx]).sum(1)[drawn] / wsum[drawn]
    if not bool(torch.isfinite(means).all()):
        raise ValueError(f"{where}: values × weights overflow float64; scale the values or the weights down")
    a = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


__all__ = ["wilson_interval", "bootstrap_interval", "real_vector"]
