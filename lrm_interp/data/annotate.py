"""Behaviour annotators: text of a reasoning trace → the paper's markup.

- :class:`RuleAnnotator`: splits the thinking part into sentences and labels each one
  by surface patterns ("wait" → backtracking, "let me check" → example-testing,
  "I'm not sure" → uncertainty-estimation, "recall that" → adding-knowledge, …).
- :class:`LLMAnnotator`: formats a prompt asking an LLM (any ``complete(prompt) -> str``
  callable) for the same markup, as the paper did with GPT-4o.

Both emit ``["label"]text["end-section"]`` so their output goes through the same parser
and aligner (:mod:`lrm_interp.data.markup`, :mod:`lrm_interp.data.align`) as real annotation files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from lrm_interp.data.traces import BEHAVIORS, BehaviorSpan, ReasoningDataset

_SENT = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")


class Annotator(Protocol):
    def annotate(self, thinking_text: str) -> str:
        """Return the paper's markup for ``thinking_text``."""


#: (label, regex) in priority order; the first rule that matches a sentence labels it.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("backtracking", r"^\s*(wait|actually|hold on|no,|oops|alternatively)\b|that (is|was) (wrong|not right)"
                     r"|let me (go back|redo|reconsider)"),
    ("uncertainty-estimation", r"\b(not sure|unsure|i think|maybe|perhaps|might be|hmm)\b"),
    ("example-testing", r"\b(let me (check|test|verify|try)|for example|for instance|suppose|double[- ]check)\b"),
    ("adding-knowledge", r"\b(recall that|we know|it is known|by definition|remember that)\b"),
    ("initializing", r"^\s*(okay|ok|alright|so i need|i need to|first, let me understand|the problem)\b"),
    ("deduction", r"\b(so|therefore|thus|hence)\b"),
)


@dataclass
class RuleAnnotator:
    """Sentence-level, first-matching-rule annotator; unmatched sentences are ``deduction``."""

    rules: Sequence[tuple[str, str]] = DEFAULT_RULES
    default: str = "deduction"
    _compiled: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        for label, _ in self.rules:
            if label not in BEHAVIORS:
                raise ValueError(f"rule label {label!r} is not one of {BEHAVIORS}")
        self._compiled = [(label, re.compile(rx, re.I)) for label, rx in self.rules]

    def label(self, sentence: str) -> str:
        for label, rx in self._compiled:
            if rx.search(sentence):
                return label
        return self.default

    def annotate(self, thinking_text: str) -> str:
        parts = []
        for m in _SENT.finditer(thinking_text):
            s = m.group(0).strip()
            if s:
                parts.append(f'["{self.label(s)}"]{s}["end-section"]')
        return " ".join(parts)


LLM_PROMPT = """You label the reasoning steps of a language model. Split the reasoning below into consecutive \
segments and label each one with exactly one of: initializing (restating the problem or planning), deduction \
(deriving a new fact from known ones), adding-knowledge (bringing in a fact not given in the problem), \
example-testing (checking with a concrete example or verifying a result), uncertainty-estimation (expressing \
doubt or confidence), backtracking (abandoning a step and going back). Copy the text of every segment exactly \
and write each as ["label"]text["end-section"]. Output only the labelled segments.

Reasoning:
{text}"""


@dataclass
class LLMAnnotator:
    """Annotates through ``complete(prompt) -> str`` (an API client, a local model, …)."""

    complete: Callable[[str], str]
    prompt_template: str = LLM_PROMPT

    def annotate(self, thinking_text: str) -> str:
        return self.complete(self.prompt_template.format(text=thinking_text))


def thinking_part(response: str) -> str:
    """The response up to ``</think>`` without trailing whitespace (the whole response when
    there is no ``</think>``)."""
    return response.split("</think>", 1)[0].rstrip()


def annotate_response(response: str, annotator: Annotator, *, source: str = "") -> tuple[list[BehaviorSpan], dict]:
    """Annotate a response's thinking part and align the markup back onto the response.

    The annotator's markup goes through :func:`lrm_interp.data.paper_layout.annotate_trace`
    (the same parser and aligner as real annotation files). Returns the spans and a small
    report (status, reason when rejected, segments, placed, repairs).
    """
    from lrm_interp.data.paper_layout import annotate_trace

    trace, rep = annotate_trace(response, annotator.annotate(thinking_part(response)), source=source)
    out = {"status": rep.status, "segments": len(rep.segments), "placed": sum(r.placed for r in rep.segments),
           "repairs": list(rep.repairs)}
    if rep.status == "rejected":
        out["reason"] = rep.reason
    return list(trace.spans), out


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


def annotation_agreement(gold: ReasoningDataset, predicted: ReasoningDataset, *,
                         min_iou: float = 0.5) -> dict[str, dict[str, float]]:
    """Per-label agreement of ``predicted`` spans with ``gold`` spans.

    Character level: ``precision``, ``recall``, ``f1`` over the characters each label covers.
    Span level: ``span_precision``/``span_recall`` = share of predicted/gold spans matched
    one-to-one to a span of the same label with IoU >= ``min_iou``. ``gold_spans``,
    ``pred_spans``: counts. Traces are matched by id; their responses must be identical.
    """
    pred_by_id = {t.id: t for t in predicted}
    acc: dict[str, dict[str, int]] = {}
    for g in gold:
        p = pred_by_id.get(g.id)
        if p is None:
            raise KeyError(f"trace {g.id!r} missing from the predicted dataset")
        if p.response != g.response:
            raise ValueError(f"trace {g.id!r}: responses differ between gold and predicted")
        for label in {s.behavior for s in g.spans} | {s.behavior for s in p.spans}:
            gs, ps = g.spans_of(label), p.spans_of(label)
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
        out[label] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12),
                      "span_precision": a["match"] / max(a["ps"], 1), "span_recall": a["match"] / max(a["gs"], 1),
                      "gold_spans": a["gs"], "pred_spans": a["ps"]}
    return out
