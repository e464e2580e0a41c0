"""What every annotator shares: the protocol, the thinking part, and markup → spans.

An annotator is anything with ``annotate(thinking_text) -> markup``; its markup always goes
through :func:`lrm_interp.data.paper_layout.annotate_trace` (the parser and aligner of real
annotation files), so a rule annotator, a trained one and an LLM are held to the same
parse report.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from lrm_interp.data.traces import BehaviorSpan


@runtime_checkable
class Annotator(Protocol):
    """Anything that turns a thinking part into the paper's markup."""

    def annotate(self, thinking_text: str) -> str:
        """Return the paper's markup ``["label"]text["end-section"]`` for ``thinking_text``."""


def thinking_part(response: str) -> str:
    """The response up to ``</think>`` without trailing whitespace (the whole response when
    there is no ``</think>``). A leading ``<think>`` (some chat templates put it in the
    response) is kept: the annotator sees exactly the text the spans will be placed on."""
    return response.split("</think>", 1)[0].rstrip()


def markup(segments: Sequence[tuple[str, str]]) -> str:
    """``[(label, text), ...]`` → ``["label"]text["end-section"] ...`` (one space apart)."""
    return " ".join(f'["{label}"]{text}["end-section"]' for label, text in segments)


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


__all__ = ["Annotator", "thinking_part", "markup", "annotate_response"]
