"""What every annotator shares: the protocol, the thinking part, and labels → spans.

An annotator is anything with ``annotate(thinking_text) -> markup``. Two routes lead from it
to spans on the response:

- an annotator that labels the sentences of the text itself (rules, trained: it has
  ``label_sentences(thinking_text) -> [(Sentence, label), ...]``, :class:`SentenceLabeller`)
  knows every span's exact character offsets, so they are used directly
  (:func:`sentence_segments`): no search, linear in the trace length;
- any other annotator's markup (an LLM's output, like GPT-4o's annotation files) goes through
  :func:`lrm_interp.data.paper_layout.annotate_trace`, the parser and aligner of real
  annotation files.

Both routes give the same :class:`~lrm_interp.data.paper_layout.FileReport`, so every run is
accounted for the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from lrm_interp.data.traces import BehaviorSpan, check_response_size, response_limit

if TYPE_CHECKING:  # pragma: no cover
    from lrm_interp.data.annotators.segment import Sentence
    from lrm_interp.data.paper_layout import FileReport

#: Note recorded on the report of a trace whose spans came from the annotator's own offsets.
DIRECT_NOTE = "offsets from the annotator's own sentences (no alignment)"


@runtime_checkable
class Annotator(Protocol):
    """Anything that turns a thinking part into the paper's markup."""

    def annotate(self, thinking_text: str) -> str:
        """Return the paper's markup ``["label"]text["end-section"]`` for ``thinking_text``."""


@runtime_checkable
class SentenceLabeller(Protocol):
    """An annotator that labels the sentences of the text it is given (offsets into that text)."""

    def label_sentences(self, thinking_text: str) -> list[tuple[Sentence, str]]:
        """``(sentence, label)`` for each sentence; ``sentence.text == thinking_text[start:end]``."""


def thinking_part(response: str) -> str:
    """The response up to ``</think>`` without trailing whitespace (the whole response when
    there is no ``</think>``). A leading ``<think>`` (some chat templates put it in the
    response) is kept: the annotator sees exactly the text the spans will be placed on."""
    return response.split("</think>", 1)[0].rstrip()


def markup(segments: Sequence[tuple[str, str]]) -> str:
    """``[(label, text), ...]`` → ``["label"]text["end-section"] ...`` (one space apart)."""
    return " ".join(f'["{label}"]{text}["end-section"]' for label, text in segments)


def sentence_segments(response: str, annotator: SentenceLabeller) -> list[tuple[str, int, int]]:
    """``(label, start, end)`` response offsets of every sentence ``annotator`` labels in the
    response's thinking part (a prefix of the response, so its offsets are the response's)."""
    think = thinking_part(response)
    out = []
    for s, label in annotator.label_sentences(think):
        if not (0 <= s.start < s.end <= len(think)) or think[s.start : s.end] != s.text:
            raise ValueError(
                f"{type(annotator).__name__}.label_sentences returned a sentence whose offsets "
                f"[{s.start}, {s.end}) do not hold its text {s.text[:40]!r}"
            )
        out.append((label, s.start, s.end))
    return out


def segments_report(
    response: str,
    segments: Sequence[tuple[str, int, int]],
    *,
    source: str = "",
    dataset: str = "",
    index: str = "",
    output: str | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[BehaviorSpan], FileReport]:
    """Spans and the parse report of directly placed ``(label, start, end)`` segments: each one
    ``placed`` (or ``not placed`` with the reason when its label is not one of ``labels``,
    default :data:`~lrm_interp.data.traces.BEHAVIORS`)."""
    from lrm_interp.data.align import SegmentReport
    from lrm_interp.data.paper_layout import FileReport
    from lrm_interp.data.traces import BEHAVIORS

    allowed = set(labels) if labels is not None else set(BEHAVIORS)
    spans, reps = [], []
    for i, (label, a, b) in enumerate(segments):
        ok = label in allowed
        if ok:
            spans.append(BehaviorSpan(label, a, b))
        reps.append(
            SegmentReport(
                source,
                i,
                label,
                label if ok else None,
                "placed" if ok else "not placed",
                None if ok else f"unknown label {label!r} (text located at [{a}, {b}))",
                a,
                b,
                response[a:b],
            )
        )
    report = FileReport(dataset, index, None, output, "parsed", None, (), (DIRECT_NOTE,), tuple(reps))
    return spans, report


def annotate_response(
    response: str, annotator: Annotator, *, source: str = "", max_response_chars: int | None = None
) -> tuple[list[BehaviorSpan], dict]:
    """Annotate a response's thinking part and place the labels on the response.

    A :class:`SentenceLabeller` gives its offsets directly (:func:`sentence_segments`); any other
    annotator's markup goes through :func:`lrm_interp.data.paper_layout.annotate_trace` (the same
    parser and aligner as real annotation files). Returns the spans and a small report (status,
    reason when rejected, segments, placed, repairs). A response longer than
    ``max_response_chars`` (default :func:`~lrm_interp.data.traces.response_limit`) raises
    :class:`~lrm_interp.data.traces.ResponseTooLargeError` before the annotator runs.
    """
    check_response_size(source or "response", response, limit=response_limit(max_response_chars))
    if isinstance(annotator, SentenceLabeller):
        spans, rep = segments_report(response, sentence_segments(response, annotator), source=source)
    else:
        from lrm_interp.data.paper_layout import annotate_trace

        trace, rep = annotate_trace(response, annotator.annotate(thinking_part(response)), source=source)
        spans = list(trace.spans)
    out = {
        "status": rep.status,
        "segments": len(rep.segments),
        "placed": sum(r.placed for r in rep.segments),
        "repairs": list(rep.repairs),
    }
    if rep.status == "rejected":
        out["reason"] = rep.reason
    return spans, out


__all__ = [
    "Annotator",
    "SentenceLabeller",
    "thinking_part",
    "markup",
    "annotate_response",
    "sentence_segments",
    "segments_report",
    "DIRECT_NOTE",
]
