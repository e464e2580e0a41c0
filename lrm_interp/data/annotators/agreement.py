"""Agreement between two annotations of the same traces, per behaviour label.

Character level (precision, recall, F1 over the characters each label covers) and span level
(one-to-one matches of same-label spans with IoU ≥ ``min_iou``). :func:`format_agreement`
prints the table ``lrm-interp annotate agree`` shows.
"""

from __future__ import annotations

from lrm_interp.data.traces import BEHAVIORS, TARGET_BEHAVIORS, BehaviorSpan, ReasoningDataset


def _iou(a: BehaviorSpan, b: BehaviorSpan) -> float:
    inter = max(0, min(a.end, b.end) - max(a.start, b.start))
    union = (a.end - a.start) + (b.end - b.start) - inter
    return inter / union if union else 0.0


def _match_spans(gold: list[BehaviorSpan], pred: list[BehaviorSpan], min_iou: float) -> int:
    """Number of one-to-one matches (greedy by IoU) with IoU >= ``min_iou``."""
    pairs = sorted(((_iou(g, p), i, j) for i, g in enumerate(gold) for j, p in enumerate(pred)), reverse=True)
    used_g, used_p, n = set(), set(), 0
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            n += 1
    return n


def merge_same_label(spans: list[BehaviorSpan]) -> list[BehaviorSpan]:
    """Spans of one label that share characters (one nested in another, or overlapping) as one span,
    their union; sorted by start. Touching spans (``[0, 5)``, ``[5, 9)``) stay two. Agreement counts
    the merged spans: a span inside another of the same label would otherwise count twice in the
    span-level figures (an unmatched gold or predicted span), though it labels no new character."""
    out: list[BehaviorSpan] = []
    for s in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and s.start < out[-1].end:
            if s.end > out[-1].end:
                out[-1] = BehaviorSpan(out[-1].behavior, out[-1].start, s.end)
        else:
            out.append(s)
    return out


def _covered(spans: list[BehaviorSpan]) -> list[tuple[int, int]]:
    """Union of the spans as sorted disjoint intervals."""
    out: list[list[int]] = []
    for s in sorted(spans, key=lambda s: s.start):
        if out and s.start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s.end)
        elif s.end > s.start:
            out.append([s.start, s.end])
    return [(a, b) for a, b in out]


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    i = j = n = 0
    while i < len(a) and j < len(b):
        n += max(0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return n


def _clip(spans: list[BehaviorSpan], region: list[tuple[int, int]]) -> list[BehaviorSpan]:
    """The parts of ``spans`` inside ``region`` (sorted disjoint intervals)."""
    import bisect

    starts = [a for a, _ in region]
    out = []
    for s in spans:
        k = max(bisect.bisect_right(starts, s.start) - 1, 0)
        while k < len(region) and region[k][0] < s.end:
            a, b = max(s.start, region[k][0]), min(s.end, region[k][1])
            if a < b:
                out.append(BehaviorSpan(s.behavior, a, b))
            k += 1
    return out


#: ``region`` values of :func:`annotation_agreement`.
REGIONS = ("all", "gold")


def annotation_agreement(
    gold: ReasoningDataset, predicted: ReasoningDataset, *, min_iou: float = 0.5, region: str = "all"
) -> dict[str, dict[str, float]]:
    """Per-label agreement of ``predicted`` spans with ``gold`` spans.

    ``region="all"`` scores every character of the responses. ``region="gold"`` scores only the
    characters the gold annotation labels at all (any label): real annotators leave text out
    (GPT-4o drops the tails of long traces -- in the seed paper's files it labels 3 % of the
    MuSiQue and 17 % of the Temporal Sequences thinking text), and unlabelled gold text is "not
    annotated", not "no behaviour"; predicted spans are clipped to that region (span counts and
    IoU matches use the clipped spans).

    Spans of one label that share characters (one nested in another, or overlapping) are merged
    into their union first (:func:`merge_same_label`): a character counts once per label, and a
    nested span is no extra span. Character level: ``precision``, ``recall``, ``f1`` over the
    characters each label covers. Span level: ``span_precision``/``span_recall`` = share of
    predicted/gold (merged) spans matched one-to-one to a span of the same label with IoU >=
    ``min_iou``. ``gold_spans``, ``pred_spans``: counts of the merged spans. Traces are matched by
    id; their responses must be identical; a gold trace without a prediction raises ``KeyError``,
    predicted traces whose id is not in ``gold`` are not scored (``lrm-interp annotate agree``
    counts them).
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    pred_by_id = {t.id: t for t in predicted}
    acc: dict[str, dict[str, int]] = {}
    for g in gold:
        p = pred_by_id.get(g.id)
        if p is None:
            raise KeyError(f"trace {g.id!r} missing from the predicted dataset")
        if p.response != g.response:
            raise ValueError(f"trace {g.id!r}: responses differ between gold and predicted")
        pspans = list(p.spans)
        if region == "gold":
            pspans = _clip(pspans, _covered(list(g.spans)))
        for label in {s.behavior for s in g.spans} | {s.behavior for s in pspans}:
            gs = merge_same_label(g.spans_of(label))  # nested / overlapping same-label spans: their union
            ps = merge_same_label([s for s in pspans if s.behavior == label])
            gc, pc = _covered(gs), _covered(ps)
            both = _overlap(gc, pc)
            a = acc.setdefault(label, dict.fromkeys(("tp", "gold", "pred", "gs", "ps", "match"), 0))
            a["tp"] += both
            a["gold"] += sum(e - s for s, e in gc)
            a["pred"] += sum(e - s for s, e in pc)
            a["gs"] += len(gs)
            a["ps"] += len(ps)
            a["match"] += _match_spans(gs, ps, min_iou)
    out = {}
    for label in sorted(acc, key=lambda x: BEHAVIORS.index(x) if x in BEHAVIORS else 99):
        a = acc[label]
        prec, rec = a["tp"] / max(a["pred"], 1), a["tp"] / max(a["gold"], 1)
        out[label] = {
            "precision": prec,
            "recall": rec,
            "f1": 2 * prec * rec / max(prec + rec, 1e-12),
            "span_precision": a["match"] / max(a["ps"], 1),
            "span_recall": a["match"] / max(a["gs"], 1),
            "gold_spans": a["gs"],
            "pred_spans": a["ps"],
        }
    return out


def format_agreement(agreement: dict[str, dict[str, float]], *, title: str = "") -> str:
    """A fixed-width table of :func:`annotation_agreement`'s result (target behaviours marked ``*``)."""
    lines = [title] if title else []
    lines.append(
        f"{'label':26s} {'char P':>7s} {'char R':>7s} {'char F1':>7s} {'span P':>7s} {'span R':>7s} "
        f"{'gold':>5s} {'pred':>5s}"
    )
    for label, d in agreement.items():
        mark = "*" if label in TARGET_BEHAVIORS else " "
        lines.append(
            f"{mark}{label:25s} {d['precision']:7.3f} {d['recall']:7.3f} {d['f1']:7.3f} "
            f"{d['span_precision']:7.3f} {d['span_recall']:7.3f} {d['gold_spans']:5d} {d['pred_spans']:5d}"
        )
    return "\n".join(lines)


__all__ = ["annotation_agreement", "format_agreement", "merge_same_label", "REGIONS"]
