"""Small hand-built annotated traces for pipeline tests (gold spans by construction)."""

from __future__ import annotations

import random

from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace

_TEMPLATES = {
    "initializing": ["Okay, so we need {a} plus {b}.", "Let me restate: add {a} and {b}."],
    "deduction": ["So the sum is {s}.", "Therefore it is {s}."],
    "adding-knowledge": ["Recall that addition is commutative.", "We know {a} is less than {c}."],
    "example-testing": ["Let me test: {b} plus {a} is also {s}.", "For example, {a} + 0 = {a}."],
    "uncertainty-estimation": ["Hmm, I'm not sure about the carry.", "I think it is {s}, but maybe not."],
    "backtracking": ["Wait, that was wrong, let me redo it.", "Actually, wait. Let me go back."],
}


def synthetic_traces(
    n: int = 6, seed: int = 0, *, skip: dict[int, set[str]] | None = None, overlap: bool = False
) -> ReasoningDataset:
    """``n`` traces ``prompt + <think> sentences </think> answer`` with gold spans.

    ``skip[i]`` lists behaviours left out of trace ``i`` (so |D+| < n). With ``overlap``,
    trace 0 gets a second span that overlaps its backtracking span.
    """
    rng = random.Random(seed)
    skip = skip or {}
    out = []
    for i in range(n):
        a, b = rng.randint(10, 60), rng.randint(10, 60)
        vals = {"a": a, "b": b, "s": a + b, "c": a + 7}
        prompt = f"Compute {a} + {b}.\n<think>\n"
        order = [
            "initializing",
            "deduction",
            "uncertainty-estimation",
            "backtracking",
            "adding-knowledge",
            "example-testing",
            "deduction",
        ]
        resp, spans = "", []
        for beh in order:
            if beh in skip.get(i, set()):
                continue
            text = rng.choice(_TEMPLATES[beh]).format(**vals)
            start = len(resp)
            resp += text
            spans.append(BehaviorSpan(beh, start, len(resp)))
            resp += " " if rng.random() < 0.7 else "\n\n"
        resp += f"\n</think>\n\nThe answer is {a + b}."
        if overlap and i == 0:
            bt = next(s for s in spans if s.behavior == "backtracking")
            spans.append(BehaviorSpan("uncertainty-estimation", bt.start + 2, bt.end))
        out.append(
            ReasoningTrace(f"synth/{i}", prompt, resp, tuple(spans), {"dataset": "synth", "gold_answer": str(a + b)})
        )
    return ReasoningDataset(out, name="synth")
