"""Place annotation segments on the response they annotate.

The annotator copies text from the response but collapses line breaks, so matching is done
on whitespace-normalised text (every whitespace run → one space) with a map back to the
original character offsets. Placement, in three passes (each result reported):

1. **ordered**: every exact occurrence of every segment is a candidate (a segment with no
   exact occurrence contributes its fuzzy occurrences, see 2); the chosen placement is the
   monotone chain (each segment starts at or after the end of the previous one) that places
   the most segments, then prefers earlier segments, then earlier positions. When greedy
   "next occurrence after the cursor" can place every segment, this *is* greedy's answer, so
   a repeated sentence goes to the occurrence that follows its neighbours; unlike greedy,
   one segment matching far ahead cannot push all later ones out of order.
2. **fuzzy** (``placed fuzzy``): the annotator dropped or changed a few characters. Edit
   distance ≤ ``max_edit_ratio`` × length (Levenshtein, semi-global, our own numpy
   implementation) around q-gram anchor hits. A segment left out of the chain is also
   searched between its placed neighbours.
3. **out of order** (``placed out of order``): an exact (then fuzzy) occurrence anywhere in the
   response, accepted only if it overlaps no placed segment.

Anything else is ``not placed`` with its reason. There is no difflib longest-block matching
(its ``autojunk`` heuristic breaks segments ≥ 200 characters). Spans live in the response
only: the prompt is never searched; ``</think>`` is ordinary text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import cast

import numpy as np

from lrm_interp.checks import checked_arguments
from lrm_interp.data.markup import Segment
from lrm_interp.data.traces import BehaviorSpan

_WS = re.compile(r"\s+")
MIN_FUZZY_CHARS = 16  # shorter segments are matched exactly only
_MAX_OCCURRENCES = 5000  # exact candidates per segment considered by the chain
_ANCHOR_CAP = 64  # an anchor piece occurring more often than this is not informative


@dataclass(frozen=True)
class SegmentReport:
    """Where one segment went.

    ``status``: ``placed`` / ``placed fuzzy`` / ``placed out of order`` / ``not placed``.
    ``reason`` explains every status but plain ``placed`` (``unknown label 'x'``, ``label 'x'
    not selected``, ``empty segment text``, ``text not found in the response``, ``every occurrence
    overlaps a placed segment``, or the fuzzy edit distance). ``start``/``end`` are response
    char offsets whenever the text was located (also for an unknown label, which is still
    ``not placed``). ``label`` is canonical (``None`` if unknown), ``raw_label`` as written.
    """

    source: str
    index: int
    raw_label: str
    label: str | None
    status: str
    reason: str | None
    start: int | None
    end: int | None
    text: str
    repairs: tuple[str, ...] = ()
    line: int = 0
    edit_distance: int | None = None

    @property
    def placed(self) -> bool:
        return self.status.startswith("placed")

    def to_dict(self) -> dict:
        return asdict(self)


def normalise(text: str) -> tuple[str, list[int]]:
    """Collapse whitespace runs to one space.

    Returns the normalised text and, for each of its characters, the index in ``text`` where
    it comes from (a collapsed run maps to the run's first character).
    """
    out: list[str] = []
    idx: list[int] = []
    i = 0
    for m in _WS.finditer(text):
        out.append(text[i : m.start()])
        idx.extend(range(i, m.start()))
        out.append(" ")
        idx.append(m.start())
        i = m.end()
    out.append(text[i:])
    idx.extend(range(i, len(text)))
    return "".join(out), idx


def char_codes(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)


def semiglobal_row(p: np.ndarray, t: np.ndarray, max_dist: int) -> np.ndarray | None:
    """Last row of the semi-global edit-distance table of pattern ``p`` against text ``t``:
    ``row[j]`` = min edits turning ``p`` into some substring of ``t`` ending at ``j``.
    ``None`` as soon as every entry must exceed ``max_dist``.

    Row recurrence D[i, j] = min(D[i-1, j-1] + (p[i] != t[j]), D[i-1, j] + 1, D[i, j-1] + 1)
    with D[0, :] = 0 (free start); the left term is a running minimum of D - j, plus j.
    """
    n = len(t)
    ar = np.arange(n + 1, dtype=np.int64)
    prev = np.zeros(n + 1, dtype=np.int64)
    cur = np.empty(n + 1, dtype=np.int64)
    for i, c in enumerate(p, 1):
        cur[0] = i
        np.minimum(prev[:-1] + (t != c), prev[1:] + 1, out=cur[1:])
        prev = np.minimum.accumulate(cur - ar) + ar
        if prev.min() > max_dist:  # row minima never decrease
            return None
    return prev


def _pick(row: np.ndarray, js: np.ndarray, t: np.ndarray, last: int) -> int:
    """Among end positions ``js`` (tied or near-tied), the best: lowest distance, then one
    whose last char equals the pattern's last char, then the first."""
    d = row[js]
    tied = js[d == d.min()]
    same = [j for j in tied if j > 0 and t[j - 1] == last]
    return int(same[0] if same else tied[0])


def _occurrences(codes: np.ndarray, ncodes: np.ndarray, lo: int, hi: int, k: int) -> list[tuple[int, int, int]]:
    """All approximate occurrences ``(start, end, dist)`` (dist ≤ k) inside ``[lo, hi)``,
    one per run of qualifying end positions."""
    t = codes[lo:hi]
    row = semiglobal_row(ncodes, t, k)
    if row is None:
        return []
    ends = np.flatnonzero(row <= k)
    if len(ends) == 0:
        return []
    runs = np.split(ends, np.flatnonzero(np.diff(ends) > 1) + 1)
    out = []
    m = len(ncodes)
    for run in runs:
        e = _pick(row, run, t, ncodes[-1])
        a0 = max(0, e - m - k)
        seg = t[a0:e][::-1]
        rrow = semiglobal_row(ncodes[::-1], seg, k)
        if rrow is None:
            continue
        rj = _pick(rrow, np.flatnonzero(rrow == rrow.min()), seg, ncodes[0])
        out.append((lo + e - rj, lo + e, int(row[e])))
    return out


def _anchor_windows(
    hay: str, needle: str, lo: int, hi: int, k: int, min_votes: int, max_windows: int
) -> list[tuple[int, int]]:
    """Regions of ``hay[lo:hi]`` worth aligning ``needle`` against: cut the needle into up to
    ``k+1`` disjoint pieces (one survives any ``k`` edits), find each piece exactly, group
    the implied start positions, keep groups hit by ≥ ``min_votes`` pieces (most votes first)."""
    m = len(needle)
    npieces = max(1, min(k + 1, m // 8))
    plen = m // npieces
    implied: list[tuple[int, int]] = []
    for pid in range(npieces):
        off = pid * plen
        piece = needle[off : off + plen]
        hits: list[int] = []
        p = hay.find(piece, lo, hi)
        while p >= 0 and len(hits) <= _ANCHOR_CAP:
            hits.append(p - off)
            p = hay.find(piece, p + 1, hi)
        if len(hits) <= _ANCHOR_CAP:  # a piece found everywhere says nothing
            implied.extend((h, pid) for h in hits)
    implied.sort()
    groups: list[list] = []  # [first, last, pieces]
    for st, pid in implied:
        if groups and st - groups[-1][0] <= 2 * k:
            groups[-1][1] = st
            groups[-1][2].add(pid)
        else:
            groups.append([st, st, {pid}])
    groups = [g for g in groups if len(g[2]) >= min_votes]
    groups.sort(key=lambda g: (-len(g[2]), g[0]))
    wins = sorted((max(lo, g[0] - k), min(hi, g[1] + m + k)) for g in groups[:max_windows])
    merged: list[tuple[int, int]] = []
    for a, b in wins:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def fuzzy_occurrences(
    hay: str,
    needle: str,
    lo: int = 0,
    hi: int | None = None,
    *,
    max_edit_ratio: float = 0.1,
    hay_codes: np.ndarray | None = None,
    min_votes: int = 1,
    max_windows: int = 8,
) -> list[tuple[int, int, int]]:
    """Approximate occurrences of ``needle`` in ``hay[lo:hi]``: ``[(start, end, dist)]`` by start.

    Distance ≤ ``k = max(1, int(max_edit_ratio·len(needle)))`` (Levenshtein on characters).
    Needles shorter than :data:`MIN_FUZZY_CHARS` never match. A window up to four needle
    lengths is aligned whole; a larger one only around q-gram anchor hits
    (:func:`_anchor_windows`). Starts/ends never fall on a space.
    """
    hi = len(hay) if hi is None else min(hi, len(hay))
    m = len(needle)
    if m < MIN_FUZZY_CHARS or hi - lo <= 0:
        return []
    k = max(1, int(max_edit_ratio * m))
    codes = char_codes(hay) if hay_codes is None else hay_codes
    ncodes = char_codes(needle)
    if hi - lo <= 4 * (m + 2 * k):
        windows = [(lo, hi)]
    else:
        windows = _anchor_windows(hay, needle, lo, hi, k, min_votes, max_windows)
    found: dict[tuple[int, int], int] = {}
    for a, b in windows:
        for s, e, d in _occurrences(codes, ncodes, a, b, k):
            while s < e and hay[s] == " ":
                s += 1
            while e > s and hay[e - 1] == " ":
                e -= 1
            if e > s:
                found[(s, e)] = min(d, found.get((s, e), d))
    return sorted((s, e, d) for (s, e), d in found.items())


def fuzzy_find(
    hay: str,
    needle: str,
    lo: int = 0,
    hi: int | None = None,
    *,
    max_edit_ratio: float = 0.1,
    hay_codes: np.ndarray | None = None,
) -> tuple[int, int, int] | None:
    """Best approximate occurrence ``(start, end, dist)`` of ``needle`` in ``hay[lo:hi]``
    (lowest distance, then earliest), or ``None``; see :func:`fuzzy_occurrences`."""
    occ = fuzzy_occurrences(hay, needle, lo, hi, max_edit_ratio=max_edit_ratio, hay_codes=hay_codes)
    return min(occ, key=lambda o: (o[2], o[0])) if occ else None


def greedy_chain(cands: list[list[tuple[int, int]]]) -> list[tuple[int, int] | None] | None:
    """The chain of "the first occurrence at or after the previous one's end", or ``None`` when it
    is not provably :func:`best_chain`'s answer.

    It is whenever it places every segment that has an occurrence and each segment's
    occurrences, sorted by start, also have non-decreasing ends (always true of exact matches of
    one text): by induction, each greedy pick then has the smallest start and end of any chain
    placing all earlier segments, so it maximises the count, the lexicographic term and Σ starts
    at once. Linear in the number of occurrences (plus a sort per segment).
    """
    out: list[tuple[int, int] | None] = []
    cursor = 0
    for occ in cands:
        if not occ:
            out.append(None)
            continue
        occ = sorted(occ)
        if any(occ[k][1] > occ[k + 1][1] for k in range(len(occ) - 1)):
            return None
        k = bisect.bisect_left(occ, (cursor, -1))
        if k == len(occ):
            return None
        out.append(occ[k])
        cursor = occ[k][1]
    return out


def best_chain(cands: list[list[tuple[int, int]]], length: int) -> list[tuple[int, int] | None]:
    """Monotone chain over candidate occurrences: ``cands[i]`` = ``[(a, b), ...]`` of segment i.

    Chooses at most one occurrence per segment, each starting at or after the previous chosen
    one's end, maximising (1) the number placed, then (2) placing earlier segments (greedy's
    preference), then (3) the earliest positions (Σ starts). For segments that greedy "next
    occurrence after the cursor" can place all, this is exactly greedy's answer. Encoded as one
    integer score (Python big ints); a max-Fenwick tree over end positions gives the best chain
    ending at or before a start. The big-int scores make this quadratic in the number of
    segments, so :func:`greedy_chain` answers first whenever it provably gives the same chain
    (the common case: real annotation files and long repetitive traces alike).
    """
    fast = greedy_chain(cands)
    if fast is not None:
        return fast
    return best_chain_dp(cands, length)


def best_chain_dp(cands: list[list[tuple[int, int]]], length: int) -> list[tuple[int, int] | None]:
    """:func:`best_chain` by the Fenwick dynamic programme alone (no greedy shortcut)."""
    n = len(cands)
    w_pos = 1
    w_lex = n * (length + 1) + 1  # > any Σ starts
    w_cnt = w_lex * (2**n)  # > any lexicographic term
    size = length + 2
    tree: list[tuple[int, int] | None] = [None] * (size + 1)  # (score, candidate id)

    def update(pos: int, key: int, cid: int) -> None:
        i = pos + 1
        while i <= size:
            node = tree[i]
            if node is None or key > node[0]:
                tree[i] = (key, cid)
            i += i & -i

    def query(pos: int) -> tuple[int, int]:
        i, best = pos + 1, (0, -1)  # the empty chain
        while i > 0:
            node = tree[i]
            if node is not None and node[0] > best[0]:
                best = node
            i -= i & -i
        return best

    info: list[tuple[int, int, int, int]] = []  # (segment, a, b, predecessor)
    score: list[int] = []
    for si, occ in enumerate(cands):
        gain = w_cnt + w_lex * (2 ** (n - 1 - si))
        new = []
        for a, b in occ:
            key, pred = query(a)
            sc = key + gain - w_pos * a
            new.append((len(info), sc, b))
            info.append((si, a, b, pred))
            score.append(sc)
        for cid, sc, b in new:  # after all queries: one occurrence per segment
            update(b, sc, cid)
    out: list[tuple[int, int] | None] = [None] * n
    if not info:
        return out
    cid = max(range(len(info)), key=lambda c: score[c])
    while cid >= 0:
        si, a, b, pred = info[cid]
        out[si] = (a, b)
        cid = pred
    return out


def _overlaps(a: int, b: int, placed: list[tuple[int, int]]) -> bool:
    """Whether ``[a, b)`` overlaps an interval of ``placed`` (sorted, pairwise disjoint)."""
    k = bisect.bisect_left(placed, (b, b))  # intervals starting at or after b cannot overlap
    return k > 0 and placed[k - 1][1] > a and placed[k - 1][0] < b


@checked_arguments
def align_segments(
    response: str,
    segments: Sequence[Segment],
    *,
    source: str = "",
    keep_unknown: bool = False,
    labels: Collection[str] | None = None,
    max_edit_ratio: float = 0.1,
) -> tuple[list[BehaviorSpan], list[SegmentReport]]:
    """Place ``segments`` on ``response``.

    Args:
        response: the model's output (never the prompt).
        segments: from :func:`lrm_interp.data.markup.parse_markup`, in annotation order.
        source: a name for the reports.
        keep_unknown: also emit spans for unknown labels (under the raw label, lower-cased).
        labels: if given, only these canonical behaviours become spans; others are reported
            ``not placed`` (``label 'x' not selected``) but still anchor the order.
        max_edit_ratio: fuzzy tolerance, edit distance ≤ this × segment length.

    Returns:
        ``(spans, reports)``: behaviour spans sorted by start (char offsets into
        ``response``) and one :class:`SegmentReport` per segment, in segment order.
    """
    norm, idx = normalise(response)
    codes = char_codes(norm)
    targets = [_WS.sub(" ", s.text).strip() for s in segments]

    # fast path: every segment's exact text found in order ("the next occurrence after the
    # previous segment"): that is the best chain (greedy_chain's argument), found in one sweep
    # without listing every occurrence of a repeated sentence ("Wait." x 3,000)
    in_order: list[tuple[int, int] | None] = []
    all_in_order = True
    cursor = 0
    for t in targets:
        p = norm.find(t, cursor) if t else -1
        if t and p < 0:
            all_in_order = False
            break
        in_order.append((p, p + len(t)) if t else None)
        if t:
            cursor = p + len(t)
    if all_in_order:
        return _reports(
            segments,
            targets,
            in_order,
            [0 if q is not None else None for q in in_order],
            ["placed" if q is not None else None for q in in_order],
            [False] * len(targets),
            idx,
            source,
            labels,
            keep_unknown,
        )

    # pass 1: exact occurrences, best monotone chain
    cands: list[list[tuple[int, int]]] = []
    for t in targets:
        occ: list[tuple[int, int]] = []
        p = norm.find(t) if t else -1
        while p >= 0 and len(occ) < _MAX_OCCURRENCES:
            occ.append((p, p + len(t)))
            p = norm.find(t, p + 1)
        cands.append(occ)
    # segments with no exact occurrence enter the chain with their fuzzy occurrences
    fuzzy_d: list[dict[tuple[int, int], int]] = [{} for _ in targets]
    chain_cands = list(cands)
    for i, t in enumerate(targets):
        if t and not cands[i]:
            focc = fuzzy_occurrences(
                norm, t, max_edit_ratio=max_edit_ratio, hay_codes=codes, min_votes=2, max_windows=16
            )
            fuzzy_d[i] = {(s, e): d for s, e, d in focc}
            chain_cands[i] = [(s, e) for s, e, _ in focc]
    pos = best_chain(chain_cands, len(norm))
    dist: list[int | None] = [None if p is None else fuzzy_d[i].get(p, 0) for i, p in enumerate(pos)]
    status: list[str | None] = [
        None if p is None else ("placed" if dist[i] == 0 else "placed fuzzy") for i, p in enumerate(pos)
    ]

    # pass 2: fuzzy between placed neighbours (lo: running max of the ends placed before i;
    # hi: the nearest chain start after i, from pass 1 -- later segments are not placed yet)
    next_start = [len(norm)] * (len(pos) + 1)
    for j in range(len(pos) - 1, -1, -1):
        q = pos[j]
        next_start[j] = min(next_start[j + 1], q[0]) if q is not None else next_start[j + 1]
    lo = 0
    for i, t in enumerate(targets):
        q = pos[i]
        if q is not None or not t:
            if q is not None:
                lo = max(lo, q[1])
            continue
        hi = next_start[i + 1]
        r = fuzzy_find(norm, t, lo, hi, max_edit_ratio=max_edit_ratio, hay_codes=codes)
        if r is not None:
            pos[i], dist[i] = (r[0], r[1]), r[2]
            status[i] = "placed" if r[2] == 0 else "placed fuzzy"
            lo = max(lo, r[1])

    # pass 3: anywhere, if it overlaps nothing placed
    placed = sorted(p for p in pos if p is not None)
    overlapped = [False] * len(targets)
    for i, t in enumerate(targets):
        if pos[i] is not None or not t:
            continue
        for a, b in cands[i]:
            if not _overlaps(a, b, placed):
                pos[i], dist[i], status[i] = (a, b), 0, "placed out of order"
                break
        else:
            overlapped[i] = bool(cands[i])
            r = fuzzy_find(norm, t, max_edit_ratio=max_edit_ratio, hay_codes=codes)
            if r is not None:
                if _overlaps(r[0], r[1], placed):
                    overlapped[i] = True
                else:
                    pos[i], dist[i], status[i] = (r[0], r[1]), r[2], "placed out of order"
        q = pos[i]
        if q is not None:
            bisect.insort(placed, q)

    return _reports(segments, targets, pos, dist, status, overlapped, idx, source, labels, keep_unknown)


def _reports(
    segments: Sequence[Segment],
    targets: list[str],
    pos: list[tuple[int, int] | None],
    dist: list[int | None],
    status: list[str | None],
    overlapped: list[bool],
    idx: list[int],
    source: str,
    labels: Collection[str] | None,
    keep_unknown: bool,
) -> tuple[list[BehaviorSpan], list[SegmentReport]]:
    """Spans and one report per segment from the placements (normalised offsets ``pos``)."""
    spans: list[BehaviorSpan] = []
    reports: list[SegmentReport] = []
    for i, seg in enumerate(segments):
        a: int | None = None
        b: int | None = None
        q = pos[i]
        if q is not None:
            na, nb = q
            a, b = idx[na], idx[nb - 1] + 1
        st, why = status[i], None
        if st == "placed fuzzy":
            why = f"edit distance {dist[i]} over {len(targets[i])} normalised chars"
        elif st == "placed out of order":
            why = (
                "exact text occurs only outside the order of its neighbours"
                if dist[i] == 0
                else f"fuzzy (edit distance {dist[i]}), outside the order of its neighbours"
            )
        if not targets[i]:
            st, why = "not placed", "empty segment text"
        elif a is None or b is None:  # set together
            st = "not placed"
            why = "every occurrence overlaps a placed segment" if overlapped[i] else "text not found in the response"
        elif seg.label is None:
            st, why = "not placed", f"unknown label {seg.raw_label!r} (text located at [{a}, {b}))"
            if keep_unknown:
                spans.append(BehaviorSpan(seg.raw_label.strip().lower(), a, b))
        elif labels is not None and seg.label not in labels:
            st, why = "not placed", f"label {seg.label!r} not selected"
        else:
            spans.append(BehaviorSpan(seg.label, a, b))
        if st == "not placed" and seg.label is None and a is None and targets[i]:
            why = f"unknown label {seg.raw_label!r}; {why}"
        reports.append(
            SegmentReport(
                source,
                seg.index,
                seg.raw_label,
                seg.label,
                cast(str, st),  # a located segment always has a status; every other one is "not placed"
                why,
                a,
                b,
                seg.text,
                seg.repairs,
                seg.line,
                dist[i],
            )
        )
    spans.sort(key=lambda s: (s.start, s.end))
    return spans, reports
