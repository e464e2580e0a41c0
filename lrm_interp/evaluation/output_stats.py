"""Statistics of generated outputs (test-time compute and collapse): output lengths, the paper's
short-vs-long split, repetition collapse and backtracking cues (method.md §5, §8). Formerly
``evaluation/compute.py`` (that path still imports, deprecated).

- :func:`word_count`: words as the paper counts tokens of an output (whitespace-separated).
- :func:`short_long_split`: per model × task, the score of the shortest and of the longest
  ``fraction`` of outputs and the ratio of their mean lengths (long / short). The groups hold
  exactly ``fraction · n`` outputs' worth of weight: outputs strictly inside a group count
  fully; outputs tied in length at a group's boundary share the remaining weight equally, so
  the result never depends on the order of tied outputs.
- :func:`detect_collapse`: an output *collapsed* when it ran to the length limit and its end is
  one chunk repeated — exactly (a periodic suffix of ≥ 3 periods and ≥ 10 % of the text) or
  approximately (at most half of the character 8-grams of its last third are distinct, up to
  the end).
- :func:`backtracking_cues`: non-overlapping matches of R1-style backtracking cues.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lrm_interp.checks import checked_arguments

#: R1-style backtracking cues (method.md §8); matched case-insensitively as one alternation, so
#: "But wait" counts once.
BACKTRACKING_CUES: tuple[str, ...] = (
    r"\bbut wait\b",
    r"\bwait\b",
    r"\bhmm,? no\b",
    r"\bactually,",
    r"\balternatively,",
    r"\blet me re-?(?:examine|check|consider|think|evaluate)\b",
    r"\bgo back\b",
    r"\bthat doesn'?t (?:seem|look) right\b",
    r"\bi made a mistake\b",
    r"\bon second thought\b",
)
_CUES = re.compile("|".join(BACKTRACKING_CUES), re.I)


def word_count(text: str) -> int:
    """Whitespace-separated words (the paper counts an output's words as its tokens)."""
    return len(text.split())


def backtracking_cues(text: str) -> int:
    """Number of backtracking cue matches (:data:`BACKTRACKING_CUES`) in ``text``."""
    return sum(1 for _ in _CUES.finditer(text))


# ----------------------------------------------------------------------------- collapse
@checked_arguments
@dataclass(frozen=True)
class Collapse:
    """Repetition at the end of an output. ``period`` / ``repeats`` / ``span`` / ``chunk``: the
    longest exactly periodic suffix (0 when none spans two periods); ``distinct``: the share of
    distinct character 8-grams in the tail; ``repetitive``: either test passed (module docs);
    ``collapsed``: repetitive *and* the length limit was hit (``hit_limit=None``, unknown:
    repetition alone)."""

    collapsed: bool
    repetitive: bool = False
    period: int = 0
    repeats: float = 0.0
    span: int = 0
    chunk: str = ""
    distinct: float = 1.0


def periodic_suffix(text: str, *, max_period: int | None = None) -> tuple[int, int]:
    """``(period p, span)`` of the longest suffix of ``text`` that repeats its last ``p``
    characters at least twice (``text[i] == text[i + p]`` over the suffix, ``span >= 2p``),
    ties to the smaller period; ``(0, 0)`` when there is none."""
    a = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    n = len(a)
    best_p, best_span = 0, 0
    for p in range(1, min(max_period or n // 2, n // 2) + 1):
        eq = a[p:] == a[:-p]  # eq[i]: a[i] == a[i + p]
        bad = np.flatnonzero(~eq)
        run = len(eq) - (int(bad[-1]) + 1) if len(bad) else len(eq)  # trailing run of matches
        if run >= p and run + p > best_span:
            best_p, best_span = p, int(run + p)
    return best_p, best_span


def distinct_ngram_share(text: str, n: int = 8) -> float:
    """Distinct character ``n``-grams / all ``n``-grams of ``text`` (1.0 for texts shorter than ``n``)."""
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def _end_repeats(window: str, end: int = 40, n: int = 8, share: float = 0.8) -> bool:
    """Whether the repetition reaches the end: ≥ ``share`` of the last ``end`` characters' ``n``-grams
    occur earlier in ``window``."""
    head, last = window[:-end], window[-end:]
    grams = [last[i : i + n] for i in range(len(last) - n + 1)]
    return bool(grams) and sum(g in head for g in grams) >= share * len(grams)


@checked_arguments
def detect_collapse(
    text: str,
    hit_limit: bool | None,
    *,
    min_repeats: int = 3,
    min_fraction: float = 0.1,
    min_chars: int = 50,
    max_period: int = 400,
    tail_fraction: float = 1 / 3,
    min_tail: int = 120,
    max_distinct: float = 0.5,
) -> Collapse:
    """:class:`Collapse` of one output. Whitespace runs become single spaces; the end is
    *repetitive* when (exact) its longest periodic suffix (period ≤ ``max_period``) spans
    ≥ ``min_repeats`` periods and ≥ ``max(min_fraction · length, min_chars)`` characters, or
    (approximate, for noisy loops) at most ``max_distinct`` of the character 8-grams of its last
    ``max(tail_fraction · length, min_tail)`` characters are distinct — on average the tail is two
    or more copies of the same material; natural text scores above 0.9 — and the last 40
    characters' 8-grams (80 % of them) occur earlier in that tail, i.e. the loop reaches the end."""
    t = " ".join(text.split())
    tail = t[-max(8 * max_period, 4000) :]
    p, span = periodic_suffix(tail, max_period=max_period)
    exact = p > 0 and span / p >= min_repeats and span >= max(min_fraction * len(t), min_chars)
    window = t[-max(int(tail_fraction * len(t)), min_tail) :]
    distinct = distinct_ngram_share(window)
    approx = len(window) >= min_tail and distinct <= max_distinct and _end_repeats(window)
    rep = bool(exact or approx)
    return Collapse(
        rep and hit_limit is not False, rep, p, span / p if p else 0.0, span, tail[-p:] if p else "", distinct
    )


# ----------------------------------------------------------------------------- short vs long
@dataclass(frozen=True)
class SplitScore:
    """Score of the shortest / longest ``fraction`` of outputs: weighted mean scores, weighted mean
    lengths, ``ratio`` = long mean length / short mean length, ``n`` outputs, ``k = fraction · n``."""

    fraction: float
    n: int
    k: float
    short_score: float
    long_score: float
    short_length: float
    long_length: float

    @property
    def ratio(self) -> float:
        return self.long_length / self.short_length if self.short_length > 0 else math.inf


def group_weights(lengths: Sequence[float] | np.ndarray, k: float) -> np.ndarray:
    """Weights ``[n]`` of the ``k`` shortest outputs (``0 <= k <= n``, fractional allowed): 1 below
    the boundary length, the remaining weight shared equally by the outputs tied at it."""
    x = np.asarray(lengths, dtype=float)
    n = len(x)
    if not 0 <= k <= n:
        raise ValueError(f"group size {k} outside [0, {n}]")
    w = np.zeros(n)
    if k == 0 or n == 0:
        return w
    xs = np.sort(x)
    boundary = xs[int(math.ceil(k)) - 1]
    below = x < boundary
    w[below] = 1.0
    tied = x == boundary
    w[tied] = (k - below.sum()) / tied.sum()
    return w


def short_long_split(lengths: Sequence[float], scores: Sequence[float], fraction: float = 0.3) -> SplitScore:
    """The paper's split (module docs): shortest vs longest ``fraction`` of the outputs."""
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
    x, s = np.asarray(lengths, dtype=float), np.asarray(scores, dtype=float)
    if len(x) != len(s):
        raise ValueError(f"{len(x)} lengths but {len(s)} scores")
    n = len(x)
    if n == 0:
        return SplitScore(fraction, 0, 0.0, math.nan, math.nan, math.nan, math.nan)
    k = fraction * n
    ws, wl = group_weights(x, k), group_weights(-x, k)
    mean = lambda w, v: round(float(w @ v / w.sum()), 12)  # noqa: E731 - rounded: 0.2 · 30 is not exact
    return SplitScore(fraction, n, k, mean(ws, s), mean(wl, s), mean(ws, x), mean(wl, x))


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
